"""Import a Keras run's Nadam state, to continue it here (NumPy, PyTorch).

`load_keras_optimizer(path)` reads the optimizer state that Keras saved with a model and returns
a `KerasOptimizerState`: the optimizer config (for `nadam.Nadam.from_config` or, through
`to_torch_kwargs`, `nadam.torch.Nadam`), `iterations`, `momentum_cache` and the `m` and `v`
slots of every optimized weight, keyed by the Keras weight name. `state.restore(optimizer,
mapping)` then installs that state for your variables, through the optimizer's own `build` and
`set_weights`.

What it reads, and how each file lays the state out:

- **Keras 2 `.h5`** (`model.save("m.h5")` in tf_keras / TF <= 2.15 Keras). The root attribute
  `training_config` (JSON) holds `optimizer_config`; the group `optimizer_weights` lists its
  arrays in the attribute `weight_names`, in Keras's `get_weights()` order. The legacy Nadam
  (`tf_keras.optimizers.legacy.Nadam`, TF 2.3's `tf.keras.optimizers.Nadam`):
  `Nadam/iter:0`, `Nadam/momentum_cache:0`, then `Nadam/<weight>/m:0` for every weight, then
  `Nadam/<weight>/v:0`; `<weight>` is the model weight's name without `:0` (`dense/kernel`).
  Its config's `decay` is the momentum schedule constant (0.004). The newer tf_keras optimizer
  (`tf_keras.optimizers.Nadam`, TF 2.11-2.15's default): `iteration:0`, then
  `Nadam/m/<weight>:0` and `Nadam/v/<weight>:0` per weight; it does not save its momentum
  product (see below).
- **TensorFlow checkpoint or SavedModel directory** (`tf.train.Checkpoint(model=...,
  optimizer=...).save(...)`, `model.save("dir")` in the TF format), legacy Nadam. The object
  graph stored in the checkpoint names the optimizer's children (`iter`, `momentum_cache`,
  `learning_rate`, `beta_1`, `beta_2`, `decay`) and its slot variables (`m`, `v`, each pointing
  at the weight it belongs to, whose `full_name` is the Keras weight name). A SavedModel's
  `keras_metadata.pb` also carries the full optimizer config; a bare checkpoint does not store
  `epsilon` or the clipping settings.
- **Keras 3 `.keras`** (a zip). `config.json` holds `compile_config["optimizer"]`;
  `model.weights.h5` holds the optimizer's variables as `optimizer/vars/0..N`, unnamed, in the
  order of `optimizer.variables`: `iteration`, `learning_rate` (absent when it is a schedule),
  then `momentum` and `velocity` of each trainable variable in turn, then the momentum product
  `u_product`. The trainable variables' paths (`dense/kernel`) are not in the file: they come
  from rebuilding the model with Keras 3, or from the `variable_names` you pass.

Keras 3's Nadam (and the newer tf_keras one) computes the momentum schedule
`mu_t = beta_1 * (1 - 0.5 * 0.96 ** t)`: this package's Nadam with `schedule_decay=1.0`, which
the config of such a state sets (with a warning). They order their floating-point operations
differently from Keras 2, so a continued run agrees with them to rounding, not bit for bit.

Example:
    >>> import numpy as np
    >>> import nadam
    >>> from nadam.interop import KerasOptimizerState, Slots
    >>> state = KerasOptimizerState(
    ...     config=nadam.Nadam().get_config(), iterations=3,
    ...     momentum_cache=np.float32(0.09),
    ...     slots={"dense/kernel:0": Slots(np.ones((2, 3), "f4"), np.ones((2, 3), "f4"))},
    ... )
    >>> opt = nadam.Nadam.from_config(state.to_optimizer_config())
    >>> w = nadam.Variable(np.zeros((3, 2), np.float32))   # stored the other way round
    >>> _ = state.restore(opt, {"dense/kernel:0": (w, "transpose")})
    >>> [a.shape for a in opt.get_weights()], int(opt.iterations.numpy())
    ([(), (), (3, 2), (3, 2)], 3)
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from nadam import checks
from nadam.step_scalars import momentum_cache_after

__all__ = ["KerasOptimizerState", "Slots", "load_keras_optimizer"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Keras 3 (and new-style tf_keras) optimizer settings that change the update and that this
# package's Nadam does not implement: importing such a run could not continue it.
_UNSUPPORTED_KERAS3_SETTINGS = {
    "weight_decay": (None, 0, 0.0),
    "use_ema": (False, None),
    "gradient_accumulation_steps": (None, 0, 1),
    "loss_scale_factor": (None, 1, 1.0),
}
_KERAS3_IGNORED_KEYS = ("ema_momentum", "ema_overwrite_frequency", "jit_compile",
                        "is_legacy_optimizer")
_CLIP_KEYS = ("clipnorm", "clipvalue", "global_clipnorm")
_KERAS3_SCHEDULE_WARNING = (
    "{what}'s Nadam uses the momentum schedule mu_t = beta_1 * (1 - 0.5 * 0.96 ** t): this "
    "package's Nadam with schedule_decay=1.0 (Keras 2's is 0.004), which the imported config "
    "sets. It orders its floating-point operations differently from Keras 2, so a continued "
    "run agrees with {what} to rounding, not bit for bit."
)


class Slots(NamedTuple):
    """The Nadam slots of one weight, as Keras stores them (Keras's layout and dtype)."""

    m: np.ndarray
    v: np.ndarray


@dataclass
class KerasOptimizerState:
    """A Keras run's Nadam state, read by `load_keras_optimizer`.

    Attributes:
        config: the optimizer config in this package's form (`schedule_decay` explicit,
            `decay` the learning-rate decay): `nadam.Nadam.from_config(state.config)`.
        iterations: how many steps the run took.
        momentum_cache: the running product of the momentum schedule (Keras 2's
            `momentum_cache`, Keras 3's `u_product`), a 0-d array in its stored dtype.
        slots: `Slots(m, v)` per weight, keyed by the Keras weight name (`"dense/kernel:0"`
            for Keras 2, the variable path `"dense/kernel"` for Keras 3), in the order Keras
            created them.
        source: which layout was read (`"keras2-h5"`, `"tf_keras-h5"` for the newer tf_keras
            optimizer, `"tf-checkpoint"`, `"tf-savedmodel"`, `"keras3"`).
        path: the file or directory read.
        model_weights: the model's own weights by name where the file names them (Keras 2
            `.h5`: every weight; TensorFlow checkpoints: the optimized ones); empty otherwise.
    """

    config: dict[str, Any]
    iterations: int
    momentum_cache: np.ndarray
    slots: dict[str, Slots]
    source: str = "given"
    path: str | None = None
    model_weights: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.momentum_cache = np.asarray(self.momentum_cache)
        self.slots = {
            name: Slots(np.asarray(m), np.asarray(v)) for name, (m, v) in self.slots.items()
        }

    @property
    def names(self) -> list[str]:
        """The Keras weight names, in Keras's order (a Dense layer: kernel, then bias)."""
        return list(self.slots)

    def to_optimizer_config(self) -> dict[str, Any]:
        """A copy of the config for `nadam.Nadam.from_config`."""
        return json.loads(json.dumps(self.config))

    def to_torch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `nadam.torch.Nadam(params, **kwargs)`.

        Example:
            >>> import nadam
            >>> state = KerasOptimizerState(nadam.Nadam(0.01).get_config(), 0, 1.0, {})
            >>> state.to_torch_kwargs()["lr"], state.to_torch_kwargs()["betas"]
            (0.01, (0.9, 0.999))
        """
        config = self.config
        lr = config.get("learning_rate", 0.001)
        if not isinstance(lr, int | float):
            raise ValueError(
                f"the imported learning rate is a schedule ({lr!r}); nadam.torch.Nadam takes a "
                "number (use a torch.optim.lr_scheduler, or nadam.Nadam, which takes schedules)"
            )
        kwargs: dict[str, Any] = {
            "lr": lr,
            "betas": (config.get("beta_1", 0.9), config.get("beta_2", 0.999)),
            "eps": config.get("epsilon", 1e-7),
            "schedule_decay": config.get("schedule_decay", 0.004),
            "decay": config.get("decay", 0.0),
        }
        for key in _CLIP_KEYS:
            if config.get(key) is not None:
                kwargs[key] = config[key]
        return kwargs

    def restore(self, optimizer: Any, mapping: Mapping[str, Any]) -> Any:
        """Install this state into `optimizer` for the variables that `mapping` names.

        Args:
            optimizer: a `nadam.Nadam` (NumPy variables or torch tensors) or a
                `nadam.torch.Nadam`, with no state yet, or with state for exactly the mapped
                variables (which is then overwritten).
            mapping: Keras weight name -> your variable, or -> `(variable, "transpose")` when
                your layout is the transpose of Keras's (a Keras Dense kernel is (in, out), a
                torch `nn.Linear` weight (out, in)), or -> `(variable, axes)` for any other
                permutation of axes (`np.transpose(keras_array, axes)` has your layout).
                Every Keras weight must be mapped; for `nadam.torch.Nadam`, every parameter
                of the optimizer too.

        Everything is checked before anything changes: names (unknown, unmapped, one variable
        twice), shapes (after the layout), the optimizer's existing state. Then the state is
        built with the optimizer's `build` (for `nadam.Nadam`, in Keras's order) and written
        with its `set_weights`. Returns the optimizer.
        """
        targets = self._checked_targets(mapping)
        self._check_values()
        face = _face_of(optimizer)
        face.check(targets)
        _warn_on_config_mismatch(face.settings(), self.config)
        face.build(targets)
        arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, target in targets.items():
            m, v = (_apply_layout(a, target.layout) for a in self.slots[name])
            arrays[id(target.var)] = (m, v)
        current = face.get_weights()
        order = face.slot_order(targets)
        weights: list[np.ndarray] = [np.int64(self.iterations), self.momentum_cache]
        weights += [arrays[id(var)][0] for var in order]
        weights += [arrays[id(var)][1] for var in order]
        weights = face.arrange(order, weights)
        if len(current) != len(weights):  # pragma: no cover - guarded by face.check
            raise RuntimeError(
                f"the optimizer has {len(current)} weights after build, expected {len(weights)}"
            )
        narrowed = {
            (np.asarray(want).dtype.name, have.dtype.name)
            for have, want in zip(current, weights, strict=True)
            if np.asarray(want).dtype.itemsize > have.dtype.itemsize and have.dtype.kind == "f"
        }
        if narrowed:
            warnings.warn(
                "restoring the Keras state rounds it to the variables' dtypes: "
                + ", ".join(f"{a} -> {b}" for a, b in sorted(narrowed)),
                stacklevel=2,
            )
        face.set_weights([
            np.array(want, dtype=have.dtype, order="C")
            for have, want in zip(current, weights, strict=True)
        ])
        return optimizer

    def _check_values(self) -> None:
        """What no Keras run writes, refused before the optimizer is touched."""
        checks.iteration_count(self.iterations)
        checks.momentum_cache(self.momentum_cache)
        if self.momentum_cache.dtype.kind != "f":
            raise ValueError(
                f"Expected momentum_cache to be a float scalar, received: {self.momentum_cache!r}"
            )
        for name, slots in self.slots.items():
            for slot, array in zip(("m", "v"), slots, strict=True):
                if array.dtype.kind != "f" or array.shape != slots.m.shape:
                    raise ValueError(
                        f"slot {slot} of {name!r} must be a float array of the weight's shape "
                        f"{slots.m.shape}, got {array.dtype} {array.shape}"
                    )

    def _checked_targets(self, mapping: Mapping[str, Any]) -> dict[str, _Target]:
        if not isinstance(mapping, Mapping):
            raise TypeError(
                f"mapping must be a dict of Keras weight name -> variable, got "
                f"{type(mapping).__name__}"
            )
        unknown = [name for name in mapping if name not in self.slots]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(str(name), self.names, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"mapping names {len(unknown)} weight(s) the Keras state does not have: "
                f"{', '.join(hints)}. Its weights: {self.names}"
            )
        unmapped = [name for name in self.slots if name not in mapping]
        if unmapped:
            raise ValueError(
                f"the Keras state has slots for {len(unmapped)} weight(s) that mapping leaves "
                f"out: {unmapped}. Map every one of them (to continue a run, every weight "
                "Keras trained needs its m and v)"
            )
        targets: dict[str, _Target] = {}
        seen: dict[int, str] = {}
        for name in self.slots:  # Keras's order
            target = _target(name, mapping[name])
            if id(target.var) in seen:
                raise ValueError(
                    f"mapping gives the same variable for {seen[id(target.var)]!r} and {name!r}"
                )
            seen[id(target.var)] = name
            keras_shape = self.slots[name].m.shape
            shape = _layout_shape(name, keras_shape, target.layout)
            if shape != target.shape:
                hint = ""
                if target.layout is None and keras_shape[::-1] == target.shape:
                    hint = f"; map it as ({name!r}: (variable, 'transpose'))"
                raise ValueError(
                    f"Keras weight {name!r} has shape {keras_shape}"
                    + (f", {shape} after {target.layout!r}" if target.layout is not None else "")
                    + f", but its variable has shape {target.shape}{hint}"
                )
            targets[name] = target
        return targets


class _Target(NamedTuple):
    var: Any
    layout: tuple[int, ...] | str | None
    shape: tuple[int, ...]


def _target(name: str, value: Any) -> _Target:
    layout = None
    if isinstance(value, tuple) and len(value) == 2 and (
        value[1] is None or isinstance(value[1], str | tuple | list)
    ):
        value, layout = value
        if isinstance(layout, str) and layout != "transpose":
            raise ValueError(
                f"mapping[{name!r}]: unknown layout {layout!r}; use 'transpose' or a tuple of axes"
            )
        if isinstance(layout, list):
            layout = tuple(layout)
    shape = getattr(value, "shape", None)
    if shape is None or isinstance(value, str | bytes):
        raise TypeError(
            f"mapping[{name!r}] must be a variable (nadam.Variable, NumPy array, torch tensor) "
            f"or (variable, 'transpose'), got {type(value).__name__}"
        )
    return _Target(value, layout, tuple(int(n) for n in shape))


def _layout_shape(
    name: str, shape: tuple[int, ...], layout: tuple[int, ...] | str | None
) -> tuple[int, ...]:
    if layout is None:
        return shape
    if layout == "transpose":
        return shape[::-1]
    if sorted(layout) != list(range(len(shape))) or not all(
        isinstance(axis, int | np.integer) for axis in layout
    ):
        raise ValueError(
            f"mapping[{name!r}]: axes {layout!r} are not a permutation of the {len(shape)} "
            f"axes of its Keras shape {shape}"
        )
    return tuple(shape[axis] for axis in layout)


def _apply_layout(array: np.ndarray, layout: tuple[int, ...] | str | None) -> np.ndarray:
    if layout is None:
        return array
    return np.transpose(array) if layout == "transpose" else np.transpose(array, layout)


# --- the two faces, through their public API --------------------------------------------------
class _KerasFace:
    """`nadam.Nadam` (or a subclass): weights `[iterations, momentum_cache, m's, v's]`."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def settings(self) -> dict[str, Any]:
        return self.optimizer.get_config()

    def check(self, targets: dict[str, _Target]) -> None:
        weights = self.optimizer.weights
        if not weights:
            return
        missing = []
        for name, target in targets.items():
            try:
                self.optimizer.get_slot(target.var, "m")
                self.optimizer.get_slot(target.var, "v")
            except KeyError:
                missing.append(name)
        if missing or len(weights) != 2 + 2 * len(targets):
            raise ValueError(
                f"the optimizer already has state ({len(weights)} weights) for other variables "
                f"than the {len(targets)} mapped ones"
                + (f" (none for {missing})" if missing else "")
                + ": restore into a fresh optimizer"
            )

    def build(self, targets: dict[str, _Target]) -> None:
        if not self.optimizer.weights:
            self.optimizer.build([target.var for target in targets.values()])

    def get_weights(self) -> list[np.ndarray]:
        return self.optimizer.get_weights()

    def slot_order(self, targets: dict[str, _Target]) -> list[Any]:
        return [target.var for target in targets.values()]

    def arrange(self, order: list[Any], weights: list[np.ndarray]) -> list[np.ndarray]:
        """Put `weights` ([it, cache, m's, v's] in `order`) where the optimizer keeps them."""
        n = len(order)
        by_identity = {id(self.optimizer.iterations): weights[0],
                       id(self.optimizer.momentum_cache): weights[1]}
        for index, var in enumerate(order):
            by_identity[id(self.optimizer.get_slot(var, "m"))] = weights[2 + index]
            by_identity[id(self.optimizer.get_slot(var, "v"))] = weights[2 + n + index]
        return [by_identity[id(weight)] for weight in self.optimizer.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.optimizer.set_weights(weights)


class _TorchFace:
    """`nadam.torch.Nadam`: after `build()`, `[iterations, momentum_cache, m's, v's]` of its
    parameters ordered by the round that created their state, then by param-group order."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def settings(self) -> dict[str, Any]:
        group = self.optimizer.param_groups[0]
        return {
            "learning_rate": group["lr"], "beta_1": group["betas"][0],
            "beta_2": group["betas"][1], "epsilon": group["eps"],
            "schedule_decay": group["schedule_decay"], "decay": group["decay"],
        }

    def check(self, targets: dict[str, _Target]) -> None:
        mapped = {id(target.var) for target in targets.values()}
        params = {id(p) for p in self.params}
        strangers = [name for name, target in targets.items() if id(target.var) not in params]
        if strangers:
            raise ValueError(
                f"mapping gives variables that are not parameters of this optimizer for "
                f"{strangers}"
            )
        left_out = [
            f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)})"
            for g, group in enumerate(self.optimizer.param_groups)
            for i, p in enumerate(group["params"]) if id(p) not in mapped
        ]
        if left_out:
            raise ValueError(
                f"the optimizer has parameters that no Keras weight maps to: {left_out}; "
                "restore needs them all (or leave them out of the optimizer)"
            )
        with_state = [p for p in self.params if "m" in self.optimizer.state.get(p, {})]
        if self.optimizer.get_weights() and len(with_state) != len(self.params):
            raise ValueError(
                f"the optimizer already has state for {len(with_state)} of its "
                f"{len(self.params)} parameters: restore into a fresh optimizer"
            )

    def build(self, targets: dict[str, _Target]) -> None:
        if not self.optimizer.get_weights():
            self.optimizer.build()

    def get_weights(self) -> list[np.ndarray]:
        return self.optimizer.get_weights()

    def slot_order(self, targets: dict[str, _Target]) -> list[Any]:
        position = {id(p): index for index, p in enumerate(self.params)}
        state = self.optimizer.state
        return sorted(self.params, key=lambda p: (state[p]["round"], position[id(p)]))

    def arrange(self, order: list[Any], weights: list[np.ndarray]) -> list[np.ndarray]:
        # Within one round the m's come before the v's; a fresh build makes a single round.
        rounds = [self.optimizer.state[p]["round"] for p in order]
        n = len(order)
        result = list(weights[:2])
        for this_round in sorted(set(rounds)):
            members = [i for i, r in enumerate(rounds) if r == this_round]
            result += [weights[2 + i] for i in members]
            result += [weights[2 + n + i] for i in members]
        return result

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.optimizer.set_weights(weights)


def _face_of(optimizer: Any) -> _KerasFace | _TorchFace:
    from nadam.nadam import Nadam

    if isinstance(optimizer, Nadam):
        return _KerasFace(optimizer)
    if "torch" in sys.modules:
        from nadam.integrations.torch_optim import Nadam as TorchNadam

        if isinstance(optimizer, TorchNadam):
            return _TorchFace(optimizer)
    raise TypeError(
        f"restore takes a nadam.Nadam or a nadam.torch.Nadam, got {type(optimizer).__name__}"
    )


def _warn_on_config_mismatch(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> None:
    """Warn when the optimizer's momentum-schedule or update constants differ from the run's."""
    differ = []
    for key in ("beta_1", "beta_2", "epsilon", "schedule_decay"):
        a, b = ours.get(key), theirs.get(key)
        if not (isinstance(a, int | float) and isinstance(b, int | float)):
            continue
        same = np.float32(a) == np.float32(b) if key in ("beta_1", "beta_2") else a == b
        if not same:
            differ.append(f"{key}={a!r} (the Keras run: {b!r})")
    if differ:
        warnings.warn(
            "the optimizer's settings differ from the imported run's: " + ", ".join(differ)
            + "; build it from state.to_optimizer_config() (or state.to_torch_kwargs()) to "
            "continue the same run",
            stacklevel=3,
        )


# --- reading ----------------------------------------------------------------------------------
def load_keras_optimizer(
    path: str | os.PathLike[str],
    *,
    variable_names: Sequence[str] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
) -> KerasOptimizerState:
    """Read the Nadam state a Keras run saved at `path`.

    Args:
        path: a Keras 2 `.h5` model file, a TensorFlow checkpoint (its prefix, its `.index`
            file or its directory), a SavedModel directory, or a Keras 3 `.keras` file.
        variable_names: for a `.keras` file only: the paths of the model's trainable
            variables in order (`[v.path for v in model.trainable_variables]`). Without it
            they are found by rebuilding the model with Keras 3 (which must be installed).
        custom_objects: for a `.keras` file rebuilt with Keras 3: its custom layers.

    Raises:
        FileNotFoundError, ValueError (not a Keras Nadam state, or a layout it cannot read),
        ImportError (h5py for `.h5`/`.keras`, tensorflow for checkpoints and SavedModels,
        keras for a `.keras` file's variable names, each named in the message).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_tensorflow(path)
    if not os.path.exists(path):
        if os.path.exists(path + ".index"):
            return _read_tensorflow(path)
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    with open(path, "rb") as file:
        head = file.read(8)
    if head == _HDF5_SIGNATURE:
        return _read_keras2_h5(path)
    if zipfile.is_zipfile(path):
        return _read_keras3(path, variable_names, custom_objects)
    if path.endswith(".index"):
        return _read_tensorflow(path[: -len(".index")])
    raise ValueError(
        f"{path!r} is neither a Keras .h5 file, a .keras file, nor a TensorFlow checkpoint "
        "or SavedModel directory"
    )


def _require(module: str, purpose: str, install: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed "
            f"({error}); install it with `pip install {install}`"
        ) from error


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _float32_value(value: Any) -> Any:
    """A float32 hyperparameter's value as the shortest decimal that rounds to it (0.9, not
    0.8999999761581421): the same number for this package, which rounds through float32."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        return value
    single = np.float32(value)
    if not np.isfinite(single) or float(single) != float(value):
        return float(value)
    return float(str(single))


def _our_config(
    keras_config: Mapping[str, Any], *, schedule_decay: float, where: str
) -> dict[str, Any]:
    """This package's Nadam config from a Keras one (the update's settings only)."""
    config: dict[str, Any] = {"name": keras_config.get("name", "Nadam")}
    lr = keras_config.get("learning_rate", keras_config.get("lr", 0.001))
    if isinstance(lr, Mapping):
        lr = {"class_name": lr.get("class_name"), "config": dict(lr.get("config", {}))}
    config["learning_rate"] = _float32_value(lr)
    config["decay"] = 0.0
    config["beta_1"] = _float32_value(keras_config.get("beta_1", 0.9))
    config["beta_2"] = _float32_value(keras_config.get("beta_2", 0.999))
    epsilon = keras_config.get("epsilon", 1e-7)
    config["epsilon"] = 1e-7 if epsilon is None else float(epsilon)
    config["schedule_decay"] = float(schedule_decay)
    for key in _CLIP_KEYS:
        if keras_config.get(key) is not None:
            config[key] = float(keras_config[key])
    for key, allowed in _UNSUPPORTED_KERAS3_SETTINGS.items():
        value = keras_config.get(key)
        if not any(value is a or (a is not None and value == a) for a in allowed):
            raise ValueError(
                f"{where}: the optimizer was configured with {key}={value!r}, which this "
                "package's Nadam does not implement, so the run cannot be continued here"
            )
    return config


def _check_nadam_class(class_name: Any, where: str) -> None:
    short = _text(class_name).split(">")[-1].split(".")[-1]
    if short != "Nadam":
        raise ValueError(f"{where}: the saved optimizer is {class_name!r}, not Nadam")


# Keras 2 .h5 ----------------------------------------------------------------------------------
def _read_keras2_h5(path: str) -> KerasOptimizerState:
    h5py = _require("h5py", "reading a Keras .h5 file", "h5py")
    with h5py.File(path, "r") as file:
        if "optimizer_weights" not in file:
            if "layers" in file and "optimizer" in file:
                raise ValueError(
                    f"{path!r} is a Keras 3 weights file; read the .keras file the model was "
                    "saved to instead (it has the optimizer's config)"
                )
            raise ValueError(
                f"{path!r} has no optimizer state: it was saved without the optimizer "
                "(include_optimizer=False, save_weights, or an uncompiled model)"
            )
        training_config = file.attrs.get("training_config")
        if training_config is None:
            raise ValueError(f"{path!r} has optimizer weights but no training_config")
        optimizer_config = json.loads(_text(training_config)).get("optimizer_config") or {}
        _check_nadam_class(optimizer_config.get("class_name"), path)
        keras_config = optimizer_config.get("config", {})
        group = file["optimizer_weights"]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        values = {name: np.asarray(group[name][()]) for name in names}
        model_weights = _h5_model_weights(file)
    if any(name.endswith("/momentum_cache:0") or name == "momentum_cache:0" for name in names):
        return _keras2_legacy_state(path, names, values, keras_config, model_weights)
    return _tf_keras_new_state(path, names, values, keras_config, model_weights)


def _h5_model_weights(file: Any) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    group = file.get("model_weights")
    if group is None:
        return weights
    for layer in group.attrs.get("layer_names", []):
        layer_group = group[_text(layer)]
        for name in layer_group.attrs.get("weight_names", []):
            weights[_text(name)] = np.asarray(layer_group[_text(name)][()])
    return weights


def _keras2_legacy_state(
    path: str, names: list[str], values: dict[str, np.ndarray],
    keras_config: Mapping[str, Any], model_weights: dict[str, np.ndarray],
) -> KerasOptimizerState:
    iteration_names = [n for n in names if n.endswith("iter:0")]
    if len(iteration_names) != 1:
        raise ValueError(f"{path!r}: expected one 'iter:0' optimizer weight, got {names}")
    prefix = iteration_names[0][: -len("iter:0")]  # "Nadam/" (TF 1's Keras: "training/Nadam/")
    cache_name = prefix + "momentum_cache:0"
    if cache_name not in values:
        raise ValueError(f"{path!r}: no {cache_name!r} among the optimizer weights {names}")
    ms: dict[str, np.ndarray] = {}
    vs: dict[str, np.ndarray] = {}
    for name in names:
        if name in (iteration_names[0], cache_name):
            continue
        for slot, store in (("m", ms), ("v", vs)):
            if name.startswith(prefix) and name.endswith(f"/{slot}:0"):
                weight = name[len(prefix): -len(f"/{slot}:0")] + ":0"
                if weight in store:
                    raise ValueError(f"{path!r}: two {slot} slots for {weight!r}")
                store[weight] = values[name]
                break
        else:
            raise ValueError(
                f"{path!r}: optimizer weight {name!r} is not a Nadam slot "
                f"('{prefix}<weight>/m:0' or '/v:0')"
            )
    if list(ms) != list(vs):
        raise ValueError(
            f"{path!r}: the m slots are for {list(ms)} but the v slots for {list(vs)}"
        )
    config = _our_config(
        keras_config, schedule_decay=float(keras_config.get("decay", 0.004)), where=path
    )
    return KerasOptimizerState(
        config=config,
        iterations=int(values[iteration_names[0]]),
        momentum_cache=values[cache_name],
        slots={name: Slots(ms[name], vs[name]) for name in ms},
        source="keras2-h5",
        path=path,
        model_weights=model_weights,
    )


def _tf_keras_new_state(
    path: str, names: list[str], values: dict[str, np.ndarray],
    keras_config: Mapping[str, Any], model_weights: dict[str, np.ndarray],
) -> KerasOptimizerState:
    """The newer tf_keras optimizer (`tf_keras.optimizers.Nadam`, not `.legacy`)."""
    if "iteration:0" not in values:
        raise ValueError(
            f"{path!r}: unrecognized Nadam optimizer weights {names} (neither Keras 2's legacy "
            "layout nor the newer tf_keras one)"
        )
    opt_name = keras_config.get("name", "Nadam")
    ms: dict[str, np.ndarray] = {}
    vs: dict[str, np.ndarray] = {}
    for name in names:
        if name == "iteration:0":
            continue
        for slot, store in (("m", ms), ("v", vs)):
            if name.startswith(f"{opt_name}/{slot}/"):
                store[name[len(f"{opt_name}/{slot}/"):]] = values[name]
                break
        else:
            raise ValueError(f"{path!r}: optimizer weight {name!r} is not a Nadam slot")
    if list(ms) != list(vs) or not ms:
        raise ValueError(f"{path!r}: unmatched m and v slots: {list(ms)} / {list(vs)}")
    config = _our_config(keras_config, schedule_decay=1.0, where=path)
    iterations = int(values["iteration:0"])
    dtype = next(iter(ms.values())).dtype
    cache = np.asarray(momentum_cache_after(iterations, dtype, config["beta_1"], 1.0))
    warnings.warn(
        _KERAS3_SCHEDULE_WARNING.format(what="the newer tf_keras optimizer")
        + " Its file does not store the momentum product (u_product): the state's "
        "momentum_cache is recomputed from iterations, once per step, as the schedule defines "
        "it (tf_keras itself restarts it at 1 when it reloads the file, and under tf.function "
        "advances it once per variable).",
        stacklevel=4,
    )
    return KerasOptimizerState(
        config=config, iterations=iterations, momentum_cache=cache,
        slots={name: Slots(ms[name], vs[name]) for name in ms},
        source="tf_keras-h5", path=path, model_weights=model_weights,
    )


# TensorFlow checkpoints and SavedModels --------------------------------------------------------
def _read_tensorflow(path: str) -> KerasOptimizerState:
    tf = _require(
        "tensorflow", "reading a TensorFlow checkpoint or SavedModel", "tensorflow-cpu"
    )
    graph_pb2 = _require(
        "tensorflow.core.protobuf.trackable_object_graph_pb2",
        "reading a TensorFlow checkpoint's object graph", "tensorflow-cpu",
    )
    source = "tf-checkpoint"
    metadata_config = None
    prefix = path
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            source = "tf-savedmodel"
            prefix = os.path.join(path, "variables", "variables")
            metadata_config = _savedmodel_optimizer_config(path)
        else:
            prefix = tf.train.latest_checkpoint(path)
            if prefix is None:
                raise ValueError(f"{path!r} is a directory with no checkpoint and no SavedModel")
    reader = tf.train.load_checkpoint(prefix)
    keys = reader.get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" not in keys:
        raise ValueError(f"{path!r} is a name-based (TF 1) checkpoint without an object graph")
    graph = graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

    def value_of(node_id: int) -> tuple[str, np.ndarray]:
        for attribute in graph.nodes[node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                return attribute.full_name, np.asarray(reader.get_tensor(attribute.checkpoint_key))
        raise ValueError(f"{path!r}: object-graph node {node_id} holds no variable")

    candidates = []
    for node_id, node in enumerate(graph.nodes):
        children = {child.local_name: child.node_id for child in node.children}
        if "iter" in children and "momentum_cache" in children:
            candidates.append((node_id, node, children))
    if not candidates:
        raise ValueError(
            f"{path!r} holds no Keras 2 (legacy) Nadam optimizer state: no object with "
            "'iter' and 'momentum_cache' variables (was the optimizer saved with the model, "
            "and is it tf_keras.optimizers.legacy.Nadam?)"
        )
    if len(candidates) > 1:
        raise ValueError(f"{path!r} holds {len(candidates)} Nadam optimizers; expected one")
    _, node, children = candidates[0]
    iter_name, iterations = value_of(children["iter"])
    _, cache = value_of(children["momentum_cache"])
    ms: dict[str, np.ndarray] = {}
    vs: dict[str, np.ndarray] = {}
    model_weights: dict[str, np.ndarray] = {}
    for slot in node.slot_variables:
        store = {"m": ms, "v": vs}.get(slot.slot_name)
        if store is None:
            raise ValueError(f"{path!r}: the optimizer has a slot {slot.slot_name!r}, not Nadam's")
        weight_name, weight = value_of(slot.original_variable_node_id)
        name = weight_name + ":0"
        if name in store:
            raise ValueError(f"{path!r}: two weights are named {name!r}")
        store[name] = value_of(slot.slot_variable_node_id)[1]
        model_weights[name] = weight
    if set(ms) != set(vs) or not ms:
        raise ValueError(f"{path!r}: unmatched m and v slots: {list(ms)} / {list(vs)}")
    opt_name = iter_name.rsplit("/", 1)[0] if "/" in iter_name else "Nadam"
    if metadata_config is not None:
        _check_nadam_class(metadata_config.get("class_name"), path)
        keras_config = dict(metadata_config.get("config", {}))
    else:
        keras_config = {"name": opt_name}
        for hyper in ("learning_rate", "beta_1", "beta_2", "decay"):
            if hyper in children:
                keras_config[hyper] = float(value_of(children[hyper])[1])
        missing = "epsilon and the clipping settings" + (
            "" if "learning_rate" in children else ", and the learning-rate schedule"
        )
        warnings.warn(
            f"a TensorFlow checkpoint does not store {missing}: the imported config assumes "
            "Keras's defaults for them (epsilon=1e-07, no clipping"
            + ("" if "learning_rate" in children else ", learning_rate=0.001")
            + "); set them in state.config if your run used others",
            stacklevel=3,
        )
    config = _our_config(
        keras_config, schedule_decay=float(_float32_value(keras_config.get("decay", 0.004))),
        where=path,
    )
    return KerasOptimizerState(
        config=config, iterations=int(iterations), momentum_cache=cache,
        slots={name: Slots(ms[name], vs[name]) for name in ms},
        source=source, path=path, model_weights=model_weights,
    )


def _savedmodel_optimizer_config(path: str) -> dict[str, Any] | None:
    """The optimizer config in a Keras SavedModel's `keras_metadata.pb` (root node's JSON)."""
    metadata = os.path.join(path, "keras_metadata.pb")
    if not os.path.exists(metadata):
        return None
    with open(metadata, "rb") as file:
        data = file.read()
    # SavedMetadata { repeated SavedObject nodes = 1 }; SavedObject { string node_path = 3;
    # string metadata = 5 }: read with a minimal protobuf wire-format decoder.
    for field_number, node in _proto_fields(data):
        if field_number != 1:
            continue
        fields = dict(_proto_fields(node))
        if fields.get(3) == b"root" and 5 in fields:
            training = json.loads(fields[5].decode("utf-8")).get("training_config") or {}
            return training.get("optimizer_config")
    return None


def _proto_fields(data: bytes) -> Any:
    def varint(position: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result, position

    position = 0
    while position < len(data):
        key, position = varint(position)
        wire_type = key & 7
        if wire_type == 0:
            value, position = varint(position)
        elif wire_type == 1:
            value, position = data[position: position + 8], position + 8
        elif wire_type == 2:
            length, position = varint(position)
            value, position = data[position: position + length], position + length
        elif wire_type == 5:
            value, position = data[position: position + 4], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield key >> 3, value


# Keras 3 .keras ---------------------------------------------------------------------------------
def _read_keras3(
    path: str, variable_names: Sequence[str] | None, custom_objects: Mapping[str, Any] | None
) -> KerasOptimizerState:
    h5py = _require("h5py", "reading a Keras 3 .keras file", "h5py")
    import io

    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        if "config.json" not in members or "model.weights.h5" not in members:
            raise ValueError(
                f"{path!r} is a zip file without config.json and model.weights.h5: not a "
                "Keras 3 .keras file this can read"
            )
        model_config = json.loads(archive.read("config.json"))
        weights_bytes = archive.read("model.weights.h5")
    optimizer_config = (model_config.get("compile_config") or {}).get("optimizer")
    if not optimizer_config:
        raise ValueError(f"{path!r} has no optimizer: the model was saved uncompiled")
    if isinstance(optimizer_config, str):
        raise ValueError(
            f"{path!r}: the optimizer is stored only by name ({optimizer_config!r}), without "
            "its settings"
        )
    _check_nadam_class(optimizer_config.get("class_name"), path)
    keras_config = {
        k: v for k, v in optimizer_config.get("config", {}).items()
        if k not in _KERAS3_IGNORED_KEYS
    }
    with h5py.File(io.BytesIO(weights_bytes), "r") as file:
        group = file.get("optimizer/vars")
        if group is None or len(group) == 0:
            raise ValueError(
                f"{path!r} has no optimizer variables: the optimizer had not been built "
                "(trained) when the model was saved"
            )
        count = len(group)
        if sorted(group.keys(), key=int) != [str(i) for i in range(count)]:
            raise ValueError(f"{path!r}: optimizer/vars are not numbered 0..{count - 1}")
        arrays = [np.asarray(group[str(i)][()]) for i in range(count)]
    has_lr = not isinstance(keras_config.get("learning_rate"), Mapping)
    head = 2 if has_lr else 1
    if (count - head - 1) % 2 or count < head + 3:
        raise ValueError(
            f"{path!r}: {count} optimizer variables do not fit Keras 3 Nadam's layout "
            "(iteration, learning_rate, momentum and velocity per variable, u_product)"
        )
    pairs = [
        (arrays[head + 2 * i], arrays[head + 2 * i + 1]) for i in range((count - head - 1) // 2)
    ]
    for i, (m, v) in enumerate(pairs):
        if m.shape != v.shape:
            raise ValueError(
                f"{path!r}: momentum {i} has shape {m.shape} but velocity {i} {v.shape}"
            )
    if variable_names is None:
        variable_names = _keras3_variable_names(path, custom_objects, [m.shape for m, _ in pairs])
    variable_names = [str(name) for name in variable_names]
    if len(variable_names) != len(pairs):
        raise ValueError(
            f"{path!r} has slots for {len(pairs)} variables, but {len(variable_names)} "
            f"variable names were given: {variable_names}"
        )
    if len(set(variable_names)) != len(variable_names):
        raise ValueError(f"variable_names has duplicates: {variable_names}")
    if has_lr:
        keras_config["learning_rate"] = float(arrays[1])
    config = _our_config(keras_config, schedule_decay=1.0, where=path)
    warnings.warn(_KERAS3_SCHEDULE_WARNING.format(what="Keras 3"), stacklevel=3)
    return KerasOptimizerState(
        config=config, iterations=int(arrays[0]), momentum_cache=arrays[-1],
        slots={name: Slots(m, v) for name, (m, v) in zip(variable_names, pairs, strict=True)},
        source="keras3", path=path,
    )


def _keras3_variable_names(
    path: str, custom_objects: Mapping[str, Any] | None, shapes: list[tuple[int, ...]]
) -> list[str]:
    keras = _require(
        "keras",
        "naming a .keras file's variables (or pass variable_names=[v.path for v in "
        "model.trainable_variables])",
        "'keras>=3'",
    )
    load_model: Callable[..., Any] = keras.saving.load_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(path, custom_objects=dict(custom_objects or {}), compile=False)
    variables = list(model.trainable_variables)
    got = [tuple(int(n) for n in v.shape) for v in variables]
    if got != [tuple(s) for s in shapes]:
        raise ValueError(
            f"{path!r}: the rebuilt model's trainable variables have shapes {got}, but the "
            f"optimizer's slots {shapes}; pass variable_names explicitly"
        )
    return [v.path for v in variables]
