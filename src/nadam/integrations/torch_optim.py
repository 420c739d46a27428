"""Keras 2's Nadam as a `torch.optim.Optimizer`: param groups, `step`, `state_dict`, schedulers.

This is a second face of the step engine behind `nadam.Nadam` (`nadam.engine`: checks,
clipping, the step's scalars, kernels, commit), fed the torch.optim way: param groups become the
engine's groups. With one param group its steps equal `nadam.Nadam`'s and Keras 2's, bit for
bit.

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
- DTensor parameters (FSDP2's `fully_shard`): the engine steps each rank's local shard, and
  `m` and `v` are DTensors laid out as their parameter (`nadam.backends.torch_shards`). In a
  multi-process run `state_dict()` copies the schedule into every parameter's entry
  (`"nadam_schedule"`) for ZeroRedundancyOptimizer and torch.distributed.checkpoint, which
  keep only those entries (see `state_dict`).
"""

from __future__ import annotations

import numbers
import operator
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from nadam import checkpoint, checks, engine
from nadam.backends import torch_shards
from nadam.backends.torch import TORCH_BACKEND
from nadam.integrations import torch_in_backward

__all__ = ["Nadam"]

_SCHEDULE_KEY = "nadam"  # optimizer.state[_SCHEDULE_KEY]: iterations and momentum_cache
_PLAIN_TENSORS = frozenset((torch.Tensor, torch.nn.Parameter))
# In a multi-process run, state_dict() also puts a copy of the schedule in each parameter's
# entry: tools that split a state dict by parameter (ZeroRedundancyOptimizer,
# torch.distributed.checkpoint) keep only those entries.
_SCHEDULE_COPY = "nadam_schedule"
_FLOAT_BITS = {16: torch.float16, 32: torch.float32, 64: torch.float64}
_SETTING_NAMES = (
    "lr", "betas", "eps", "schedule_decay", "decay", "clipnorm", "clipvalue", "global_clipnorm",
)


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

    def for_engine(self) -> tuple[engine.Hypers, engine.Clipping]:
        """The engine's view: numbers rounded through float32 as Keras's hyper variables."""
        return (
            engine.Hypers.of(self.lr, self.beta_1, self.beta_2, self.eps, self.decay,
                             self.schedule_decay),
            engine.Clipping(self.clipvalue, self.clipnorm, self.global_clipnorm),
        )


def _group_hypers(group: dict[str, Any], where: str) -> _GroupHypers:
    """Check one group's settings; errors name the group and the setting."""
    try:
        betas = group["betas"]
        if isinstance(betas, torch.Tensor) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta_1, beta_2), got {betas!r}")
        clipnorm = checks.clip_threshold(group["clipnorm"], "clipnorm")
        global_clipnorm = checks.clip_threshold(group["global_clipnorm"], "global_clipnorm")
        checks.exclusive_clipnorms(clipnorm, global_clipnorm)
        return _GroupHypers(
            lr=checks.real_number(group["lr"], "lr", checks.NON_NEGATIVE),
            beta_1=checks.real_number(betas[0], "betas[0]", checks.UNIT_INTERVAL),
            beta_2=checks.real_number(betas[1], "betas[1]", checks.UNIT_INTERVAL),
            eps=checks.epsilon(group["eps"], "eps"),
            schedule_decay=checks.real_number(
                group["schedule_decay"], "schedule_decay", checks.NON_NEGATIVE
            ),
            decay=checks.real_number(group["decay"], "decay", checks.FINITE_NON_NEGATIVE),
            clipnorm=clipnorm,
            clipvalue=checks.clip_threshold(group["clipvalue"], "clipvalue"),
            global_clipnorm=global_clipnorm,
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None


def _immutable(value: Any) -> bool:
    if type(value) is tuple:
        return all(type(item) in (float, int) for item in value)
    return value is None or type(value) in (float, int)


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
        in_backward: step each parameter inside `backward()` as soon as its gradient is
            accumulated, and free that gradient (one backward is one step; `step()` then
            updates nothing). `global_clipnorm` cannot be used so. See
            `nadam.integrations.torch_in_backward`.

    Gradients may be dense or sparse COO (from `nn.Embedding(sparse=True)`; Keras's sparse
    semantics). Parameters whose `.grad` is None are skipped; a step with no gradient at all
    changes nothing. It does not all-reduce: under DistributedDataParallel the gradients are
    already averaged when `step()` runs. DTensor parameters (FSDP2) are stepped shard by shard
    on each rank; only `clipnorm` / `global_clipnorm` communicate (one all_reduce per step).

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
        in_backward: bool = False,
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
        self._nadam_in_backward: torch_in_backward.BackwardSteps | None = None
        if torch_in_backward.check_flag(in_backward):
            torch_in_backward.check_group(defaults, "defaults")
            self._nadam_in_backward = torch_in_backward.BackwardSteps(self)
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
            if self.__dict__.get("_nadam_in_backward") is not None:
                torch_in_backward.check_group(merged, where, params)
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
        in_backward = self.__dict__.get("_nadam_in_backward")
        if in_backward is not None:
            in_backward.watch(self.param_groups[-1]["params"])

    # --- stepping inside backward (nadam.integrations.torch_in_backward) ---------------------
    @property
    def in_backward(self) -> bool:
        """Whether parameters are stepped inside backward (`in_backward=True`, hooks in place)."""
        in_backward = self.__dict__.get("_nadam_in_backward")
        return in_backward is not None and in_backward.watching

    def remove_hooks(self) -> None:
        """Stop stepping inside backward: remove the gradient hooks (also done when the
        optimizer is garbage collected). From then on `step()` steps as usual."""
        in_backward = self.__dict__.get("_nadam_in_backward")
        if in_backward is not None:
            with self._step_lock:
                in_backward.remove_hooks()

    # --- global state ------------------------------------------------------------------------
    def _schedule(self) -> dict[str, torch.Tensor]:
        schedule = self.state.get(_SCHEDULE_KEY)
        if schedule is None:
            schedule = self.state[_SCHEDULE_KEY] = {"iterations": torch.tensor(0)}
        return schedule

    def _schedule_read(self) -> dict[str, torch.Tensor]:
        """The schedule, without adding it to `state` when there is none yet: reading must
        leave a fresh optimizer's `state` empty, which is how torch.distributed.checkpoint's
        `get_optimizer_state_dict` tells a fresh optimizer (one it initializes) apart."""
        return self.state.get(_SCHEDULE_KEY) or {"iterations": torch.tensor(0)}

    @property
    def iterations(self) -> int:
        """How many steps have updated parameters (Keras's `iterations`)."""
        self._adopt_installed_schedule()
        return int(self._schedule_read()["iterations"])

    @property
    def momentum_cache(self) -> float | None:
        """The running product of the momentum schedule; None before the first update."""
        self._adopt_installed_schedule()
        cache = self._schedule_read().get("momentum_cache")
        return None if cache is None else float(cache)

    def _adopt_installed_schedule(self) -> None:
        """Take the schedule from the copies in parameters' entries that were written into
        `state` without `load_state_dict` (ZeroRedundancyOptimizer's `load_state_dict` does
        so), once they are checked to agree; then drop the copies."""
        entries = [
            value for key, value in self.state.items()
            if isinstance(key, torch.Tensor) and isinstance(value, dict) and _SCHEDULE_COPY in value
        ]
        if not entries:
            return
        schedule = _loaded_schedule(_schedule_from_copies(
            [(f"state of parameter {i}", value[_SCHEDULE_COPY]) for i, value in enumerate(entries)]
        ))
        for value in entries:
            del value[_SCHEDULE_COPY]
        self.state[_SCHEDULE_KEY] = schedule
        self._memo.slots_changed()

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
            # A DTensor's slots are made for its local shard and wrapped as it is laid out.
            local = torch_shards.local_tensor(param)
            zeros = np.zeros(tuple(local.shape), TORCH_BACKEND.dtype(local))
            self.state[param] = {
                "m": torch_shards.like(param, TORCH_BACKEND.new_slot(local, "m", zeros)),
                "v": torch_shards.like(param, TORCH_BACKEND.new_slot(local, "v", zeros)),
                "round": this_round,
            }

    # --- the step --------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one Nadam step to every parameter that has a gradient; returns the loss.

        Everything is checked first (settings, tensors, gradients); on an error nothing has
        changed. With `in_backward=True` the parameters were stepped inside backward already:
        this only runs the closure, if given, and returns its loss.
        """
        in_backward = self.__dict__.get("_nadam_in_backward")
        if in_backward is not None and in_backward.watching:
            return in_backward.step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def _collect(self) -> list[engine.Update]:
        """Every parameter with a gradient, checked (tensor, gradient, slots, memory).

        A parameter unchanged since the previous step keeps what that step learned about it
        (`engine.VariableMemo`): its tensor checks and where its memory lies.
        """
        memo = self._memo
        installed = False
        updates: list[engine.Update] = []
        known_params: list[engine.KnownVariable] = []
        names = []
        state = self.state
        for index, group in enumerate(self.param_groups):
            for position, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                where = partial(_param_name, index, position)
                sharding = None
                if type(param) not in _PLAIN_TENSORS and torch_shards.is_sharded(param):
                    # The engine steps this rank's shard (`nadam.backends.torch_shards`).
                    _checked(where, TORCH_BACKEND.check_tensor, param)
                    sharding = _checked(where, torch_shards.sharding_of, param)
                    grad = _checked(where, torch_shards.local_gradient, grad, sharding)
                    param = param._local_tensor
                known = memo.recall(param)
                if known is None:
                    _checked(where, TORCH_BACKEND.check_tensor, param)
                    known = memo.learn(TORCH_BACKEND, param, id(param))
                update = known.update
                update.group = index
                update.sharding = sharding
                update.grad = _checked(where, TORCH_BACKEND.gradient, grad, param)
                slots = state.get(param if sharding is None else sharding.whole)
                if slots and "m" in slots:
                    if _SCHEDULE_COPY in slots:
                        installed = True
                    update.m, update.v = slots["m"], slots["v"]
                    if sharding is not None:
                        update.m = torch_shards.local_tensor(update.m)
                        update.v = torch_shards.local_tensor(update.v)
                    if known.m is not update.m:  # new slots (first step, a load): check once
                        _checked(where, engine.check_slots_fit, update,
                                 partial(TORCH_BACKEND.describe, param))
                        known.m = update.m
                        memo.slots_changed()
                else:
                    update.m = update.v = None
                updates.append(update)
                known_params.append(known)
                names.append(where)
        if installed:
            self._adopt_installed_schedule()
        if updates:
            index = memo.variable_index(
                known_params, None,
                lambda p: f"{names[p]()} {TORCH_BACKEND.describe(updates[p].var)}",
            )
            engine.copy_aliased_gradients(updates, index)
            memo.remember(known_params)
        return updates

    def _group_settings(self) -> tuple[tuple[engine.Hypers, ...], tuple[engine.Clipping, ...]]:
        """Every group's checked settings for the engine; a group whose settings are the very
        objects checked last time (no scheduler or user touched them) is not checked again."""
        checked = self.__dict__.setdefault("_nadam_checked_groups", {})
        settings = []
        for index, group in enumerate(self.param_groups):
            given = [group[name] for name in _SETTING_NAMES]
            known = checked.get(index)
            if known is None or not all(map(operator.is_, given, known[0])):
                known = (given, _group_hypers(group, f"param_groups[{index}]"))
                # Only values that cannot change in place may skip the next check (a tensor
                # lr or a list of betas can be mutated behind the same object).
                if all(map(_immutable, given)):
                    checked[index] = known
                else:
                    checked.pop(index, None)
            settings.append(known[1])
        for stale in [index for index in checked if index >= len(settings)]:
            del checked[stale]
        _check_shared_schedule(settings)
        hypers, clip_settings = zip(*(hyper.for_engine() for hyper in settings), strict=True)
        return hypers, clip_settings

    def _made_on_first_use(self, name: str, make: Callable[[], Any]) -> Any:
        # torch.optim's own pickling and `load_state_dict` rebuild the object's __dict__ from
        # defaults, state and param_groups only, so our per-process helpers are made lazily.
        value = self.__dict__.get(name)
        if value is None:
            value = self.__dict__.setdefault(name, make())
        return value

    @property
    def _memo(self) -> engine.VariableMemo:
        return self._made_on_first_use("_nadam_memo", engine.VariableMemo)

    @property
    def _step_lock(self) -> threading.RLock:
        return self._made_on_first_use("_nadam_step_lock", threading.RLock)

    # Opaque to torch.compile: the step lends NumPy views of tensors to a numba kernel, which
    # dynamo cannot trace; compiled code around `step()` calls it eagerly.
    @torch.compiler.disable
    def _step(self) -> None:
        with engine.exclusive_step(self._step_lock):
            hypers, clip_settings = self._group_settings()
            updates = self._collect()
            if not updates:
                return  # as torch.optim: no gradient, no step (the schedule does not advance)
            engine.check_hypers_fit(hypers, [(update.group, update.dtype) for update in updates])
            engine.clip(updates, clip_settings, torch_shards.sum_partials)
            # The commit: nothing below can fail on user input.
            if any(update.m is None for update in updates):
                self._create_state([_param_of(update) for update in updates])
            for update in updates:
                if update.v is None:
                    slots = self.state[_param_of(update)]
                    update.m = torch_shards.local_tensor(slots["m"])
                    update.v = torch_shards.local_tensor(slots["v"])
            schedule = self._schedule()
            cache = schedule["momentum_cache"]
            context = engine.prepare(
                int(schedule["iterations"]), cache.numpy()[()], hypers,
                [(update.group, update.dtype) for update in updates],
            )
            engine.apply(updates, context, memo=self._memo)
            cache.fill_(float(context.momentum_cache))
            schedule["iterations"].add_(1)

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
        return [tensor for _, tensor in self._keras_entries()[0]]

    def _keras_entries(self) -> tuple[list[tuple[str, torch.Tensor]], list[torch.Tensor]]:
        """The state in Keras's order, each tensor with its checkpoint name
        (`nadam.checkpoint`), and the parameters with slots in the order they are numbered."""
        self._adopt_installed_schedule()
        schedule = self._schedule_read()
        if "momentum_cache" not in schedule:
            return [], []
        entries = [
            (checkpoint.ITERATIONS, schedule["iterations"]),
            (checkpoint.MOMENTUM_CACHE, schedule["momentum_cache"]),
        ]
        params = self._params_with_state()
        for this_round in sorted({self.state[p]["round"] for p in params}):
            members = [
                (index, p) for index, p in enumerate(params) if self.state[p]["round"] == this_round
            ]
            entries += [(f"m/{index}", self.state[p]["m"]) for index, p in members]
            entries += [(f"v/{index}", self.state[p]["v"]) for index, p in members]
        return entries, params

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load a list as `get_weights` (or Keras's `get_weights`) returns it.

        Everything is checked before anything is written: the length, every shape, and the
        values no run can produce (`iterations` a whole number in [0, 2**63 - 1],
        `momentum_cache` a number in [0, 1]; SPEC 4.8).
        """
        self._refuse_sharded("set_weights")
        with engine.exclusive_step(self._step_lock):
            entries, _ = self._keras_entries()
            targets = [tensor for _, tensor in entries]
            arrays = checks.weight_arrays(
                "Nadam", [tuple(target.shape) for target in targets], weights
            )
            for position, ((name, _), array) in enumerate(zip(entries, arrays, strict=True)):
                what = f"{name} (weight {position} given to set_weights)"
                if name == checkpoint.ITERATIONS:
                    arrays[position] = np.asarray(checks.iteration_count(array.item(), what))
                elif name == checkpoint.MOMENTUM_CACHE:
                    checks.momentum_cache(array.item(), what)
            _write(targets, arrays)

    # --- our checkpoint files ----------------------------------------------------------------
    def _checkpoint_layout(self) -> tuple[checkpoint.Layout, list[torch.Tensor]]:
        """The state's `checkpoint.Layout` and its tensors in the same order."""
        entries, params = self._keras_entries()
        return _layout(
            [name for name, _ in entries],
            [(tuple(t.shape), _numpy_dtype(t)) for _, t in entries],
            params, self._param_names(),
        ), [tensor for _, tensor in entries]

    def _layout_when_built(self) -> tuple[checkpoint.Layout, list[torch.Tensor]]:
        """The layout `build()` would give a state-less optimizer: every parameter, in
        param-group order, in one round."""
        params = list({id(p): p for g in self.param_groups for p in g["params"]}.values())
        for index, group in enumerate(self.param_groups):
            for position, param in enumerate(group["params"]):
                _checked(_param_name(index, position), TORCH_BACKEND.check_tensor, param)
        if not params:
            return _layout([], [], [], {}), params
        names = [checkpoint.ITERATIONS, checkpoint.MOMENTUM_CACHE]
        names += [f"m/{i}" for i in range(len(params))] + [f"v/{i}" for i in range(len(params))]
        specs = [((), np.dtype(np.int64)), ((), TORCH_BACKEND.dtype(params[0]))]
        specs += [(tuple(p.shape), TORCH_BACKEND.dtype(p)) for p in params] * 2
        return _layout(names, specs, params, self._param_names()), params

    def _refuse_sharded(self, what: str) -> None:
        """TypeError if a parameter is a DTensor: Keras's weight lists and our checkpoint files
        hold whole tensors, a rank only its shards."""
        for group in self.param_groups:
            for param in group["params"]:
                if torch_shards.is_sharded(param):
                    raise TypeError(
                        f"{what} works on whole tensors, but {TORCH_BACKEND.describe(param)} "
                        "is a DTensor (sharded, e.g. by FSDP2): save and load this optimizer "
                        "with torch.distributed.checkpoint through state_dict() "
                        "(get_optimizer_state_dict / set_optimizer_state_dict)"
                    )

    def _param_names(self) -> dict[int, str]:
        """Parameter names where the groups have them (`named_parameters()` given to torch)."""
        names = {}
        for group in self.param_groups:
            for param, name in zip(group["params"], group.get("param_names") or (), strict=False):
                names[id(param)] = str(name)
        return names

    def save_state(self, path: Any) -> None:
        """Save the state to `path`: one safetensors file with JSON metadata (`nadam.checkpoint`).

        `m` and `v` of every parameter with state as tensors; `iterations`,
        `momentum_cache`, the defaults and param groups' settings, the parameters' names
        (where given), shapes and dtypes and Keras's weight order as JSON; a SHA-256 of all
        of it. Atomic: a crash mid-save leaves the previous file at `path` intact. The file
        loads into `nadam.Nadam` too (same shapes and dtypes, same order).
        """
        self._refuse_sharded("save_state")
        with self._step_lock:  # one consistent state, never half of a step
            layout, tensors = self._checkpoint_layout()
            arrays = [TORCH_BACKEND.to_numpy(t) for t in tensors]
            iterations = self.iterations
            config = {
                "defaults": self.defaults,
                "param_groups": [
                    {k: v for k, v in group.items() if k != "params"}
                    for group in self.param_groups
                ],
            }
        cls = type(self)
        checkpoint.write(
            path, layout, arrays, iterations=iterations, face="torch.optim",
            optimizer=f"{cls.__module__}.{cls.__qualname__}", config=config,
        )

    def load_state(self, path: Any) -> None:
        """Load a checkpoint written by `save_state` of either face (`nadam.checkpoint`).

        The checkpoint maps onto `get_weights()`'s order by position. An optimizer with no
        state yet builds it first (as `build()`: every parameter, in param-group order), if
        the checkpoint fits that. Everything is checked before anything is written (the file,
        its checksum, every name, shape and dtype, iterations and momentum_cache); on any
        error (ValueError, or FileNotFoundError) the optimizer is unchanged. Hyperparameters
        (the param groups' settings) are not loaded.
        """
        self._refuse_sharded("load_state")
        saved = checkpoint.read(path)
        with engine.exclusive_step(self._step_lock):
            layout, targets = self._checkpoint_layout()
            if not targets and saved.layout.names:
                layout, params = self._layout_when_built()
                arrays = saved.arrays_for(layout, "this nadam.torch.Nadam (once built)")
                self._create_state(params)
                _, targets = self._checkpoint_layout()
            else:
                arrays = saved.arrays_for(layout, "this nadam.torch.Nadam")
            if targets:
                _write(targets, arrays)
            else:  # nothing built, nothing saved: only the counter
                self._schedule()["iterations"].fill_(saved.iterations)

    # --- state dicts -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict: `state[i]` holds parameter i's `m`, `v` and `round`, and
        `state["nadam"]` the optimizer-wide `iterations` and `momentum_cache`.

        In a multi-process run (torch.distributed initialized with more than one rank), every
        parameter's entry also carries a copy of the schedule, `state[i]["nadam_schedule"] =
        {"iterations": 5, "momentum_cache": 0.0185, "momentum_cache_bits": 32}` (Python
        numbers, which torch's loading never casts; the bits say the cache's dtype), so
        that it survives tools that keep only the parameters' entries:
        `ZeroRedundancyOptimizer.consolidate_state_dict` and torch.distributed.checkpoint;
        `state["nadam"]` is then left out (when some parameter has slots), as
        `get_optimizer_state_dict` names every entry after a parameter. With DTensor
        parameters (FSDP2) `m` and `v` are DTensors laid out as their parameter (saved
        sharded by DCP). `load_state_dict` takes the schedule from `state["nadam"]` when
        present, else from the copies (which must agree).
        """
        state_dict = super().state_dict()
        if not _multi_process():
            return state_dict
        schedule = self._schedule_read()
        cache = schedule.get("momentum_cache")
        state = state_dict["state"]
        if cache is not None:
            copy = {
                "iterations": int(schedule["iterations"]),
                "momentum_cache": float(cache),
                "momentum_cache_bits": cache.dtype.itemsize * 8,
            }
            for key, value in list(state.items()):
                if key != _SCHEDULE_KEY and isinstance(value, dict) and "m" in value:
                    state[key] = {**value, _SCHEDULE_COPY: dict(copy)}
            state.pop(_SCHEDULE_KEY, None)  # the copies carry it
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's `load_state_dict` (hooks included), with the loaded state checked first.

        Every check runs on what is about to be installed (after the load pre-hooks and
        torch's own checks) and before anything changes: on an error the optimizer's state and
        param groups are as they were. Checked: each group's settings (a group missing one of
        our settings, as in an older state dict, gets the default), `betas[0]` and
        `schedule_decay` equal in all groups, `state["nadam"]` (`iterations` a non-negative
        integer; `momentum_cache` a finite 0-d float tensor in [0, 1], present once any
        parameter has slots) and each parameter's slots (`m` and `v` of its shape, an integer
        `round`); `iterations` above 0 without a `momentum_cache` is refused too (the schedule
        would silently restart). Entries that are not about a parameter (`state["epoch"] = 3`)
        are kept as they are, as torch does.

        A state dict of `torch.optim.NAdam` (the same maths with per-parameter schedules) is
        converted, so that a run can switch optimizers mid-way: `exp_avg` -> m, `exp_avg_sq`
        -> v, the `step` of every parameter (which must be equal) -> iterations,
        `mu_product` (equal too) -> momentum_cache, `momentum_decay` -> schedule_decay; its
        `lr`, `betas` and `eps` load as any group setting does. Weight decay, `maximize` or
        parameters at different steps are a ValueError: no run of ours has them.

        Unlike torch's built-in optimizers the loaded tensors are copied, so one state dict
        can seed several optimizers without them sharing state.
        """
        with self._step_lock:  # never in the middle of another thread's step
            super().load_state_dict(state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.Optimizer.load_state_dict installs what it loaded through
        # `self.__setstate__({"state": ..., "param_groups": ...})`, after its pre-hooks and its
        # own checks and before its post-hooks: the one place where our checks see exactly
        # what is about to be installed while nothing has changed yet. Unpickling (pickle,
        # copy.deepcopy) passes the whole object instead, `defaults` included.
        if "defaults" in state:
            super().__setstate__(state)
            for group in self.param_groups:
                _complete_group(group, self.defaults)
            return
        param_groups = state["param_groups"]
        loaded_state = state["state"]
        if _from_torch_nadam(param_groups):
            loaded_state = _converted_torch_nadam(loaded_state, param_groups)
        for group in param_groups:
            _complete_group(group, self.defaults)
        _check_shared_schedule([
            _group_hypers(group, f"loaded param_groups[{index}]")
            for index, group in enumerate(param_groups)
        ])
        loaded = _loaded_state(loaded_state, param_groups)
        super().__setstate__({**state, "state": loaded, "param_groups": param_groups})


def _layout(
    names: Sequence[str], specs: Sequence[tuple[tuple[int, ...], np.dtype]],
    params: Sequence[torch.Tensor], param_names: dict[int, str],
) -> checkpoint.Layout:
    variables = [
        checkpoint.VariableInfo(
            param_names.get(id(p)), tuple(p.shape), TORCH_BACKEND.dtype(p).name, "torch"
        )
        for p in params
    ]
    return checkpoint.layout_of(names, specs, variables)


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def _write(targets: Sequence[torch.Tensor], arrays: Sequence[np.ndarray]) -> None:
    """Copy checked arrays into the state's tensors (cast to their dtypes, as Keras does)."""
    with torch.no_grad():
        for target, array in zip(targets, arrays, strict=True):
            target.copy_(torch.from_numpy(np.array(array, order="C")))


# --- torch.optim.NAdam's state dicts -----------------------------------------------------------
# torch.optim.NAdam computes Keras 2's Nadam with per-parameter schedules: `step`, `mu_product`
# (our momentum_cache), `exp_avg` (m) and `exp_avg_sq` (v). Its settings that we do not have
# must be off; those about how it computes (foreach, ...) mean nothing here.
_TORCH_NADAM_STATE = ("step", "mu_product", "exp_avg", "exp_avg_sq")
_TORCH_NADAM_OFF = {"weight_decay": 0, "maximize": False}
_TORCH_NADAM_ONLY = (
    "momentum_decay", "weight_decay", "decoupled_weight_decay", "maximize", "foreach",
    "capturable", "differentiable", "fused",
)


def _from_torch_nadam(param_groups: Sequence[dict[str, Any]]) -> bool:
    """Whether loaded param groups are torch.optim.NAdam's (they have `momentum_decay`)."""
    return any("momentum_decay" in group and "schedule_decay" not in group
               for group in param_groups)


def _converted_torch_nadam(state: Any, param_groups: Sequence[dict[str, Any]]) -> dict[Any, Any]:
    """A torch.optim.NAdam state (mapped onto our parameters by torch) as ours.

    `exp_avg` -> m, `exp_avg_sq` -> v, the `step` of every parameter (which must be equal)
    -> iterations, `mu_product` (equal too) -> momentum_cache in the dtype of the first
    parameter with state; the groups' `momentum_decay` -> schedule_decay. A state that no
    run of ours could have (parameters at different steps, weight decay, maximize) is a
    ValueError. Edits `param_groups` (torch's copies) in place; `state` is not changed.
    """
    for index, group in enumerate(param_groups):
        where = f"loaded torch.optim.NAdam param_groups[{index}]"
        for name, off in _TORCH_NADAM_OFF.items():
            if name in group and group[name] != off:
                raise ValueError(
                    f"{where} has {name}={group[name]!r}: nadam's Nadam has no {name}, so "
                    "this run cannot continue here"
                )
        if "momentum_decay" in group:
            group["schedule_decay"] = group["momentum_decay"]
        for name in _TORCH_NADAM_ONLY:
            group.pop(name, None)
    if not isinstance(state, dict):
        raise ValueError(f"loaded torch.optim.NAdam state must be a dict, got {type(state)}")
    if _SCHEDULE_KEY in state:
        raise ValueError(
            f"loaded state has param groups of torch.optim.NAdam but state['{_SCHEDULE_KEY}'] "
            "of nadam.torch.Nadam: it mixes two optimizers' state dicts"
        )
    converted: dict[Any, Any] = {}
    first: tuple[str, int, torch.Tensor, torch.Tensor] | None = None
    for index, group in enumerate(param_groups):
        for position, param in enumerate(group["params"]):
            value = state.get(param)
            if value is None or (isinstance(value, dict) and not value):
                continue  # a parameter without a gradient yet
            name = _param_name(index, position)
            where = f"loaded torch.optim.NAdam state of {name}"
            if not isinstance(value, dict):
                raise ValueError(f"{where} must be a dict, got {type(value).__name__}")
            missing = [key for key in _TORCH_NADAM_STATE if key not in value]
            if missing:
                raise ValueError(f"{where} lacks {missing}: it is not torch.optim.NAdam's state")
            mu_product = value["mu_product"]
            if not isinstance(mu_product, torch.Tensor):
                raise ValueError(f"{where} has mu_product {mu_product!r}, not a tensor")
            step = checks.iteration_count(value["step"], f"the step in the {where}")
            if first is None:
                first = (name, step, mu_product, param)
            elif step != first[1] or not torch.equal(
                mu_product.detach().cpu(), first[2].detach().cpu().to(mu_product.dtype)
            ):
                raise ValueError(
                    f"loaded torch.optim.NAdam state: {name} is at step {step} (mu_product "
                    f"{float(mu_product)!r}) but {first[0]} at step {first[1]} (mu_product "
                    f"{float(first[2])!r}); torch.optim.NAdam counts steps per parameter, "
                    "nadam per optimizer (Keras's iterations and momentum_cache), so only a "
                    "state whose parameters have all taken the same steps converts"
                )
            converted[param] = {"m": value["exp_avg"], "v": value["exp_avg_sq"], "round": 0}
    for key, value in state.items():  # what is not about a parameter stays as it is
        if key not in converted and not (isinstance(key, torch.Tensor) and not value):
            converted[key] = value
    if first is not None:
        _, step, mu_product, param = first
        converted[_SCHEDULE_KEY] = {
            "iterations": step,
            "momentum_cache": mu_product.detach().to("cpu", param.dtype).reshape(()),
        }
    return converted


def _complete_group(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Give a group from an older state dict (or pickle) the settings it lacks: the defaults."""
    for name, value in defaults.items():
        group.setdefault(name, value)


def _loaded_state(
    state: Any, param_groups: Sequence[dict[str, Any]]
) -> defaultdict[Any, Any]:
    """Check a state about to be loaded; return it with every tensor of ours copied.

    `state` maps the parameters themselves (torch has already mapped the saved ids and cast
    the slots to each parameter's dtype and device) and anything else torch keeps as it is.
    Raises ValueError before anything is installed.
    """
    params = {id(p): p for group in param_groups for p in group["params"]}
    loaded: defaultdict[Any, Any] = defaultdict(dict)
    with_slots = []
    copies = []
    for key, value in state.items():
        if isinstance(key, torch.Tensor) and id(key) in params:
            if isinstance(value, dict) and _SCHEDULE_COPY in value:
                copies.append((f"loaded state for parameter {TORCH_BACKEND.describe(key)}",
                               value[_SCHEDULE_COPY]))
                value = {k: v for k, v in value.items() if k != _SCHEDULE_COPY}
            loaded[key] = _loaded_slots(key, value)
            if loaded[key]:
                with_slots.append(key)
        elif key == _SCHEDULE_KEY:
            loaded[key] = _loaded_schedule(value)
        else:
            loaded[key] = value  # torch.optim keeps entries that are not about a parameter
    if copies and _SCHEDULE_KEY not in loaded:  # state["nadam"], when there, wins
        loaded[_SCHEDULE_KEY] = _loaded_schedule(_schedule_from_copies(copies))
    schedule = loaded.get(_SCHEDULE_KEY, {})
    if with_slots and "momentum_cache" not in schedule:
        raise ValueError(
            f"loaded state has slots for {len(with_slots)} parameter(s) but no "
            f"state['{_SCHEDULE_KEY}']['momentum_cache']"
        )
    if "momentum_cache" not in schedule and schedule and int(schedule["iterations"]):
        raise ValueError(
            f"loaded state['{_SCHEDULE_KEY}'] has iterations {int(schedule['iterations'])} but "
            "no 'momentum_cache': every step makes one, and without it the momentum schedule "
            "would silently restart at 1"
        )
    return loaded


def _multi_process() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _schedule_from_copies(copies: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """`state["nadam"]` rebuilt from the copies in parameters' entries (`state_dict`), which
    must all be equal; ValueError naming two that differ, or one that is malformed."""
    first_where, first = copies[0]
    for where, copy in copies:
        if (
            not isinstance(copy, dict)
            or set(copy) != {"iterations", "momentum_cache", "momentum_cache_bits"}
            or copy["momentum_cache_bits"] not in _FLOAT_BITS
            or isinstance(copy["momentum_cache"], bool)
            or not isinstance(copy["momentum_cache"], numbers.Real)
        ):
            raise ValueError(
                f"{where} has '{_SCHEDULE_COPY}' {copy!r}; expected a dict with 'iterations' "
                "(an int), 'momentum_cache' (a float) and 'momentum_cache_bits' (16, 32 or 64)"
            )
        if copy != first:
            raise ValueError(
                f"{where} has '{_SCHEDULE_COPY}' {copy!r} but {first_where} has {first!r}: the "
                "schedule is one per optimizer, so every copy must be the same"
            )
    return {
        "iterations": first["iterations"],
        "momentum_cache": torch.tensor(
            float(first["momentum_cache"]), dtype=_FLOAT_BITS[first["momentum_cache_bits"]]
        ),
    }


def _loaded_schedule(value: Any) -> dict[str, Any]:
    """`state["nadam"]` checked (SPEC 4.8): iterations a non-negative int64 (an integer
    tensor or a Python int), momentum_cache a 0-d float tensor in [0, 1] (`_loaded_state`
    checks that it is there whenever it must be)."""
    where = f"loaded state['{_SCHEDULE_KEY}']"
    if not isinstance(value, dict):
        raise ValueError(
            f"{where} must be a dict with 'iterations' (and 'momentum_cache'), got "
            f"{type(value).__name__}"
        )
    schedule = dict(value)
    given = value.get("iterations")
    iterations = given
    if isinstance(iterations, torch.Tensor) and (
        iterations.numel() == 1 and not iterations.dtype.is_floating_point
        and not iterations.dtype.is_complex and iterations.dtype is not torch.bool
    ):
        iterations = iterations.item()
    try:
        if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
            raise ValueError("not an integer")
        iterations = checks.iteration_count(int(iterations))
    except ValueError as error:
        raise ValueError(
            f"{where}['iterations'] must be a non-negative integer (an int64 tensor), got "
            f"{given!r} ({error})"
        ) from None
    schedule["iterations"] = torch.tensor(iterations, dtype=torch.int64)
    if "momentum_cache" in value:
        cache = value["momentum_cache"]
        try:
            if not isinstance(cache, torch.Tensor) or cache.dtype not in (
                torch.float16, torch.float32, torch.float64
            ):
                raise ValueError("not a float tensor")
            checks.momentum_cache(cache)
        except ValueError as error:
            raise ValueError(
                f"{where}['momentum_cache'] must be a one-element float16, float32 or float64 "
                f"tensor in [0, 1] of shape () (a scalar), got {cache!r} ({error})"
            ) from None
        # A CPU copy of its own: the step reads it on the host and advances it in place.
        schedule["momentum_cache"] = cache.detach().to("cpu", copy=True).reshape(())
    return schedule


def _loaded_slots(param: torch.Tensor, value: Any) -> dict[str, Any]:
    where = f"loaded state for parameter {TORCH_BACKEND.describe(param)}"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a dict, got {type(value).__name__}")
    if not value:
        return {}
    round_ = value.get("round")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise ValueError(
            f"{where} has no non-negative integer 'round' (the Keras slot order); got keys "
            f"{sorted(map(str, value))}"
        )
    slots = dict(value)
    for name in ("m", "v"):
        tensor = value.get(name)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{where} has {name} {tensor!r} of type {type(tensor).__name__}, where a "
                f"tensor of shape {tuple(param.shape)} belongs"
            )
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(param.shape):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
            raise ValueError(
                f"{where} has {name} of shape {shape}, but the parameter has shape "
                f"{tuple(param.shape)}"
            )
        if torch_shards.is_sharded(param) and not torch_shards.same_layout(param, tensor):
            raise ValueError(
                f"{where} has {name} that is not a DTensor laid out as the parameter (its "
                f"mesh, placements and local shard shape {tuple(param._local_tensor.shape)})"
            )
        slots[name] = tensor.detach().clone(memory_format=torch.contiguous_format)
    return slots


def _param_of(update: engine.Update) -> torch.Tensor:
    """The parameter an update steps: its variable, or the DTensor it is the local shard of."""
    return update.var if update.sharding is None else update.sharding.whole


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
