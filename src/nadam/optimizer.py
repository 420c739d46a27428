"""`Optimizer`: the Keras 2 OptimizerV2 contract, independent of any array library.

It keeps what every Keras optimizer has: hyperparameters (`hyperparameters.Hyperparameters`),
the iteration counter, slots (`slots.SlotTable`) and the order of `weights`, configs, clipping
settings and data-parallel aggregation. A subclass says what to compute: `_create_slots`,
`_prepare_local`, `_resource_apply_dense` and `_resource_apply_sparse`, as in Keras.

`apply_gradients` drives the step engine (`nadam.engine`): everything that can fail first
(checking every pair and its memory, calling learning-rate callables and schedules,
aggregation, clipping), then, under the optimizer's lock and with Ctrl-C held back, the commit
(creating state, the updates, the momentum cache, `iterations += 1`). Bad input therefore never
leaves a half-applied step behind.
"""

from __future__ import annotations

import functools
import inspect
import operator
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nadam import checkpoint, checks, engine, memory, schedules
from nadam.backends import NUMPY_BACKEND, Backend, SparseGrad, backend_for
from nadam.hyperparameters import Hyperparameters
from nadam.slots import SlotTable, variable_key
from nadam.step_scalars import decayed_learning_rate
from nadam.variables import IndexedSlices, Variable

_BASE_KWARGS = ("clipnorm", "clipvalue", "decay", "global_clipnorm", "lr")

_NONE_GRADIENT_HINT = (
    "Please make sure that all of your ops have a gradient defined (i.e. are differentiable). "
    "Common ops without gradient: argmax, round, comparisons."
)

STEP_CONTEXT = "step_context"
"""The key of a step's `engine.StepContext` in `apply_state` (subclasses that make one)."""

HYPERS = "hypers"
"""The key of the step's resolved hyperparameters (name -> 0-d array) in `apply_state`."""


class Optimizer:
    """Base class of Keras-style optimizers over NumPy and PyTorch variables.

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

    def __init__(self, name: str, **kwargs: Any) -> None:
        allowed = sorted({*_BASE_KWARGS, *self._EXTRA_KWARGS})
        for key in kwargs:
            if key not in allowed:
                raise TypeError(
                    f"Unexpected keyword argument passed to optimizer: {key}. "
                    f"Allowed kwargs are {allowed}"
                )
        for key, value in kwargs.items():
            if checks.is_real_number(value) and value < 0:
                raise ValueError(f"Expected {key} >= 0, received: {value}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Optimizer name must be a non-empty string, got {name!r}")
        if "lr" in kwargs:
            warnings.warn(
                "The `lr` argument is deprecated, use `learning_rate` instead.",
                DeprecationWarning,
                stacklevel=3,
            )
        checks.exclusive_clipnorms(kwargs.get("clipnorm"), kwargs.get("global_clipnorm"))
        object.__setattr__(self, "_hyper", Hyperparameters())
        self._name = name
        self._weights: list[Any] = []
        self._iterations = Variable(np.int64(0), name="iter", trainable=False)
        self._slots = SlotTable()
        self._slot_names: list[str] = []
        self._lock = threading.RLock()
        self._own_state: memory.SpanIndex | None = None  # spans of `_weights`, made lazily
        self._memo = engine.VariableMemo()
        # (the last step's Updates, their distinct (device, dtype) places, all on NumPy?)
        self._step_layout: tuple[list[engine.Update], list[Any], bool] | None = None
        self._clipping = engine.Clipping(
            checks.clip_threshold(kwargs.get("clipvalue"), "clipvalue"),
            checks.clip_threshold(kwargs.get("clipnorm"), "clipnorm"),
            checks.clip_threshold(kwargs.get("global_clipnorm"), "global_clipnorm"),
        )
        self._set_hyper("decay", kwargs.get("decay", 0.0))

    # --- copies: the lock is the copy's own ----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        state["_own_state"] = None
        state["_memo"] = engine.VariableMemo()  # ids and addresses mean nothing in a copy
        state["_step_layout"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # --- hyperparameters as attributes ---------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: hyperparameters live in self._hyper.
        hyper = self.__dict__.get("_hyper")
        key = "learning_rate" if name == "lr" else name
        if hyper is not None and key in hyper:
            return hyper.view(key)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        key = "learning_rate" if name == "lr" else name
        hyper = self.__dict__.get("_hyper")
        if hyper is not None and key in hyper:
            self._set_hyper(key, value)
        else:
            object.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._hyper, "lr"})

    def _set_hyper(self, name: str, value: Any) -> None:
        """Set hyperparameter `name` to a number, 0-d array, callable or schedule."""
        self._hyper.set(name, value)

    def _get_hyper(self, name: str, dtype: Any = None) -> Any:
        """The value of hyperparameter `name` (callables called), cast to `dtype` if given."""
        value = self._hyper.resolve(name, int(self._iterations.value))
        return value[()] if dtype is None else np.dtype(dtype).type(value[()])

    def _serialize_hyperparameter(self, name: str) -> Any:
        return self._hyper.serialize(name)

    def _decayed_lr(self, var_dtype: Any) -> np.generic:
        """The learning rate for this step in `var_dtype`: `lr / (1 + decay * iterations)`."""
        iterations = int(self._iterations.value)
        return decayed_learning_rate(
            self._hyper.resolve("learning_rate", iterations),
            self._hyper.resolve("decay", iterations),
            iterations,
            np.dtype(var_dtype),
        )

    # --- clipping settings -----------------------------------------------------------------
    @property
    def clipnorm(self) -> float | None:
        """Clip each gradient to this L2 norm (None: off)."""
        return self._clipping.clipnorm

    @clipnorm.setter
    def clipnorm(self, value: float | None) -> None:
        value = checks.clip_threshold(value, "clipnorm")
        checks.exclusive_clipnorms(value, self._clipping.global_clipnorm)
        self._clipping = self._clipping._replace(clipnorm=value)

    @property
    def global_clipnorm(self) -> float | None:
        """Clip all gradients together to this global L2 norm (None: off)."""
        return self._clipping.global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value: float | None) -> None:
        value = checks.clip_threshold(value, "global_clipnorm")
        checks.exclusive_clipnorms(self._clipping.clipnorm, value)
        self._clipping = self._clipping._replace(global_clipnorm=value)

    @property
    def clipvalue(self) -> float | None:
        """Clamp every gradient entry to [-clipvalue, clipvalue] (None: off)."""
        return self._clipping.clipvalue

    @clipvalue.setter
    def clipvalue(self, value: float | None) -> None:
        self._clipping = self._clipping._replace(
            clipvalue=checks.clip_threshold(value, "clipvalue")
        )

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
        array = checks.host_scalar(value, "iterations")
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

    def _track_weight(self, weight: Any) -> None:
        if not self._weights:
            self._weights.append(self._iterations)
        self._weights.append(weight)
        self._own_state = None

    def _ensure_iterations_tracked(self) -> None:
        if not self._weights:
            self._weights.append(self._iterations)
            self._own_state = None

    def _own_state_index(self) -> memory.SpanIndex:
        """Where the optimizer's own weights live, to refuse them as variables."""
        if self._own_state is None:
            self._own_state = memory.SpanIndex(
                [_backend_of_weight(w).span(w) for w in self._weights]
            )
        return self._own_state

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
        dtype = np.dtype(np.float32 if dtype is None else dtype)
        initial = _initial_value(initializer, tuple(shape), dtype, name)
        weight = Variable(initial, name=name, dtype=dtype, trainable=bool(trainable))
        self._track_weight(weight)
        return weight

    def add_slot(
        self, var: Any, slot_name: str, initializer: Any = "zeros", shape: Any = None
    ) -> Any:
        """Create (or return the existing) slot `slot_name` for `var`, beside it in memory."""
        backend = self._backend_of(var)
        backend.check_variable(var)
        slots = self._slots.get(var)
        if slots is not None and slot_name in slots:
            return slots[slot_name]
        dtype = backend.dtype(var)
        # A DTensor's slot is made for its local shard and laid out as the DTensor.
        sharded = type(var).__module__.startswith("torch.distributed")
        local = var._local_tensor if sharded else var
        slot_shape = backend.shape(local) if shape is None else tuple(shape)
        initial = _initial_value(initializer, slot_shape, dtype, slot_name)
        var_name = getattr(var, "name", None) or "variable"
        slot = backend.new_slot(local, f"{var_name}/{slot_name}", initial)
        if sharded:
            from nadam.backends import torch_shards

            slot = torch_shards.like(var, slot)
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        self._slots.add(var, slot_name, slot)
        self._track_weight(slot)
        return slot

    def _lacking_slots(self, var_list: list[Any], slot_names: tuple[str, ...]) -> list[Any]:
        """The variables of `var_list` that lack one of `slot_names` (each once)."""
        wanted, lacking, seen = set(slot_names), [], set()
        for var in var_list:
            key = variable_key(var)
            slots = self._slots.get_by_key(key)
            if (slots is None or not wanted <= slots.keys()) and key not in seen:
                seen.add(key)
                lacking.append(var)
        return lacking

    def get_slot(self, var: Any, slot_name: str) -> Any:
        """The slot `slot_name` of `var`; KeyError if it does not exist."""
        slots = self._slots.get(var)
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
        with self._lock:
            return [_backend_of_weight(w).to_numpy(w) for w in self._weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Overwrite the optimizer's state from a list as `get_weights` returns it.

        Everything is checked before anything is written: the length, every shape, that
        every entry is numeric, and the values no run can produce: `iterations` must be a
        whole number in [0, 2**63 - 1] and `momentum_cache` a number in [0, 1] (SPEC 4.8).
        Other entries are cast to the weights' dtypes, as Keras does.
        """
        with engine.exclusive_step(self._lock):
            layout, _ = self._checkpoint_layout()
            arrays = checks.weight_arrays(self._name, layout.shapes, weights)
            arrays = _restorable(layout.names, arrays, layout.dtypes, "given to set_weights")
            self._write_weights(arrays)

    def _write_weights(self, arrays: Sequence[np.ndarray]) -> None:
        """Write checked arrays into `weights`, in order (under the optimizer's lock)."""
        for param, array in zip(self._weights, arrays, strict=True):
            backend = _backend_of_weight(param)
            backend.write(param, np.asarray(array).astype(backend.dtype(param)))

    # --- checkpoints -----------------------------------------------------------------------
    def _checkpoint_layout(self) -> tuple[checkpoint.Layout, list[Any]]:
        """The name, shape and dtype of every weight, in order, and the variables it numbers.

        Names (see `nadam.checkpoint`): ``"iterations"``; a slot is ``"<slot name>/<variable
        index>"``, variables numbered in the order their first slot appears; Nadam's cache is
        ``"momentum_cache"`` (the weight of that name); any other weight is
        ``"weight/<position>"``.
        """
        for weight in self._weights:
            if type(weight).__module__.startswith("torch.distributed"):
                raise TypeError(
                    "set_weights, save_state and load_state work on whole tensors, but this "
                    "optimizer's state holds DTensor shards (its variables are sharded, e.g. "
                    "by FSDP2); get_weights() returns this rank's shards"
                )
        owners = {
            id(slot): (var, slot_name)
            for var, slots in self._slots.items()
            for slot_name, slot in slots.items()
        }
        index: dict[Any, int] = {}
        variables: list[Any] = []
        names, specs = [], []
        for position, weight in enumerate(self._weights):
            backend = _backend_of_weight(weight)
            specs.append((backend.shape(weight), backend.dtype(weight)))
            if weight is self._iterations:
                names.append(checkpoint.ITERATIONS)
            elif id(weight) in owners:
                var, slot_name = owners[id(weight)]
                key = variable_key(var)
                if key not in index:
                    index[key] = len(variables)
                    variables.append(var)
                names.append(f"{slot_name}/{index[key]}")
            elif getattr(weight, "name", None) == checkpoint.MOMENTUM_CACHE:
                names.append(checkpoint.MOMENTUM_CACHE)
            else:
                names.append(f"weight/{position}")
        infos = []
        for var in variables:
            backend = self._backend_of(var)
            name = getattr(var, "name", None)
            infos.append(checkpoint.VariableInfo(
                name if isinstance(name, str) else None, tuple(backend.shape(var)),
                backend.dtype(var).name, backend.name,
            ))
        return checkpoint.layout_of(names, specs, infos), variables

    def save_state(self, path: Any) -> None:
        """Save the optimizer's state to `path`: a safetensors file (`nadam.checkpoint`).

        The slots as tensors; iterations, momentum_cache, the config, the variables' names,
        shapes and dtypes and the weight order as JSON, with a SHA-256 over all of it. The
        write is atomic: a crash mid-save leaves the previous file at `path` intact.

        Example:
            >>> import os, tempfile
            >>> from nadam import Nadam
            >>> x = Variable([1.0, 2.0])
            >>> opt = Nadam()
            >>> opt.apply_gradients([(np.ones(2, np.float32), x)])
            1
            >>> path = os.path.join(tempfile.mkdtemp(), "opt.safetensors")
            >>> opt.save_state(path)
            >>> twin = Nadam()
            >>> twin.build([Variable([1.0, 2.0])])
            >>> twin.load_state(path)
            >>> int(twin.iterations.value)
            1
        """
        with self._lock:  # one consistent state, never half of a step
            layout, _ = self._checkpoint_layout()
            arrays = self.get_weights()
            iterations = int(self._iterations.value)
            config = self.get_config()
        cls = type(self)
        checkpoint.write(
            path, layout, arrays, iterations=iterations, face="keras",
            optimizer=f"{cls.__module__}.{cls.__qualname__}", config=config,
        )

    def load_state(self, path: Any) -> None:
        """Load a checkpoint written by `save_state` (of either face) into this optimizer.

        The checkpoint maps onto `weights` by position: build the state first
        (`build(var_list)` or a step) with the same variables in the same order. Everything
        is checked before anything is written (the file, its checksum, every name, shape
        and dtype, iterations and momentum_cache); on any error (ValueError, or
        FileNotFoundError) the optimizer is unchanged. Hyperparameters are not loaded.
        """
        saved = checkpoint.read(path)
        with engine.exclusive_step(self._lock):
            layout, _ = self._checkpoint_layout()
            arrays = saved.arrays_for(layout, f"optimizer {self._name}")
            if self._weights:
                self._write_weights(arrays)
            else:  # nothing built, nothing saved: only the counter
                _restorable(["iterations"], [np.asarray(saved.iterations)],
                            [self._iterations.dtype], "in the checkpoint")
                self._iterations.assign(np.asarray(saved.iterations, self._iterations.dtype))

    def build(self, var_list: Iterable[Any]) -> None:
        """Create the optimizer's state for `var_list` without taking a step.

        Example:
            >>> w = Variable([1.0, 2.0])
            >>> opt = Optimizer("plain")
            >>> opt.build([w]); len(opt.weights)
            1
        """
        variables = list(var_list)
        with engine.exclusive_step(self._lock):
            backends = [self._check_variable(var, p) for p, var in enumerate(variables)]
            seen: dict[Any, int] = {}
            for position, (backend, var) in enumerate(zip(backends, variables, strict=True)):
                self._check_distinct(backend, var, variable_key(var), position, seen)
            engine.check_variable_memory(
                list(zip(backends, variables, strict=True)), self._own_state_index(),
                lambda p: backends[p].describe(variables[p]),
            )
            self._create_all_weights(variables)

    def _create_all_weights(self, var_list: list[Any]) -> None:
        self._ensure_iterations_tracked()
        self._create_slots(var_list)

    # --- hooks for subclasses ----------------------------------------------------------
    def _create_slots(self, var_list: list[Any]) -> None:
        """Create the slots of each variable (subclasses)."""

    def _prepare(
        self, places: Iterable[tuple[str, np.dtype]], hypers: dict[str, np.ndarray],
        iterations: int,
    ) -> dict[Any, Any]:
        """This step's constants once per (device, dtype) among `places`: `apply_state`.

        `apply_state[HYPERS]` holds the step's resolved hyperparameters.
        """
        apply_state: dict[Any, Any] = {HYPERS: hypers}
        places = list(dict.fromkeys(places))
        context = self._step_context(places, hypers, iterations)
        if context is not None:
            apply_state[STEP_CONTEXT] = context
        for place in places:  # distinct, in order of first appearance
            apply_state[place] = {}
            self._prepare_local(place[0], place[1], apply_state)
        return apply_state

    def _step_context(
        self, places: list[tuple[str, np.dtype]], hypers: dict[str, np.ndarray], iterations: int
    ) -> engine.StepContext | None:
        """The engine's scalars for this step (subclasses driving the Nadam engine)."""
        return None

    def _prepare_local(self, var_device: str, var_dtype: np.dtype, apply_state: dict) -> None:
        hypers = apply_state.get(HYPERS)
        if hypers is not None and "learning_rate" in hypers:
            apply_state[(var_device, var_dtype)]["lr_t"] = decayed_learning_rate(
                hypers["learning_rate"], hypers["decay"],
                int(self._iterations.value), np.dtype(var_dtype),
            )
        elif "learning_rate" in self._hyper:
            apply_state[(var_device, var_dtype)]["lr_t"] = self._decayed_lr(var_dtype)

    def _resource_apply_dense(self, grad: Any, var: Any, apply_state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement dense updates")

    def _resource_apply_sparse(
        self, grad: Any, var: Any, indices: Any, apply_state: dict
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement sparse updates")

    def _resource_apply_sparse_duplicate_indices(
        self, grad: Any, var: Any, indices: Any, **kwargs: Any
    ) -> None:
        """Sum repeated indices, then `_resource_apply_sparse` (with `apply_state` if given)."""
        backend = self._backend_of(var)
        unique = backend.dedupe(SparseGrad(grad, indices))
        self._resource_apply_sparse(unique.values, var, unique.indices, **kwargs)

    def _dense_hook(self, update: engine.Update, apply_state: dict) -> None:
        """`_resource_apply_dense`, given `apply_state` only if it takes one (as TF 2.3)."""
        if _takes_apply_state(type(self)._resource_apply_dense):
            self._resource_apply_dense(update.grad.array, update.var, apply_state)
        else:
            self._resource_apply_dense(update.grad.array, update.var)

    def _sparse_hook(self, update: engine.Update, apply_state: dict) -> None:
        """`_resource_apply_sparse_duplicate_indices` with the gradient as given."""
        kwargs = (
            {"apply_state": apply_state}
            if _takes_apply_state(type(self)._resource_apply_sparse) else {}
        )
        self._resource_apply_sparse_duplicate_indices(
            update.grad.values, update.var, update.grad.indices, **kwargs
        )

    def _apply_updates(self, updates: list[engine.Update], apply_state: dict) -> None:
        """Update every variable: Keras's per-variable hooks (subclasses may fuse)."""
        for update in updates:
            if isinstance(update.grad, SparseGrad):
                self._sparse_hook(update, apply_state)
            else:
                self._dense_hook(update, apply_state)

    def _check_step(
        self, places: list[tuple[str, np.dtype]], hypers: dict[str, np.ndarray]
    ) -> None:
        """Checks of a step that need its hyperparameters and the variables' (device, dtype)
        places together (subclasses); they run before anything changes."""

    def _commit(self, apply_state: dict) -> None:
        """Write what the step computed beside the variables (subclasses: Nadam's cache)."""

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
        first; then clipping applies; then the update; then `iterations += 1`. Nothing
        changes unless the whole step succeeds; one optimizer's steps run one at a time.
        """
        items = self._pair_list(grads_and_vars)
        with engine.exclusive_step(self._lock):
            iterations = int(self._iterations.value)
            step = self._checked_updates(items)
            updates = step.updates
            hypers = self._hyper.resolve_all(iterations)
            self._check_step(step.places, hypers)
            if experimental_aggregate_gradients and (
                not step.numpy_only or _overrides_aggregation(self)
            ):
                self._aggregate(updates)
            if self._clipping != engine.NO_CLIPPING:
                engine.clip(updates, (self._clipping,), _sum_shard_partials)
            # The commit: nothing below can fail on user input.
            if step.needs_state or not self._weights:
                self._create_all_weights([
                    update.var if update.sharding is None else update.sharding.whole
                    for update in updates
                ])
            apply_state = self._prepare(step.places, hypers, iterations)
            if step.constrained:
                saved = _snapshot(updates)
                self._apply_updates(updates, apply_state)
                _apply_constraints(step.constrained, saved)
            else:
                self._apply_updates(updates, apply_state)
            self._commit(apply_state)
            self._iterations.assign(np.int64(iterations + 1))
        return iterations + 1

    def _backend_of(self, var: Any, position: int | None = None) -> Backend:
        backend = backend_for(var)
        if backend is None:
            where = f" at position {position}" if position is not None else ""
            raise TypeError(
                f"Variable{where} of type {type(var).__name__} is not something nadam can "
                "train: expected a nadam.Variable, a writable NumPy array or a torch tensor"
            )
        return backend

    def _check_variable(self, var: Any, position: int) -> Backend:
        backend = self._backend_of(var, position)
        backend.check_variable(var)
        if self._slots.changed_in_place(var, variable_key(var)):
            raise ValueError(
                f"Variable {backend.describe(var)} was reshaped or re-typed in place after the "
                "optimizer made its slots; give it back its shape and dtype, or pass a new "
                "array"
            )
        return backend

    @staticmethod
    def _check_distinct(
        backend: Backend, var: Any, key: Any, position: int, seen: dict[Any, int]
    ) -> None:
        if key in seen:
            raise ValueError(
                f"Variable {backend.describe(var)} appears twice (positions {seen[key]} "
                f"and {position}); pass it once with the sum of its gradients"
            )
        seen[key] = position

    @staticmethod
    def _pair_list(grads_and_vars: Iterable[tuple[Any, Any]]) -> list[Any]:
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
        return items

    def _checked_updates(self, items: list[Any]) -> _CheckedStep:
        """Every pair checked (variable, gradient, slots, memory) before anything changes.

        A variable unchanged since the previous step (same object, same memory, same shape,
        dtype and flags) keeps what that step learned about it (`engine.VariableMemo`), and
        the same variables as in the previous step need no pairwise comparison.
        """
        memo = self._memo
        known_variables: list[engine.KnownVariable] = []
        with_gradients: list[engine.KnownVariable] = []
        updates: list[engine.Update] = []
        missing: list[str] = []
        constrained: list[tuple[engine.Update, Any]] = []
        needs_state = False
        for position, item in enumerate(items):
            if (type(item) is not tuple or len(item) != 2) and (
                not isinstance(item, tuple | list) or len(item) != 2
            ):
                raise TypeError(
                    f"Item {position} of grads_and_vars is not a (gradient, variable) pair: "
                    f"{item!r}"
                )
            grad, var = item
            sharding = None
            known = memo.recall(var)
            if known is None:
                if type(var).__module__.startswith("torch.distributed"):  # a DTensor
                    # The engine steps its local shard, which the memo knows it by.
                    backend = self._check_variable(var, position)
                    sharding, var, grad = _local_shard(var, grad)
                    known = memo.recall(var) or memo.learn(backend, var, variable_key(var))
                    known.update.sharding = sharding
                else:
                    known = memo.learn(self._check_variable(var, position), var,
                                       variable_key(var))
            known_variables.append(known)
            backend = known.backend
            if grad is None:
                missing.append(backend.describe(var))
                continue
            update = known.update
            update.grad = backend.gradient(grad, var)
            if known.m is None:
                slots = self._slots.get(var if sharding is None else sharding.whole)
                if slots:
                    update.m = slots["m"] if "m" in slots else next(iter(slots.values()))
                    update.v = slots.get("v")
                    if sharding is not None:  # the engine steps the local shards
                        update.m, update.v = _local_slot(update.m), _local_slot(update.v)
                    engine.check_slots_fit(update, lambda b=backend, v=var: b.describe(v))
                    known.m = update.m  # they fit while `var` is unchanged
                else:
                    needs_state = True
            # A constraint is read at every step (it may be set or removed between steps).
            constraint = var.constraint if type(var) is Variable else (
                None if type(var) is np.ndarray else getattr(var, "constraint", None)
            )
            if constraint is not None:
                constrained.append(_checked_constraint(update, constraint))
            updates.append(update)
            with_gradients.append(known)
        same = memo.same_variables(known_variables)
        if not same:
            seen: dict[Any, int] = {}
            for position, known in enumerate(known_variables):
                self._check_distinct(known.backend, known.var, known.key, position, seen)
        if not updates:
            raise ValueError(f"No gradients provided for any variable: [{', '.join(missing)}].")
        index = memo.variable_index(
            with_gradients, self._own_state_index(),
            lambda p: with_gradients[p].backend.describe(with_gradients[p].var),
        )
        engine.copy_aliased_gradients(updates, index)
        memo.remember(known_variables)
        cached = self._step_layout
        if cached is not None and len(cached[0]) == len(updates) and all(
            map(operator.is_, updates, cached[0])
        ):
            places, numpy_only = cached[1], cached[2]
        else:  # an Update keeps its variable's device and dtype: recomputed on a new layout
            places = list(dict.fromkeys((update.device, update.dtype) for update in updates))
            numpy_only = all(update.backend is NUMPY_BACKEND for update in updates)
            self._step_layout = (list(updates), places, numpy_only)
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables [{', '.join(missing)}] when minimizing "
                "the loss.",
                UserWarning,
                stacklevel=3,
            )
        return _CheckedStep(updates, places, numpy_only, constrained, needs_state)

    def _aggregate(self, updates: list[engine.Update]) -> None:
        """Sum gradients across data-parallel replicas, one collective call per backend."""
        if not _overrides_aggregation(self):
            _all_reduce(updates)  # NumPy arrays live in one process: nothing to sum for them
            return
        # A subclass's TF 2.3 hook sees the gradients as given and returns them; what it
        # returns is checked like any gradient, before anything changes.
        pairs = [(_as_given(update), update.var) for update in updates]
        result = list(self._aggregate_gradients(pairs))
        if len(result) != len(updates):
            raise ValueError(
                f"_aggregate_gradients returned {len(result)} pairs for {len(updates)} variables"
            )
        for position, (update, item) in enumerate(zip(updates, result, strict=True)):
            grad, var = item
            if var is not update.var:
                raise ValueError(
                    f"_aggregate_gradients changed the variable at position {position}"
                )
            update.grad = update.backend.gradient(grad, var)

    def _aggregate_gradients(self, grads_and_vars: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Sum gradients across replicas (TF 2.3's hook); identity outside data parallelism.

        Takes and returns (gradient, variable) pairs, gradients as given to
        `apply_gradients` (arrays, tensors, `IndexedSlices`).
        """
        updates = [
            engine.Update(backend, var, backend.gradient(grad, var), None, "")
            for grad, var in grads_and_vars
            for backend in (self._backend_of(var),)
        ]
        _all_reduce(updates)
        return [(_as_given(update), update.var) for update in updates]

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
        for key, value in self._clipping._asdict().items():
            if value is not None:
                config[key] = value
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


def _backend_of_weight(weight: Any) -> Backend:
    backend = backend_for(weight)
    if backend is None:  # pragma: no cover - weights are created by backends
        raise TypeError(f"Unsupported optimizer weight {weight!r}")
    return backend


def _restorable(
    names: Sequence[str], arrays: list[np.ndarray], dtypes: Sequence[np.dtype], source: str
) -> list[np.ndarray]:
    """`arrays` after checking the values no run can produce (SPEC 4.8): `iterations` a
    whole number that fits its dtype, `momentum_cache` a number in [0, 1]."""
    arrays = list(arrays)
    for position, (name, dtype) in enumerate(zip(names, dtypes, strict=True)):
        if name == "iterations":
            what = f"iterations (weight {position} {source})"
            count = checks.iteration_count(np.asarray(arrays[position]).item(), what)
            dtype = np.dtype(dtype)
            if count > np.iinfo(dtype).max:
                raise ValueError(f"Expected {what} to fit in {dtype}, received: {count}")
            arrays[position] = np.asarray(count, dtype=dtype)
        elif name == "momentum_cache":
            checks.momentum_cache(
                np.asarray(arrays[position]).item(), f"momentum_cache (weight {position} {source})"
            )
    return arrays


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


@functools.lru_cache(maxsize=64)
def _takes_apply_state(hook: Callable[..., Any]) -> bool:
    """Whether a Keras hook accepts `apply_state` (TF 2.3 looks at the signature)."""
    return "apply_state" in inspect.signature(hook).parameters


def _local_shard(var: Any, grad: Any) -> tuple[Any, Any, Any]:
    """(sharding, local shard, local gradient) of a DTensor variable, whose checks passed; the
    engine steps the shard (`nadam.backends.torch_shards`)."""
    from nadam.backends import torch_shards

    sharding = torch_shards.sharding_of(var)
    if grad is not None:
        grad = torch_shards.local_gradient(grad, sharding)
    return sharding, var._local_tensor, grad


def _local_slot(slot: Any) -> Any:
    return slot if slot is None else slot._local_tensor


def _sum_shard_partials(shardings: Sequence[Any], partials: Sequence[Any]) -> list[Any]:
    from nadam.backends import torch_shards  # only sharded (torch) variables get here

    return torch_shards.sum_partials(shardings, partials)


def _all_reduce(updates: Sequence[engine.Update]) -> None:
    by_backend: dict[str, list[engine.Update]] = {}
    for update in updates:
        if update.sharding is not None:
            continue  # a DTensor's gradient is its own already (FSDP2 reduce-scattered it)
        by_backend.setdefault(update.backend.name, []).append(update)
    for members in by_backend.values():
        reduced = members[0].backend.all_reduce_sum([update.grad for update in members])
        for update, grad in zip(members, reduced, strict=True):
            update.grad = grad


def _as_given(update: engine.Update) -> Any:
    """A checked gradient in the form `apply_gradients` takes: an array or `IndexedSlices`."""
    grad = update.grad
    if isinstance(grad, SparseGrad):
        return IndexedSlices(grad.values, grad.indices, update.backend.shape(update.var))
    return grad.array


@dataclass(slots=True)
class _CheckedStep:
    """A step's checked updates and what the commit needs to know about them."""

    updates: list[engine.Update]
    places: list[tuple[str, np.dtype]]  # distinct (device, dtype), in order of appearance
    numpy_only: bool
    constrained: list[tuple[engine.Update, Any]]
    needs_state: bool  # some variable has no slots yet


def _overrides_aggregation(optimizer: Optimizer) -> bool:
    return type(optimizer)._aggregate_gradients is not Optimizer._aggregate_gradients


def _checked_constraint(update: engine.Update, constraint: Any) -> tuple[engine.Update, Any]:
    """A constraint with a sparse gradient is a RuntimeError, as in TF 2.3 and tf_keras (the
    constraint would re-assign the whole variable), raised before anything changes."""
    if isinstance(update.grad, SparseGrad):
        raise RuntimeError(
            "Cannot use a constraint function on a sparse variable: variable "
            f"{update.backend.describe(update.var)} has a constraint and a sparse gradient"
        )
    return update, constraint


def _snapshot(updates: Sequence[engine.Update]) -> list[tuple[Backend, Any, np.ndarray]]:
    """Copies of every variable and slot of a step, to undo it if a constraint fails."""
    saved = []
    for update in updates:
        for target in (update.var, update.m, update.v):
            if target is not None:
                saved.append((update.backend, target, update.backend.to_numpy(target)))
    return saved


def _apply_constraints(
    constrained: Sequence[tuple[engine.Update, Any]],
    saved: Sequence[tuple[Backend, Any, np.ndarray]],
) -> None:
    """`var.assign(constraint(var))` for each constrained variable, as TF 2.3 after its update.

    Every constraint runs and its result is checked before any is written; if one fails, the
    step's updates are undone and the error names the variable.
    """
    try:
        results = []
        for update, constraint in constrained:
            backend, var = update.backend, update.var
            value = constraint(var)
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach()
            shape = tuple(np.shape(value))
            if shape != backend.shape(var):
                raise ValueError(
                    f"The constraint of variable {backend.describe(var)} returned shape "
                    f"{shape}, but the variable has shape {backend.shape(var)}"
                )
            results.append((backend, var, value))
    except BaseException:
        for backend, target, array in saved:
            backend.write(target, array)
        raise
    for backend, var, value in results:
        backend.write(var, value.value if isinstance(value, Variable) else value)
