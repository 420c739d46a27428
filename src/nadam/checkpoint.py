"""Our checkpoint file: an optimizer's state in one safetensors file, written atomically.

`opt.save_state(path)` and `opt.load_state(path)` (on `nadam.Nadam`, whatever its variables,
and on `nadam.torch.Nadam`) use this module; `read(path)` opens a checkpoint for inspection.

The file is a plain safetensors file (no pickle anywhere):

- one tensor per slot, named ``"<slot>/<variable>"`` (``"m/0"``, ``"v/0"``, ``"m/1"``, ...),
  where ``<variable>`` numbers the optimizer's variables in the order their slots first
  appear in Keras's weight order;
- the metadata field ``"nadam.state"``: JSON with the format name and version, which face and
  class wrote it, the optimizer's config (``get_config()``; for `nadam.torch.Nadam` its
  defaults and param groups), ``iterations`` (an int), ``momentum_cache`` (its value, exact as
  JSON writes floats, and its dtype; null before the first step or `build`), the slot names,
  every variable's name (where it has one), shape, dtype and backend, the shape and dtype of
  every stored tensor, and ``weights``: the names of the optimizer's weights in Keras's order
  (``["iterations", "momentum_cache", "m/0", "m/1", "v/0", "v/1"]``);
- the metadata field ``"nadam.sha256"``: the SHA-256 of the JSON text followed by the bytes
  of every tensor in ``weights`` order (little-endian, C order), checked on every read.

How a checkpoint maps onto an optimizer: by position in Keras's weight order, the order of
`get_weights()`, which the optimizer has once its state exists (after ``build(var_list)`` or
a step; `nadam.torch.Nadam` builds the state of all its parameters itself if it has none). The
checkpoint's weights must be the optimizer's one for one: the same names at the same
positions (so the same slots of the same variables, in the same rounds of creation), and
every variable and every weight of the same shape and dtype. Variable names are recorded for
people, not matched: a checkpoint of NumPy variables loads into torch parameters of the same
shapes and dtypes. Hyperparameters are not loaded: the optimizer keeps its own (the recorded
config rebuilds one: ``Nadam.from_config(read(path).config)``).

Writing is atomic: the file is written under a temporary name in the same directory, flushed
and fsync'ed, renamed over `path` (`os.replace`) and the directory is fsync'ed, so a process
killed mid-save leaves the previous checkpoint as it was (and possibly a stale
``.<name>.*.tmp`` file beside it). Reading checks everything before returning: a truncated or
corrupted file, a checksum mismatch, a missing or extra tensor, a tensor whose shape or dtype
is not the recorded one, and values no run can produce (`iterations` not a non-negative
int64, `momentum_cache` not in [0, 1]) are ValueErrors naming the file and the problem; a
missing file is FileNotFoundError.

safetensors is imported only when a checkpoint is written or read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nadam import checks

__all__ = ["FORMAT", "VERSION", "Checkpoint", "Layout", "VariableInfo", "read", "write"]

FORMAT = "nadam.checkpoint"
VERSION = 1
STATE_KEY = "nadam.state"
DIGEST_KEY = "nadam.sha256"
ITERATIONS = "iterations"
MOMENTUM_CACHE = "momentum_cache"
_SCHEDULE = (ITERATIONS, MOMENTUM_CACHE)  # kept in the JSON, not as tensors
_DTYPES = ("float16", "float32", "float64", "int32", "int64")


@dataclass(frozen=True)
class VariableInfo:
    """A variable the optimizer has slots for: recorded for checks and for people."""

    name: str | None
    shape: tuple[int, ...]
    dtype: str
    backend: str | None = None

    def describe(self) -> str:
        label = f"'{self.name}' " if self.name else ""
        return f"{label}{self.shape} {self.dtype}"


@dataclass(frozen=True)
class Layout:
    """An optimizer's weights in Keras's order: names, shapes, dtypes, and its variables.

    Names: ``"iterations"``, ``"momentum_cache"``, ``"<slot>/<variable index>"`` for a slot,
    ``"weight/<position>"`` for any other weight a custom optimizer adds.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    variables: tuple[VariableInfo, ...]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.shapes) == len(self.dtypes):
            raise ValueError("a Layout needs one shape and one dtype per weight")

    @property
    def slot_names(self) -> list[str]:
        return list(dict.fromkeys(n.split("/")[0] for n in self.names if _is_slot(n)))

    def summary(self) -> str:
        variables = ", ".join(v.describe() for v in self.variables) or "none"
        return f"{len(self.names)} weights for {len(self.variables)} variable(s): {variables}"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and verified by `read`."""

    path: str
    face: str
    optimizer: str
    config: dict[str, Any]
    layout: Layout
    iterations: int
    momentum_cache: np.ndarray | None  # 0-d, in its dtype; None before any state existed
    tensors: dict[str, np.ndarray] = field(repr=False)

    def weights(self) -> list[np.ndarray]:
        """The state in Keras's weight order, as `get_weights()` returned it when saved."""
        arrays = []
        for name, dtype in zip(self.layout.names, self.layout.dtypes, strict=True):
            if name == ITERATIONS:
                arrays.append(np.array(self.iterations, dtype=dtype))
            elif name == MOMENTUM_CACHE:
                arrays.append(np.array(self.momentum_cache, dtype=dtype))
            else:
                arrays.append(self.tensors[name])
        return arrays

    def arrays_for(self, target: Layout, owner: str) -> list[np.ndarray]:
        """The state as arrays for an optimizer of layout `target` (`owner` names it).

        ValueError, naming the first difference, unless the checkpoint's weights are the
        target's one for one (names at the same positions, shapes, dtypes).
        """
        ours, where = self.layout, f"checkpoint {self.path!r}"
        writer = f"{self.optimizer}, {self.face} face"
        if ours.slot_names and target.slot_names and ours.slot_names != target.slot_names:
            raise ValueError(
                f"{where} holds the state of another optimizer ({writer}, slots "
                f"{ours.slot_names}), but {owner} has slots {target.slot_names}"
            )
        if len(ours.variables) != len(target.variables) or len(ours.names) != len(
            target.names
        ):
            raise ValueError(
                f"{where} does not fit {owner}: it holds {ours.summary()} (written by "
                f"{writer}), but {owner} has {target.summary()}; a checkpoint loads into "
                "an optimizer with the same variables, built in the same order (build(var_list) "
                "or a step first)"
            )
        for index, (saved, own) in enumerate(zip(ours.variables, target.variables, strict=True)):
            if saved.shape != own.shape or saved.dtype != own.dtype:
                raise ValueError(
                    f"{where} does not fit {owner}: its variable {index} is "
                    f"{saved.describe()}, but {owner}'s variable {index} is {own.describe()}"
                )
        for position, (saved, own) in enumerate(zip(ours.names, target.names, strict=True)):
            if saved != own:
                raise ValueError(
                    f"{where} does not fit {owner}: its weight {position} is '{saved}' but "
                    f"{owner}'s weight {position} is '{own}' (slot names in the checkpoint: "
                    f"{ours.slot_names}; in {owner}: {target.slot_names})"
                )
        for position, name in enumerate(ours.names):
            saved = (ours.shapes[position], ours.dtypes[position])
            own = (target.shapes[position], target.dtypes[position])
            if saved != own:
                raise ValueError(
                    f"{where} does not fit {owner}: its weight {position} ('{name}') has shape "
                    f"{saved[0]} and dtype {saved[1]}, but {owner}'s has shape {own[0]} and "
                    f"dtype {own[1]}"
                )
        return self.weights()


# --- writing ---------------------------------------------------------------------------------
def write(
    path: str | os.PathLike[str],
    layout: Layout,
    arrays: Sequence[np.ndarray],
    *,
    iterations: int,
    face: str,
    optimizer: str,
    config: dict[str, Any],
) -> None:
    """Write a checkpoint of the weights `arrays` (Keras's order, described by `layout`).

    The values are checked as `read` will check them, so no file is written that cannot be
    read back. Atomic: `path` is either its previous content or the whole new checkpoint.
    """
    from safetensors.numpy import save

    if len(arrays) != len(layout.names):
        raise ValueError(f"{len(arrays)} arrays for {len(layout.names)} weights")
    for name, dtype in zip(layout.names, layout.dtypes, strict=True):
        if dtype not in _DTYPES:
            raise ValueError(
                f"weight '{name}' has dtype {dtype}: a nadam checkpoint holds {list(_DTYPES)}"
            )
    iterations = checks.iteration_count(iterations, ITERATIONS)
    cache = None
    tensors: dict[str, np.ndarray] = {}
    for name, array in zip(layout.names, arrays, strict=True):
        array = np.asarray(array)
        if name == ITERATIONS:
            iterations = checks.iteration_count(array, ITERATIONS)
        elif name == MOMENTUM_CACHE:
            checks.momentum_cache(array)
            cache = {"value": float(array), "dtype": array.dtype.name}
        else:
            tensors[name] = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    state = {
        "format": FORMAT,
        "version": VERSION,
        "face": face,
        "optimizer": optimizer,
        "config": _jsonable(config),
        ITERATIONS: iterations,
        MOMENTUM_CACHE: cache,
        "slot_names": layout.slot_names,
        "variables": [
            {"name": v.name, "shape": list(v.shape), "dtype": v.dtype, "backend": v.backend}
            for v in layout.variables
        ],
        "tensors": {
            name: {"shape": list(t.shape), "dtype": t.dtype.name} for name, t in tensors.items()
        },
        "weights": list(layout.names),
        "weight_shapes": [list(s) for s in layout.shapes],
        "weight_dtypes": list(layout.dtypes),
    }
    text = json.dumps(state, allow_nan=False, sort_keys=True)
    digest = _digest(text, (tensors[name] for name in layout.names if name in tensors))
    data = save(tensors, metadata={STATE_KEY: text, DIGEST_KEY: digest})
    _replace_atomically(os.fspath(path), data)


def _replace_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _give_file_mode(temporary, path)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _give_file_mode(temporary: str, path: str) -> None:
    # mkstemp makes the file 0600; a checkpoint keeps the mode of the one it replaces, or gets
    # the usual 0644.
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o644
    with contextlib.suppress(OSError):
        os.chmod(temporary, mode)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); Windows cannot open a directory, and needs not."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------
def read(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint; every problem is a ValueError naming the file.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from nadam import Nadam, Variable
        >>> x = Variable([1.0, 2.0], name="x")
        >>> opt = Nadam()
        >>> opt.apply_gradients([(np.ones(2, np.float32), x)])
        1
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
        >>> opt.save_state(path)
        >>> ckpt = read(path)
        >>> ckpt.iterations, ckpt.layout.names
        (1, ('iterations', 'momentum_cache', 'm/0', 'v/0'))
    """
    path = os.fspath(path)
    with open(path, "rb") as file:  # FileNotFoundError names the path
        data = file.read()
    where = f"checkpoint {path!r}"
    metadata = _metadata(data, where)
    if STATE_KEY not in metadata or DIGEST_KEY not in metadata:
        raise ValueError(
            f"{where} is a safetensors file but not a nadam checkpoint (no '{STATE_KEY}' and "
            f"'{DIGEST_KEY}' metadata)"
        )
    tensors = _tensors(data, where)
    text = metadata[STATE_KEY]
    try:
        state = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{where} is corrupted: its state is not JSON ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{where} is not a nadam checkpoint (format {_get(state, 'format')!r})")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{where} has format version {state.get('version')!r}; this nadam reads version "
            f"{VERSION}"
        )
    try:
        names = [str(name) for name in state["weights"]]
        stored = [name for name in names if name not in _SCHEDULE]
        missing = [name for name in stored if name not in tensors]
        if missing:
            raise ValueError(f"the tensor(s) {missing} are missing")
        extra = sorted(set(tensors) - set(stored))
        if extra:
            raise ValueError(f"it has tensor(s) {extra} that are none of its weights")
        digest = _digest(text, (tensors[name] for name in stored))
        if digest != metadata[DIGEST_KEY]:
            raise ValueError(
                "checksum mismatch: its SHA-256 is not the one recorded when it was written "
                "(the file was changed or damaged)"
            )
        layout, iterations, cache = _checked_state(state, names, tensors)
    except ValueError as error:
        raise ValueError(f"{where} is corrupted: {error}") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{where} is corrupted: its state lacks or garbles {error}"
        ) from None
    return Checkpoint(
        path=path,
        face=str(state.get("face")),
        optimizer=str(state.get("optimizer")),
        config=state.get("config") or {},
        layout=layout,
        iterations=iterations,
        momentum_cache=cache,
        tensors=tensors,
    )


def _metadata(data: bytes, where: str) -> dict[str, str]:
    """The safetensors header's `__metadata__` (the file is 8 bytes of header length, the
    header JSON, then the tensor bytes)."""
    if len(data) < 8:
        raise ValueError(f"{where} is truncated or not a safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(
            f"{where} is truncated or not a safetensors file: its header says {size} bytes, "
            f"the file has {len(data) - 8} after the length"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as error:
        raise ValueError(f"{where} is corrupted or not a safetensors file: {error}") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError(f"{where} is not a nadam checkpoint (no safetensors metadata)")
    return metadata


def _tensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{where} is truncated or corrupted: {error}") from None


def _checked_state(
    state: dict[str, Any], names: list[str], tensors: dict[str, np.ndarray]
) -> tuple[Layout, int, np.ndarray | None]:
    """The layout and schedule described by `state`, checked against themselves and the
    tensors."""
    shapes = [tuple(int(n) for n in shape) for shape in state["weight_shapes"]]
    dtypes = [_dtype_name(name) for name in state["weight_dtypes"]]
    if not len(names) == len(shapes) == len(dtypes) or len(set(names)) != len(names):
        raise ValueError("its weight names, shapes and dtypes do not match up")
    variables = tuple(
        VariableInfo(
            name=None if v.get("name") is None else str(v["name"]),
            shape=tuple(int(n) for n in v["shape"]),
            dtype=_dtype_name(v["dtype"]),
            backend=None if v.get("backend") is None else str(v["backend"]),
        )
        for v in state["variables"]
    )
    for position, (name, shape, dtype) in enumerate(zip(names, shapes, dtypes, strict=True)):
        if name in _SCHEDULE:
            if shape != ():
                raise ValueError(f"its weight {position} ('{name}') is not a scalar")
            continue
        if _is_slot(name) and not int(name.split("/")[1]) < len(variables):
            raise ValueError(f"its weight '{name}' names a variable it does not record")
        tensor = tensors[name]
        if tensor.shape != shape or tensor.dtype != np.dtype(dtype):
            raise ValueError(
                f"its tensor '{name}' has shape {tensor.shape} and dtype {tensor.dtype}, but "
                f"the checkpoint records {shape} and {dtype}"
            )
    iterations = checks.iteration_count(state[ITERATIONS], ITERATIONS)
    cache = None
    if state[MOMENTUM_CACHE] is not None:
        value = state[MOMENTUM_CACHE]["value"]
        dtype = np.dtype(_dtype_name(state[MOMENTUM_CACHE]["dtype"]))
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"its momentum_cache {value!r} is not a number")
        checks.momentum_cache(float(value))
        cache = np.array(value, dtype=dtype)
        if float(cache) != float(value):
            raise ValueError(f"its momentum_cache {value!r} is not a {dtype} value")
    for position, name in enumerate(names):
        if name == ITERATIONS and np.dtype(dtypes[position]).kind not in "iu":
            raise ValueError("its iterations are not of an integer dtype")
        if name == MOMENTUM_CACHE and (cache is None or cache.dtype != np.dtype(dtypes[position])):
            raise ValueError("its momentum_cache and its weights disagree")
    if MOMENTUM_CACHE not in names and cache is not None:
        raise ValueError("it has a momentum_cache value but no momentum_cache weight")
    return (
        Layout(tuple(names), tuple(shapes), tuple(dtypes), variables),
        iterations,
        cache,
    )


# --- helpers -----------------------------------------------------------------------------------
def _digest(text: str, arrays: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256(text.encode("utf-8"))
    for array in arrays:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _is_slot(name: str) -> bool:
    slot, _, index = name.partition("/")
    return bool(slot) and slot != "weight" and index.isdigit()


def _dtype_name(name: Any) -> str:
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {list(_DTYPES)}")
    return str(name)


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON: NumPy scalars and one-element tensors become numbers, tuples
    lists; anything else that JSON cannot hold is recorded as its repr."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.generic | np.ndarray):
        return _jsonable(value.tolist())
    return repr(value)


def layout_of(
    names: Sequence[str], arrays_or_specs: Sequence[tuple[tuple[int, ...], Any]],
    variables: Sequence[VariableInfo],
) -> Layout:
    """A `Layout` from weight names, (shape, dtype) pairs and variables."""
    return Layout(
        tuple(names),
        tuple(tuple(int(n) for n in shape) for shape, _ in arrays_or_specs),
        tuple(np.dtype(dtype).name for _, dtype in arrays_or_specs),
        tuple(variables),
    )
