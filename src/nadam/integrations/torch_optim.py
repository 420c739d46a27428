"""Keras 2's Nadam as a `torch.optim.Optimizer`: param groups, `step`, `state_dict`, schedulers.

This is a second face of the engine behind `nadam.Nadam`: the same tensor checks and gradient
forms (`nadam.backends.torch`), clipping (`nadam.clipping`), per-step scalars
(`nadam.nadam.nadam_scalars`) and kernels (`nadam.kernels.select`), driven the torch.optim
way. With one param group its steps equal `nadam.Nadam`'s and Keras 2's, bit for bit.

How Keras's state maps onto torch.optim's:

- `iterations` and `momentum_cache` are one per optimizer, as in Keras: they live in
  `optimizer.state["nadam"]` as 0-d CPU tensors (`iterations` int64; `momentum_cache` in the
  dtype of the first parameter ever updated). Every `step()` that updates at least one
  parameter advances both once, whichever groups take part.
- Hence the momentum schedule `mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t))` is
  one per optimizer too: `betas[0]` and `schedule_decay` must be equal in all groups (checked
  at every step). `lr`, `betas[1]`, `eps`, `decay` and the clipping settings may differ per
  group.
- `optimizer.state[param]` holds `"m"` and `"v"`, the Keras slots, and `"round"`: the number
  of the step (0, 1, ...) that created them, counting only steps that created slots.
- `get_weights()` returns them in Keras's `get_weights()` order: `[iterations,
  momentum_cache, m(p1..pn), v(p1..pn)]` for the parameters of the first round, in
  param-group order, then the m's and v's of each later round (Keras appends the slots of
  variables first seen in a later call the same way); `set_weights()` takes that list back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from nadam import clipping, kernels
from nadam.backends.base import DenseGrad, SparseGrad
from nadam.backends.torch import TORCH_BACKEND
from nadam.nadam import nadam_scalars
from nadam.optimizer import Optimizer as _KerasOptimizer
from nadam.optimizer import checked_weight_arrays

__all__ = ["Nadam"]

_SCHEDULE_KEY = "nadam"  # optimizer.state[_SCHEDULE_KEY]: iterations and momentum_cache


@dataclass(frozen=True)
class _GroupHypers:
    """A param group's hyperparameters, checked, as plain Python numbers."""

    lr: float
    beta_1: float
    beta_2: float
    eps: float
    schedule_decay: float
    decay: float
    clipnorm: float | None
    clipvalue: float | None
    global_clipnorm: float | None


def _number(value: Any, name: str, low: float, high: float, high_inclusive: bool) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    in_range = low <= number and (number <= high if high_inclusive else number < high)
    if math.isnan(number) or not in_range:
        upper = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{upper}, received: {value!r}")
    return number


def _group_hypers(group: dict[str, Any], where: str) -> _GroupHypers:
    """Check one group's settings; errors name the group and the setting."""
    try:
        betas = group["betas"]
        if isinstance(betas, torch.Tensor) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta_1, beta_2), got {betas!r}")
        clipnorm = _KerasOptimizer._checked_clip("clipnorm", group["clipnorm"])
        global_clipnorm = _KerasOptimizer._checked_clip(
            "global_clipnorm", group["global_clipnorm"]
        )
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={clipnorm}, `global_clipnorm`={global_clipnorm}."
            )
        eps = group["eps"]
        return _GroupHypers(
            lr=_number(group["lr"], "lr", 0.0, math.inf, True),
            beta_1=_number(betas[0], "betas[0]", 0.0, 1.0, False),
            beta_2=_number(betas[1], "betas[1]", 0.0, 1.0, False),
            # As Keras: an epsilon of None or 0 means 1e-7.
            eps=(_number(eps, "eps", 0.0, math.inf, True) or 1e-7) if eps is not None else 1e-7,
            schedule_decay=_number(group["schedule_decay"], "schedule_decay", 0.0, math.inf, True),
            decay=_number(group["decay"], "decay", 0.0, math.inf, True),
            clipnorm=clipnorm,
            clipvalue=_KerasOptimizer._checked_clip("clipvalue", group["clipvalue"]),
            global_clipnorm=global_clipnorm,
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None


def _check_shared_schedule(hypers: Sequence[_GroupHypers]) -> None:
    """The momentum schedule is one per optimizer: beta_1 and schedule_decay must agree."""
    first = hypers[0]
    for index, hyper in enumerate(hypers[1:], start=1):
        for name, ours, theirs in (
            ("betas[0]", hyper.beta_1, first.beta_1),
            ("schedule_decay", hyper.schedule_decay, first.schedule_decay),
        ):
            if ours != theirs:
                raise ValueError(
                    f"param_groups[{index}] has {name}={ours!r} but param_groups[0] has "
                    f"{theirs!r}: the momentum schedule (and its momentum_cache) is one per "
                    "optimizer, as in Keras, so betas[0] and schedule_decay must be equal in "
                    "every group"
                )


def _decayed_lr(hyper: _GroupHypers, dtype: np.dtype, iterations: int) -> np.generic:
    # As Optimizer._decayed_lr: numbers go through float32 (Keras's hyper variables), then the
    # variable's dtype; time-inverse decay over the global step.
    lr_t = dtype.type(np.float32(hyper.lr))
    decay_t = dtype.type(np.float32(hyper.decay))
    if decay_t > 0:
        lr_t = lr_t / (dtype.type(1) + decay_t * dtype.type(iterations))
    return lr_t


@dataclass(slots=True)
class _Entry:
    """One parameter to update this step: where it is, its group and its checked gradient."""

    group: int
    param: torch.Tensor
    grad: DenseGrad | SparseGrad


class Nadam(torch.optim.Optimizer):
    """Keras 2's Nadam (`tf_keras.optimizers.legacy.Nadam`) as a `torch.optim.Optimizer`.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        lr: learning rate (Keras's `learning_rate`).
        betas: `(beta_1, beta_2)`; `beta_1` must be the same in every group.
        eps: added to the bias-corrected root of `v` (Keras's `epsilon`; 0 or None: 1e-7).
        schedule_decay: the momentum schedule constant (Keras 2's hidden 0.004); the same in
            every group.
        decay: time-inverse learning-rate decay, `lr / (1 + decay * iterations)`.
        clipnorm, clipvalue, global_clipnorm: Keras's gradient clipping, applied inside
            `step()`. The global norm is taken over the gradients of every group that shares
            the same `global_clipnorm`.

    Gradients may be dense or sparse COO (from `nn.Embedding(sparse=True)`; Keras's sparse
    semantics). Parameters whose `.grad` is None are skipped; a step with no gradient at all
    changes nothing. It does not all-reduce: under DistributedDataParallel the gradients are
    already averaged when `step()` runs.

    Example:
        >>> import torch
        >>> from nadam.torch import Nadam
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        >>> opt = Nadam([w], lr=1e-3)
        >>> w.grad = torch.tensor([0.1, -0.5, 2.0])
        >>> opt.step()
        >>> w.detach()
        tensor([ 0.9989, -1.9989,  2.9989])
        >>> [a.shape for a in opt.get_weights()]  # iterations, momentum_cache, m, v
        [(), (), (3,), (3,)]
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        schedule_decay: float = 4e-3,
        decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "schedule_decay": schedule_decay,
            "decay": decay,
            "clipnorm": clipnorm,
            "clipvalue": clipvalue,
            "global_clipnorm": global_clipnorm,
        }
        _group_hypers(defaults, "defaults")
        super().__init__(params, defaults)

    # --- param groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch.optim semantics), after checking its settings and tensors."""
        if isinstance(param_group, dict) and "params" in param_group:
            where = f"param_groups[{len(self.param_groups)}]"
            merged = {**self.defaults, **param_group}
            hyper = _group_hypers(merged, where)
            if self.param_groups:
                _check_shared_schedule([_group_hypers(self.param_groups[0], "param_groups[0]"),
                                        hyper])
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            param_group["params"] = params  # a generator must not be consumed twice
            seen: set[int] = set()
            for position, param in enumerate(params):
                tensor = param[1] if isinstance(param, tuple) else param
                if not isinstance(tensor, torch.Tensor):
                    continue  # torch.optim raises its own TypeError
                name = f"{where}['params'][{position}]"
                _checked(name, TORCH_BACKEND.check_tensor, tensor)
                if not (tensor.is_leaf or tensor.retains_grad):
                    raise ValueError(
                        f"{name} {TORCH_BACKEND.describe(tensor)} is not a leaf tensor; "
                        "optimize the leaf parameters themselves"
                    )
                if id(tensor) in seen:
                    raise ValueError(
                        f"{name} {TORCH_BACKEND.describe(tensor)} appears twice in the group"
                    )
                seen.add(id(tensor))
        super().add_param_group(param_group)

    # --- global state ------------------------------------------------------------------------
    def _schedule(self) -> dict[str, torch.Tensor]:
        return self.state.setdefault(_SCHEDULE_KEY, {"iterations": torch.tensor(0)})

    @property
    def iterations(self) -> int:
        """How many steps have updated parameters (Keras's `iterations`)."""
        return int(self._schedule()["iterations"])

    @property
    def momentum_cache(self) -> float | None:
        """The running product of the momentum schedule; None before the first update."""
        cache = self._schedule().get("momentum_cache")
        return None if cache is None else float(cache)

    def _params_with_state(self) -> list[torch.Tensor]:
        """Parameters with slots in Keras's order: by creation round, then as in the groups."""
        flat = [p for group in self.param_groups for p in group["params"]]
        with_state = [p for p in flat if "m" in self.state.get(p, {})]
        position = {id(p): index for index, p in enumerate(flat)}
        return sorted(with_state, key=lambda p: (self.state[p]["round"], position[id(p)]))

    def _create_state(self, params: Sequence[torch.Tensor]) -> None:
        """Keras's order: the momentum cache (once), then m and v of each new parameter.

        Each parameter remembers the round in which its slots were made: Keras lists the m's
        and then the v's of each round, rounds in order.
        """
        schedule = self._schedule()
        if "momentum_cache" not in schedule and params:
            schedule["momentum_cache"] = torch.ones((), dtype=params[0].dtype)
        new = [p for p in params if "m" not in self.state.get(p, {})]
        if not new:
            return
        rounds = [self.state[p]["round"] for p in self._params_with_state()]
        this_round = max(rounds, default=-1) + 1
        for param in new:
            zeros = np.zeros(tuple(param.shape), TORCH_BACKEND.dtype(param))
            self.state[param] = {
                "m": TORCH_BACKEND.new_slot(param, "m", zeros),
                "v": TORCH_BACKEND.new_slot(param, "v", zeros),
                "round": this_round,
            }

    # --- the step --------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one Nadam step to every parameter that has a gradient; returns the loss.

        Everything is checked first (settings, tensors, gradients); on an error nothing has
        changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def _collect(self) -> list[_Entry]:
        entries = []
        for index, group in enumerate(self.param_groups):
            for position, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                where = partial(_param_name, index, position)
                checked = _checked(where, _checked_gradient, param, grad)
                entries.append(_Entry(index, param, checked))
        return entries

    def _clip(self, entries: list[_Entry], hypers: Sequence[_GroupHypers]) -> None:
        for entry in entries:
            hyper = hypers[entry.group]
            if hyper.clipvalue is not None:
                entry.grad = clipping.clip_by_value(TORCH_BACKEND, entry.grad, hyper.clipvalue)
            if hyper.clipnorm is not None:
                entry.grad = clipping.clip_by_norm(TORCH_BACKEND, entry.grad, hyper.clipnorm)
        by_threshold: dict[float, list[_Entry]] = {}
        for entry in entries:
            threshold = hypers[entry.group].global_clipnorm
            if threshold is not None:
                by_threshold.setdefault(threshold, []).append(entry)
        for threshold, members in by_threshold.items():
            clipped = clipping.clip_by_global_norm(
                [(TORCH_BACKEND, entry.grad) for entry in members], threshold
            )
            for entry, grad in zip(members, clipped, strict=True):
                entry.grad = grad

    def _step(self) -> None:
        hypers = [
            _group_hypers(group, f"param_groups[{index}]")
            for index, group in enumerate(self.param_groups)
        ]
        _check_shared_schedule(hypers)
        entries = self._collect()
        if not entries:
            return  # as torch.optim: no gradient, no step (the schedule does not advance)
        self._clip(entries, hypers)
        # Commit: nothing below can fail on user input.
        self._create_state([entry.param for entry in entries])
        schedule = self._schedule()
        iterations = int(schedule["iterations"])
        cache = schedule["momentum_cache"]
        cache_read = cache.numpy()[()]
        groups: dict[tuple[int, str, np.dtype], list[_Entry]] = {}
        for entry in entries:
            key = (entry.group, str(entry.param.device), TORCH_BACKEND.dtype(entry.param))
            groups.setdefault(key, []).append(entry)
        for (group, device, dtype), members in groups.items():
            hyper = hypers[group]
            scalars, _ = nadam_scalars(
                dtype, iterations, cache_read,
                lr=_decayed_lr(hyper, dtype, iterations),
                beta_1=hyper.beta_1, beta_2=hyper.beta_2,
                epsilon=hyper.eps, schedule_decay=hyper.schedule_decay,
            )
            self._apply(device, dtype, members, scalars)
        # The cache advances once per step, in its own dtype, as in Keras.
        _, prod = nadam_scalars(
            cache.numpy().dtype, iterations, cache_read,
            beta_1=hypers[0].beta_1, schedule_decay=hypers[0].schedule_decay,
        )
        cache.fill_(float(prod))
        schedule["iterations"].add_(1)

    def _apply(
        self, device: str, dtype: np.dtype, members: list[_Entry], scalars: Any
    ) -> None:
        kernel = kernels.select(TORCH_BACKEND, device, dtype)
        dense = [entry for entry in members if isinstance(entry.grad, DenseGrad)]
        if dense:
            kernel.dense(
                TORCH_BACKEND,
                [entry.param for entry in dense],
                [entry.grad.array for entry in dense],
                [self.state[entry.param]["m"] for entry in dense],
                [self.state[entry.param]["v"] for entry in dense],
                scalars,
            )
        for entry in members:
            if isinstance(entry.grad, SparseGrad):
                unique = TORCH_BACKEND.dedupe(entry.grad)
                state = self.state[entry.param]
                kernel.sparse(
                    TORCH_BACKEND, entry.param, unique.values, unique.indices,
                    state["m"], state["v"], scalars,
                )

    # --- Keras layout ----------------------------------------------------------------------
    def build(self) -> None:
        """Create the state of every parameter (Keras's `build`) without taking a step.

        So that `set_weights` can load a saved Keras state before training.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        for index, group in enumerate(self.param_groups):
            for position, param in enumerate(group["params"]):
                _checked(
                    _param_name(index, position),
                    TORCH_BACKEND.check_tensor, param,
                )
        self._create_state(params)

    def get_weights(self) -> list[np.ndarray]:
        """NumPy copies of the state in Keras's order: iterations, momentum_cache, m's, v's."""
        return [TORCH_BACKEND.to_numpy(t) for t in self._keras_weights()]

    def _keras_weights(self) -> list[torch.Tensor]:
        schedule = self._schedule()
        if "momentum_cache" not in schedule:
            return []
        weights = [schedule["iterations"], schedule["momentum_cache"]]
        params = self._params_with_state()
        for this_round in sorted({self.state[p]["round"] for p in params}):
            members = [p for p in params if self.state[p]["round"] == this_round]
            weights += [self.state[p]["m"] for p in members]
            weights += [self.state[p]["v"] for p in members]
        return weights

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load a list as `get_weights` (or Keras's `get_weights`) returns it.

        The length and every shape are checked before anything is written.
        """
        targets = self._keras_weights()
        arrays = checked_weight_arrays(
            "Nadam", [tuple(target.shape) for target in targets], weights
        )
        for target, array in zip(targets, arrays, strict=True):
            target.copy_(torch.from_numpy(np.array(array, order="C")))

    # --- checkpoints -------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's `load_state_dict`, checked first and copying the loaded tensors.

        Unlike torch's built-in optimizers the state is copied, so one state dict can seed
        several optimizers without them sharing slots.
        """
        self._check_state_dict(state_dict)
        super().load_state_dict(state_dict)
        for key, value in list(self.state.items()):
            self.state[key] = {
                name: tensor.clone() if isinstance(tensor, torch.Tensor) else tensor
                for name, tensor in value.items()
            }

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict["param_groups"]
        for index, group in enumerate(saved_groups):
            _group_hypers({**self.defaults, **group}, f"loaded param_groups[{index}]")
        ids = [i for group in saved_groups for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        by_id = dict(zip(ids, params, strict=False))
        for key, value in state_dict["state"].items():
            if key == _SCHEDULE_KEY:
                iterations = value.get("iterations")
                if not isinstance(iterations, torch.Tensor) or iterations.dtype != torch.int64:
                    raise ValueError(
                        f"loaded state['{_SCHEDULE_KEY}']['iterations'] must be an int64 "
                        f"tensor, got {iterations!r}"
                    )
                continue
            param = by_id.get(key)
            if param is None or not value:
                continue  # torch.optim keeps unknown entries as they are
            if not isinstance(value.get("round"), int):
                raise ValueError(
                    f"loaded state for parameter {key} has no integer 'round' (the Keras slot "
                    f"order); got keys {sorted(value)}"
                )
            for slot in ("m", "v"):
                tensor = value.get(slot)
                if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(
                    param.shape
                ):
                    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
                    raise ValueError(
                        f"loaded state for parameter {key} has {slot} of shape "
                        f"{shape}, but the parameter "
                        f"{TORCH_BACKEND.describe(param)} has shape {tuple(param.shape)}"
                    )


def _checked(where: str | Callable[[], str], check: Callable[..., Any], *args: Any) -> Any:
    """Run a backend check; its error, if any, also says which parameter it is about.

    `where` may be a function that names the parameter, so that a step over many parameters
    only formats a name for the one that fails.
    """
    try:
        return check(*args)
    except (TypeError, ValueError, IndexError) as error:
        name = where() if callable(where) else where
        raise type(error)(f"{name}: {error}") from None


def _param_name(group: int, position: int) -> str:
    return f"param_groups[{group}]['params'][{position}]"


def _checked_gradient(param: torch.Tensor, grad: Any) -> DenseGrad | SparseGrad:
    TORCH_BACKEND.check_tensor(param)
    return TORCH_BACKEND.gradient(grad, param)
