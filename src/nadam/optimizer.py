"""`Optimizer`: the Keras 2 OptimizerV2 contract, independent of any array library.

It owns the bookkeeping every Keras optimizer shares: hyperparameters, the iteration counter,
slots and the order of `weights`, configs, clipping, data-parallel aggregation and input
validation. A subclass says what to compute: `_create_slots`, `_prepare_local`,
`_resource_apply_dense` and `_resource_apply_sparse`, as in Keras.

Every `apply_gradients` runs in two phases: first everything that can fail (validating pairs,
calling learning-rate callables and schedules, aggregation, clipping), then the commit
(creating state, advancing schedules, updating variables, `iterations += 1`). Bad input
therefore never leaves a half-applied step behind.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nadam import clipping, schedules
from nadam.backends import Backend, DenseGrad, SparseGrad, backend_for
from nadam.variables import Variable

_BASE_KWARGS = ("clipnorm", "clipvalue", "decay", "global_clipnorm", "lr")

_NONE_GRADIENT_HINT = (
    "Please make sure that all of your ops have a gradient defined (i.e. are differentiable). "
    "Common ops without gradient: argmax, round, comparisons."
)


@dataclass(slots=True)
class _Pair:
    """A validated (gradient, variable) pair, the backend that owns the variable, and where
    the variable lives: its (device, dtype), which picks its per-step constants and kernel."""

    backend: Backend
    var: Any
    grad: DenseGrad | SparseGrad
    place: tuple[str, np.dtype]


def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _host_scalar(value: Any, what: str) -> np.ndarray:
    """A 0-d NumPy array from a number, a 0-d NumPy/JAX array or a 0-d torch tensor."""
    if hasattr(value, "detach"):  # a torch tensor, converted without importing torch
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - any failure means "not a number"
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from error
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    if array.size != 1:
        raise ValueError(f"{what} must be a scalar, got an array of shape {array.shape}")
    return array.reshape(())


class Optimizer:
    """Base class of Keras-style optimizers over NumPy, PyTorch and JAX variables.

    Subclasses create their slots in `_create_slots`, compute per-step scalars in
    `_prepare_local` and update one variable in `_resource_apply_dense` /
    `_resource_apply_sparse`, exactly as with Keras 2's `OptimizerV2`.

    Example:
        >>> class SGD(Optimizer):
        ...     def __init__(self, learning_rate=0.01, name="SGD", **kwargs):
        ...         super().__init__(name, **kwargs)
        ...         self._set_hyper("learning_rate", learning_rate)
        ...     def _resource_apply_dense(self, grad, var, apply_state):
        ...         var.assign_sub(apply_state[("cpu", var.dtype)]["lr_t"] * grad)
        >>> w = Variable([1.0, 2.0])
        >>> SGD(0.5).apply_gradients([(np.array([1.0, 1.0], np.float32), w)])
        1
        >>> w.numpy()
        array([0.5, 1.5], dtype=float32)
    """

    # Keyword arguments a subclass accepts beyond the base ones (Nadam: schedule_decay).
    _EXTRA_KWARGS: tuple[str, ...] = ()
    # Valid ranges of numeric hyperparameters: name -> (low, high, high is inclusive).
    _HYPER_RANGES: dict[str, tuple[float, float, bool]] = {
        "learning_rate": (0.0, math.inf, True),
        "decay": (0.0, math.inf, True),
    }

    def __init__(self, name: str, **kwargs: Any) -> None:
        allowed = sorted({*_BASE_KWARGS, *self._EXTRA_KWARGS})
        for key in kwargs:
            if key not in allowed:
                raise TypeError(
                    f"Unexpected keyword argument passed to optimizer: {key}. "
                    f"Allowed kwargs are {allowed}"
                )
        for key, value in kwargs.items():
            if _is_real_number(value) and value < 0:
                raise ValueError(f"Expected {key} >= 0, received: {value}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Optimizer name must be a non-empty string, got {name!r}")
        if "lr" in kwargs:
            warnings.warn(
                "The `lr` argument is deprecated, use `learning_rate` instead.",
                DeprecationWarning,
                stacklevel=3,
            )
        if kwargs.get("clipnorm") is not None and kwargs.get("global_clipnorm") is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={kwargs['clipnorm']}, `global_clipnorm`={kwargs['global_clipnorm']}."
            )
        object.__setattr__(self, "_hyper", {})
        # name -> (value, its 0-d array) for immutable constants, resolved once at set time.
        self._resolved_constants: dict[str, tuple[Any, np.ndarray]] = {}
        self._name = name
        self._weights: list[Any] = []
        self._iterations = Variable(np.int64(0), name="iter", trainable=False)
        self._slots: dict[int, dict[str, Any]] = {}
        # Keeps every slotted variable alive, so its id() can never be reused by another.
        self._slot_owners: dict[int, Any] = {}
        self._slot_names: list[str] = []
        self._step_hypers: dict[str, np.ndarray] | None = None
        self._clipnorm = self._checked_clip("clipnorm", kwargs.get("clipnorm"))
        self._clipvalue = self._checked_clip("clipvalue", kwargs.get("clipvalue"))
        self._global_clipnorm = self._checked_clip(
            "global_clipnorm", kwargs.get("global_clipnorm")
        )
        self._set_hyper("decay", kwargs.get("decay", 0.0))

    # --- hyperparameters as attributes ---------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: hyperparameters live in self._hyper.
        hyper = self.__dict__.get("_hyper", {})
        key = "learning_rate" if name == "lr" else name
        if key in hyper:
            return hyper[key]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        key = "learning_rate" if name == "lr" else name
        if key in self.__dict__.get("_hyper", {}):
            self._set_hyper(key, value)
        else:
            object.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._hyper, "lr"})

    def _set_hyper(self, name: str, value: Any) -> None:
        """Set hyperparameter `name` to a number, 0-d array, callable or schedule."""
        if isinstance(value, Variable):
            value = value.numpy()
        if isinstance(value, schedules.LearningRateSchedule):
            if name != "learning_rate":
                raise TypeError(f"Only learning_rate may be a LearningRateSchedule, not {name}")
        elif not callable(value):
            self._check_hyper_value(name, _host_scalar(value, name), "")
        self._hyper[name] = value
        self._resolved_constants.pop(name, None)
        if isinstance(value, int | float | np.generic):  # immutable: its array never changes
            resolved = self._resolve_hyper(name)
            resolved.flags.writeable = False
            self._resolved_constants[name] = (value, resolved)

    def _check_hyper_value(self, name: str, value: np.ndarray, source: str) -> None:
        low, high, high_inclusive = self._HYPER_RANGES.get(name, (-math.inf, math.inf, True))
        number = float(value)
        in_range = low <= number and (number <= high if high_inclusive else number < high)
        if math.isnan(number) or not in_range:
            upper = "]" if high_inclusive else ")"
            raise ValueError(
                f"{name}{source} must be in [{low:g}, {high:g}{upper}, received: {number!r}"
            )

    def _resolve_hyper(self, name: str) -> np.ndarray:
        """The hyperparameter's value for this step as a 0-d array, with Keras's rounding.

        Python numbers (also those returned by callables) become float32, as in a Keras hyper
        variable; NumPy floats and arrays, given or returned, keep their own float dtype, as
        Keras's hyper variable made from a NumPy float64 value is float64.
        """
        value = self._hyper[name]
        constant = self._resolved_constants.get(name)
        if constant is not None and constant[0] is value:
            return constant[1]
        if isinstance(value, schedules.LearningRateSchedule):
            result, source = value(np.int64(self._iterations.value)), " (from its schedule)"
        elif callable(value):
            result, source = value(), " (returned by its callable)"
        else:
            result, source = value, ""
        array = _host_scalar(result, f"{name}{source}")
        if source:
            self._check_hyper_value(name, array, source)
        python_number = isinstance(result, numbers.Real) and not isinstance(result, np.generic)
        if python_number or array.dtype.kind != "f":
            return np.asarray(array, dtype=np.float32)
        return array

    def _resolve_hypers(self) -> dict[str, np.ndarray]:
        return {name: self._resolve_hyper(name) for name in self._hyper}

    def _get_hyper(self, name: str, dtype: Any = None) -> Any:
        """The value of hyperparameter `name` (callables called), cast to `dtype` if given."""
        if self._step_hypers is not None and name in self._step_hypers:
            value = self._step_hypers[name]
        else:
            value = self._resolve_hyper(name)
        return value[()] if dtype is None else np.dtype(dtype).type(value[()])

    def _serialize_hyperparameter(self, name: str) -> Any:
        value = self._hyper[name]
        if isinstance(value, schedules.LearningRateSchedule):
            return schedules.serialize(value)
        if callable(value):
            value = value()
        if _is_real_number(value) and not isinstance(value, np.generic):
            return value
        return float(_host_scalar(value, name))

    def _decayed_lr(self, var_dtype: Any) -> np.generic:
        """The learning rate for this step in `var_dtype`: `lr / (1 + decay * iterations)`."""
        dtype = np.dtype(var_dtype)
        lr_t = self._get_hyper("learning_rate", dtype)
        decay_t = self._get_hyper("decay", dtype)
        if decay_t > 0:
            local_step = dtype.type(self._iterations.value)
            lr_t = lr_t / (dtype.type(1) + decay_t * local_step)
        return lr_t

    # --- clipping settings -----------------------------------------------------------------
    @staticmethod
    def _checked_clip(name: str, value: Any) -> float | None:
        if value is None:
            return None
        if not _is_real_number(value) and not isinstance(value, np.generic):
            raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
        if value < 0 or math.isnan(value):
            raise ValueError(f"Expected {name} >= 0, received: {value}")
        return value

    @property
    def clipnorm(self) -> float | None:
        """Clip each gradient to this L2 norm (None: off)."""
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value: float | None) -> None:
        value = self._checked_clip("clipnorm", value)
        if value is not None and self._global_clipnorm is not None:
            raise ValueError("Cannot set `clipnorm` while `global_clipnorm` is set.")
        self._clipnorm = value

    @property
    def global_clipnorm(self) -> float | None:
        """Clip all gradients together to this global L2 norm (None: off)."""
        return self._global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value: float | None) -> None:
        value = self._checked_clip("global_clipnorm", value)
        if value is not None and self._clipnorm is not None:
            raise ValueError("Cannot set `global_clipnorm` while `clipnorm` is set.")
        self._global_clipnorm = value

    @property
    def clipvalue(self) -> float | None:
        """Clamp every gradient entry to [-clipvalue, clipvalue] (None: off)."""
        return self._clipvalue

    @clipvalue.setter
    def clipvalue(self, value: float | None) -> None:
        self._clipvalue = self._checked_clip("clipvalue", value)

    # --- state ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def iterations(self) -> Variable:
        """The int64 step counter: how many times `apply_gradients` has run."""
        return self._iterations

    @iterations.setter
    def iterations(self, value: Any) -> None:
        if self._weights:
            raise RuntimeError(
                "Cannot set `iterations` after the optimizer's weights have been created "
                f"(by `build` or the first `apply_gradients`); got {value!r}"
            )
        if isinstance(value, Variable):
            if value.shape != () or value.dtype.kind not in "iu":
                raise TypeError(
                    f"`iterations` must be a 0-d integer Variable, got {value!r}"
                )
            self._iterations = value
            return
        array = _host_scalar(value, "iterations")
        if array.dtype.kind not in "iu" and float(array) != int(array):
            raise ValueError(f"`iterations` must be a whole number, got {value!r}")
        if int(array) < 0:
            raise ValueError(f"`iterations` must be >= 0, got {value!r}")
        self._iterations = Variable(np.int64(array), name="iter", trainable=False)

    @property
    def weights(self) -> list[Any]:
        """The optimizer's state in creation order: iterations, then what subclasses add."""
        return list(self._weights)

    def variables(self) -> list[Any]:
        """The optimizer's state variables, as `weights`."""
        return list(self._weights)

    def _ensure_iterations_tracked(self) -> None:
        if not self._weights:
            self._weights.append(self._iterations)

    def add_weight(
        self,
        name: str,
        shape: Sequence[int] = (),
        dtype: Any = None,
        initializer: Any = "zeros",
        trainable: bool | None = None,
        synchronization: Any = None,
        aggregation: Any = None,
    ) -> Variable:
        """Create a host state variable (NumPy) and append it to `weights`."""
        self._ensure_iterations_tracked()
        dtype = np.dtype(np.float32 if dtype is None else dtype)
        initial = _initial_value(initializer, tuple(shape), dtype, name)
        weight = Variable(initial, name=name, dtype=dtype, trainable=bool(trainable))
        self._weights.append(weight)
        return weight

    def add_slot(
        self, var: Any, slot_name: str, initializer: Any = "zeros", shape: Any = None
    ) -> Any:
        """Create (or return the existing) slot `slot_name` for `var`, beside it in memory."""
        backend = self._backend_of(var)
        backend.check_variable(var)
        slots = self._slots.get(id(var), {})
        if slot_name in slots:
            return slots[slot_name]
        dtype = backend.dtype(var)
        slot_shape = backend.shape(var) if shape is None else tuple(shape)
        initial = _initial_value(initializer, slot_shape, dtype, slot_name)
        var_name = getattr(var, "name", None) or "variable"
        slot = backend.new_slot(var, f"{var_name}/{slot_name}", initial)
        self._ensure_iterations_tracked()
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        self._slots.setdefault(id(var), {})[slot_name] = slot
        self._slot_owners[id(var)] = var
        self._weights.append(slot)
        return slot

    def _lacking_slots(self, var_list: list[Any], slot_names: tuple[str, ...]) -> list[Any]:
        """The variables of `var_list` that lack one of `slot_names`."""
        slots, wanted, none = self._slots, set(slot_names), {}
        return [var for var in var_list if not wanted <= slots.get(id(var), none).keys()]

    def get_slot(self, var: Any, slot_name: str) -> Any:
        """The slot `slot_name` of `var`; KeyError if it does not exist."""
        slots = self._slots.get(id(var))
        if slots is None or slot_name not in slots:
            backend = backend_for(var)
            described = backend.describe(var) if backend else repr(var)
            raise KeyError(
                f"Could not find slot '{slot_name}' for variable {described}. This optimizer "
                f"has slots {self._slot_names} for {len(self._slots)} variable(s)."
            )
        return slots[slot_name]

    def get_slot_names(self) -> list[str]:
        """The names of the slots this optimizer creates, in creation order."""
        return list(self._slot_names)

    def get_weights(self) -> list[np.ndarray]:
        """NumPy copies of `weights`, in the same order."""
        return [_backend_of_weight(w).to_numpy(w) for w in self._weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Overwrite the optimizer's state from a list as `get_weights` returns it.

        Every length, shape and dtype is checked before anything is written.
        """
        backends = [_backend_of_weight(param) for param in self._weights]
        shapes = [tuple(b.shape(p)) for b, p in zip(backends, self._weights, strict=True)]
        arrays = checked_weight_arrays(self._name, shapes, weights)
        for backend, param, array in zip(backends, self._weights, arrays, strict=True):
            backend.write(param, array.astype(backend.dtype(param)))

    def build(self, var_list: Iterable[Any]) -> None:
        """Create the optimizer's state for `var_list` without taking a step.

        Example:
            >>> w = Variable([1.0, 2.0])
            >>> opt = Optimizer("plain")
            >>> opt.build([w]); len(opt.weights)
            1
        """
        variables = list(var_list)
        seen: dict[int, int] = {}
        for position, var in enumerate(variables):
            self._check_variable(var, position, seen)
        self._create_all_weights(variables)

    def _create_all_weights(self, var_list: list[Any]) -> None:
        self._ensure_iterations_tracked()
        self._create_slots(var_list)

    # --- hooks for subclasses ----------------------------------------------------------
    def _create_slots(self, var_list: list[Any]) -> None:
        """Create the slots of each variable (subclasses)."""

    def _prepare(
        self, places: list[tuple[str, np.dtype]]
    ) -> dict[tuple[str, np.dtype], dict[str, Any]]:
        """Compute this step's constants once per (device, dtype) among `places`."""
        apply_state: dict[tuple[str, np.dtype], dict[str, Any]] = {}
        for place in dict.fromkeys(places):  # distinct, in order of first appearance
            apply_state[place] = {}
            self._prepare_local(place[0], place[1], apply_state)
        return apply_state

    def _prepare_local(self, var_device: str, var_dtype: np.dtype, apply_state: dict) -> None:
        if "learning_rate" in self._hyper:
            apply_state[(var_device, var_dtype)]["lr_t"] = self._decayed_lr(var_dtype)

    def _resource_apply_dense(self, grad: Any, var: Any, apply_state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement dense updates")

    def _resource_apply_sparse(
        self, grad: Any, var: Any, indices: Any, apply_state: dict
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement sparse updates")

    def _resource_apply_sparse_duplicate_indices(
        self, grad: Any, var: Any, indices: Any, apply_state: dict
    ) -> None:
        """Sum repeated indices, then `_resource_apply_sparse`."""
        backend = self._backend_of(var)
        unique = backend.dedupe(SparseGrad(grad, indices))
        self._resource_apply_sparse(unique.values, var, unique.indices, apply_state)

    def _apply_dense_group(
        self, backend: Backend, variables: list[Any], grads: list[Any], apply_state: dict
    ) -> None:
        """Update variables of one (backend, device, dtype) group; subclasses may fuse."""
        for grad, var in zip(grads, variables, strict=True):
            self._resource_apply_dense(grad, var, apply_state)

    # --- the step --------------------------------------------------------------------------------
    def apply_gradients(
        self,
        grads_and_vars: Iterable[tuple[Any, Any]],
        name: str | None = None,
        experimental_aggregate_gradients: bool = True,
    ) -> int:
        """Apply one step of gradients; returns the new iteration count.

        `grads_and_vars` holds (gradient, variable) pairs; a gradient may be an array, an
        `IndexedSlices` or None (dropped with a warning). When running data-parallel and
        `experimental_aggregate_gradients` is True, gradients are summed across replicas
        first; then clipping applies; then the update; then `iterations += 1`.
        """
        pairs = self._validated_pairs(grads_and_vars)
        hypers = self._resolve_hypers()
        grads = self._transform_gradients(pairs, experimental_aggregate_gradients)
        variables = [pair.var for pair in pairs]
        self._step_hypers = hypers
        try:
            self._create_all_weights(variables)
            apply_state = self._prepare([pair.place for pair in pairs])
            self._apply_updates(pairs, grads, apply_state)
            self._iterations.assign_add(np.int64(1))
        finally:
            self._step_hypers = None
        return int(self._iterations.value)

    def _backend_of(self, var: Any, position: int | None = None) -> Backend:
        backend = backend_for(var)
        if backend is None:
            where = f" at position {position}" if position is not None else ""
            raise TypeError(
                f"Variable{where} of type {type(var).__name__} is not something nadam can "
                "train: expected a nadam.Variable, a writable NumPy array or a torch tensor"
            )
        return backend

    def _check_variable(self, var: Any, position: int, seen: dict[int, int]) -> Backend:
        backend = self._backend_of(var, position)
        backend.check_variable(var)
        if id(var) in seen:
            raise ValueError(
                f"Variable {backend.describe(var)} appears twice (positions {seen[id(var)]} "
                f"and {position}); pass it once with the sum of its gradients"
            )
        seen[id(var)] = position
        return backend

    def _validated_pairs(self, grads_and_vars: Iterable[tuple[Any, Any]]) -> list[_Pair]:
        if isinstance(grads_and_vars, str | bytes | dict) or not isinstance(
            grads_and_vars, Iterable
        ):
            raise TypeError(
                "apply_gradients expects an iterable of (gradient, variable) pairs, got "
                f"{type(grads_and_vars).__name__}"
            )
        items = list(grads_and_vars)
        if not items:
            raise ValueError("apply_gradients received an empty list of (gradient, variable)")
        pairs: list[_Pair] = []
        missing: list[str] = []
        seen: dict[int, int] = {}
        for position, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise TypeError(
                    f"Item {position} of grads_and_vars is not a (gradient, variable) pair: "
                    f"{item!r}"
                )
            grad, var = item
            backend = self._check_variable(var, position, seen)
            if grad is None:
                missing.append(backend.describe(var))
                continue
            place = (backend.device(var), backend.dtype(var))
            pairs.append(_Pair(backend, var, backend.gradient(grad, var), place))
        if not pairs:
            raise ValueError(f"No gradients provided for any variable: [{', '.join(missing)}].")
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables [{', '.join(missing)}] when minimizing "
                "the loss.",
                UserWarning,
                stacklevel=3,
            )
        return pairs

    def _transform_gradients(
        self, pairs: list[_Pair], aggregate: bool
    ) -> list[DenseGrad | SparseGrad]:
        grads = [pair.grad for pair in pairs]
        if aggregate:
            grads = self._aggregate_gradients(pairs, grads)
        if self._clipvalue is not None:
            grads = [
                clipping.clip_by_value(pair.backend, grad, self._clipvalue)
                for pair, grad in zip(pairs, grads, strict=True)
            ]
        if self._clipnorm is not None:
            grads = [
                clipping.clip_by_norm(pair.backend, grad, self._clipnorm)
                for pair, grad in zip(pairs, grads, strict=True)
            ]
        if self._global_clipnorm is not None:
            grads = clipping.clip_by_global_norm(
                [(pair.backend, grad) for pair, grad in zip(pairs, grads, strict=True)],
                self._global_clipnorm,
            )
        return grads

    def _aggregate_gradients(
        self, pairs: list[_Pair], grads: list[DenseGrad | SparseGrad]
    ) -> list[DenseGrad | SparseGrad]:
        """Sum gradients across data-parallel replicas, one collective call per backend."""
        backend = pairs[0].backend
        if all(pair.backend is backend for pair in pairs):  # the usual case: one library
            return backend.all_reduce_sum(grads)
        result = list(grads)
        by_backend: dict[str, list[int]] = {}
        for position, pair in enumerate(pairs):
            by_backend.setdefault(pair.backend.name, []).append(position)
        for positions in by_backend.values():
            backend = pairs[positions[0]].backend
            reduced = backend.all_reduce_sum([grads[p] for p in positions])
            for position, grad in zip(positions, reduced, strict=True):
                result[position] = grad
        return result

    def _apply_updates(
        self, pairs: list[_Pair], grads: list[DenseGrad | SparseGrad], apply_state: dict
    ) -> None:
        groups: dict[tuple[str, str, np.dtype], tuple[Backend, list[Any], list[Any]]] = {}
        sparse: list[tuple[_Pair, SparseGrad]] = []
        for pair, grad in zip(pairs, grads, strict=True):
            if isinstance(grad, SparseGrad):
                sparse.append((pair, grad))
                continue
            backend = pair.backend
            group = groups.setdefault((backend.name, *pair.place), (backend, [], []))
            group[1].append(pair.var)
            group[2].append(grad.array)
        for backend, variables, arrays in groups.values():
            self._apply_dense_group(backend, variables, arrays, apply_state)
        for pair, grad in sparse:
            self._resource_apply_sparse_duplicate_indices(
                grad.values, pair.var, grad.indices, apply_state
            )

    # --- gradients from a loss -----------------------------------------------------------
    def _loss_backend(self, var_list: list[Any]) -> Backend:
        if not var_list:
            raise ValueError("var_list is empty: there is nothing to differentiate")
        found = (self._backend_of(var, position) for position, var in enumerate(var_list))
        backends = {backend.name: backend for backend in found}
        if len(backends) > 1:
            raise ValueError(
                f"var_list mixes variables of several array libraries ({sorted(backends)}); "
                "a loss is differentiated by one library"
            )
        return next(iter(backends.values()))

    def _compute_gradients(
        self, loss: Any, var_list: Any, grad_loss: Any = None
    ) -> list[tuple[Any, Any]]:
        if callable(var_list):
            var_list = var_list()
        var_list = list(var_list)
        grads = self._loss_backend(var_list).gradients(loss, var_list, grad_loss)
        return list(zip(grads, var_list, strict=True))

    def minimize(
        self,
        loss: Callable[[], Any] | Any,
        var_list: Iterable[Any] | Callable[[], Iterable[Any]],
        grad_loss: Any = None,
        name: str | None = None,
        tape: Any = None,
    ) -> int:
        """Differentiate `loss` with the variables' own autodiff, then `apply_gradients`.

        Example:
            >>> from nadam import Nadam
            >>> x = Variable(10.0)
            >>> Nadam(learning_rate=0.2).minimize(lambda: x.value ** 2 / 2, [x])
            1
            >>> round(float(x), 5)
            9.78871
        """
        grads_and_vars = self._compute_gradients(loss, var_list, grad_loss)
        return self.apply_gradients(grads_and_vars, name=name)

    def get_gradients(self, loss: Callable[[], Any] | Any, params: Iterable[Any]) -> list[Any]:
        """Gradients of `loss` for `params`; ValueError for a parameter the loss ignores."""
        params = list(params)
        grads = self._loss_backend(params).gradients(loss, params)
        for grad, param in zip(grads, params, strict=True):
            if grad is None:
                raise ValueError(
                    f"Variable {self._backend_of(param).describe(param)} has `None` for "
                    f"gradient. {_NONE_GRADIENT_HINT}"
                )
        return grads

    def get_updates(self, loss: Callable[[], Any] | Any, params: Iterable[Any]) -> list[int]:
        """Compute the gradients of `loss` and apply them; returns [new iteration count]."""
        params = list(params)
        grads = self.get_gradients(loss, params)
        return [self.apply_gradients(list(zip(grads, params, strict=True)))]

    # --- configuration -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as plain JSON-serializable values."""
        config: dict[str, Any] = {"name": self._name}
        if self._clipnorm is not None:
            config["clipnorm"] = self._clipnorm
        if self._global_clipnorm is not None:
            config["global_clipnorm"] = self._global_clipnorm
        if self._clipvalue is not None:
            config["clipvalue"] = self._clipvalue
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Optimizer:
        """Create an optimizer from `get_config()` output (Keras configs included)."""
        config = dict(config)
        config.pop("is_legacy_optimizer", None)
        if "lr" in config:
            config["learning_rate"] = config.pop("lr")
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(
                config["learning_rate"], custom_objects=custom_objects
            )
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self._name}' iterations={int(self._iterations.value)}>"


def checked_weight_arrays(
    optimizer_name: str, shapes: Sequence[tuple[int, ...]], weights: Iterable[Any]
) -> list[np.ndarray]:
    """`weights` as NumPy arrays after checking them against `shapes`, with Keras's messages.

    The length first, then every shape and that every entry is numeric; nothing is converted
    to the targets' dtypes here, and nothing is written.
    """
    weights = list(weights)
    if len(shapes) != len(weights):
        raise ValueError(
            f"You called `set_weights(weights)` on optimizer {optimizer_name} with a weight "
            f"list of length {len(weights)}, but the optimizer was expecting "
            f"{len(shapes)} weights. Provided weights: {str(weights)[:50]}..."
        )
    arrays = []
    for position, (shape, weight) in enumerate(zip(shapes, weights, strict=True)):
        if hasattr(weight, "detach"):  # a torch tensor, without importing torch
            weight = weight.detach().cpu().numpy()
        array = np.asarray(weight.numpy() if isinstance(weight, Variable) else weight)
        if array.shape != tuple(shape):
            raise ValueError(
                f"Optimizer weight shape {tuple(shape)} not compatible with provided weight "
                f"shape {array.shape}"
            )
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"Weight {position} given to set_weights has dtype {array.dtype}; "
                "expected numbers"
            )
        arrays.append(array)
    return arrays


def _backend_of_weight(weight: Any) -> Backend:
    backend = backend_for(weight)
    if backend is None:  # pragma: no cover - weights are created by backends
        raise TypeError(f"Unsupported optimizer weight {weight!r}")
    return backend


def _initial_value(initializer: Any, shape: tuple[int, ...], dtype: np.dtype, name: str) -> Any:
    if isinstance(initializer, str):
        if initializer == "zeros":
            return np.zeros(shape, dtype=dtype)
        if initializer == "ones":
            return np.ones(shape, dtype=dtype)
        raise ValueError(
            f"Unknown initializer '{initializer}' for '{name}': use 'zeros', 'ones', a callable "
            "(shape, dtype) -> array, or an array"
        )
    value = initializer(shape, dtype) if callable(initializer) else initializer
    array = np.asarray(value, dtype=dtype)
    if array.shape != shape:
        array = np.broadcast_to(array, shape).copy()
    return array
