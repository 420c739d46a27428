"""`serialize`, `deserialize` and `get`: optimizers by name or config, as `keras.optimizers`."""

from __future__ import annotations

from typing import Any

from nadam.nadam import Nadam
from nadam.optimizer import Optimizer

_BUILT_IN: dict[str, type[Optimizer]] = {"nadam": Nadam}


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """`{'class_name': ..., 'config': ...}` for an optimizer.

    Example:
        >>> serialize(Nadam())["class_name"]
        'Nadam'
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"serialize expects a nadam Optimizer, got {type(optimizer).__name__}")
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(
    config: dict[str, Any], custom_objects: dict[str, Any] | None = None
) -> Optimizer:
    """The optimizer described by `serialize` output (Keras's form with `module` too).

    Class names are matched case-insensitively among the built-ins, exactly among
    `custom_objects`.

    Example:
        >>> opt = deserialize({"class_name": "Nadam", "config": {"learning_rate": 0.01}})
        >>> opt.get_config()["learning_rate"]
        0.01
    """
    if not isinstance(config, dict):
        raise TypeError(f"deserialize expects a dict, got {type(config).__name__}")
    if "class_name" not in config:
        raise ValueError(f"Optimizer config has no 'class_name': {config!r}")
    class_name = config["class_name"]
    custom_objects = custom_objects or {}
    cls = custom_objects.get(class_name) or _BUILT_IN.get(str(class_name).lower())
    if cls is None:
        raise ValueError(
            f"Unknown optimizer: '{class_name}'. Known optimizers: {sorted(_BUILT_IN)}; pass "
            "others in custom_objects"
        )
    return cls.from_config(config.get("config", {}), custom_objects=custom_objects)


def get(identifier: Any) -> Optimizer:
    """An optimizer from an instance, a config dict or a name such as 'nadam'.

    Example:
        >>> type(get("nadam")).__name__
        'Nadam'
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
