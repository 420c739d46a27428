"""The step inside backward: `nadam.torch.Nadam(..., in_backward=True)`.

Each parameter is stepped as soon as autograd has accumulated its gradient (a
`Tensor.register_post_accumulate_grad_hook`), and its gradient is then freed (`p.grad = None`),
so the gradients of the whole model never exist at once: the memory of all gradients but one is
saved, less what activation gradients take meanwhile.

Keras's semantics hold, which is what per-parameter optimizers (torch's "optimizer in backward"
recipe, one optimizer per parameter) lose: **one backward is one step**, with one set of scalars
for every parameter it reaches and `iterations` and `momentum_cache` advanced exactly once, also
when some parameters get no gradient in that backward (they are skipped, as in a normal step,
and the schedule still advances for the others). The steps are bit for bit those of the same
optimizer stepped normally (`backward(); step()`).

How a backward becomes a step (the decisions, each tested in
tests/torch/test_torch_in_backward.py):

- A backward is one autograd graph task (`torch._C._current_graph_task_id()`). The first
  parameter of a backward whose gradient passes its checks *opens* the step: it reads
  `iterations` and `momentum_cache`, computes the step's momentum cache and **commits the
  schedule at once** (cache written, `iterations + 1`); every parameter of that backward is
  then stepped with the scalars of that one step. A callback queued on the graph task forgets
  the step when the backward ends. Committing first means that an exception in the middle of a
  backward (from any hook or backward function) leaves a consistent state: the step that
  started is committed, the parameters already stepped keep their step, the others did not
  move and keep whatever gradient autograd gave them.
- Two backwards are two steps, with or without `retain_graph` and with or without a `step()`
  between them (there is no gradient accumulation over several backwards in this mode). A
  backward that reaches none of the parameters (or `torch.autograd.grad`, which accumulates
  nothing) is no step.
- Bad input is refused where it is seen, before anything changes for that parameter: wrong
  settings (`lr < 0`, `global_clipnorm` set on a group after construction) or a parameter that
  no longer fits its slots raise inside `backward()`. At the first parameter of a backward
  nothing has changed; later, the step is committed for the parameters stepped before.
- Steps are serialized by the optimizer's lock (one parameter at a time); backwards running in
  several threads are each a step of their own, their parameters' updates interleaved.
- `global_clipnorm` needs every gradient at once: a ValueError at construction (or when a group
  with it is added). `clipnorm` and `clipvalue` are per tensor and work.
- DTensor (FSDP2) parameters are a TypeError: FSDP2 sets their sharded gradients outside
  autograd's accumulation, where no hook fires. Under DistributedDataParallel the hooks would
  step each rank's own gradient before DDP averages them, so constructing the optimizer while a
  process group of several ranks runs gives a RuntimeWarning.
- Activation checkpointing without reentrancy (`use_reentrant=False`) is one backward; the
  reentrant kind runs a backward inside the backward, which is a step of its own.
- `step()` updates nothing (it runs the closure, if given, and returns its loss, so a closure
  that calls `backward()` steps through it); `zero_grad()` is torch's and harmless. An
  ordinary `zero_grad(); loss.backward(); opt.step()` loop keeps working unchanged.
- The hooks hold the optimizer weakly: they are removed when it is garbage collected, or by
  `remove_hooks()`, after which the optimizer steps normally in `step()` again. A pickled or
  deep-copied optimizer comes back as an ordinary one (hooks belong to the original
  parameters) and also steps in `step()`.
- The state (`state_dict`, `get_weights`, checkpoints) has the same layout in both modes: a
  state saved in one mode loads into the other. Save and load between backwards.

Example:
    >>> import torch
    >>> from nadam.torch import Nadam
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = Nadam(model.parameters(), lr=1e-3, in_backward=True)
    >>> model(torch.ones(2, 3)).sum().backward()   # steps every parameter, frees its gradient
    >>> opt.iterations, model.weight.grad
    (1, None)
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nadam import engine, memory
from nadam.backends.torch import TORCH_BACKEND
from nadam.kernels import NadamScalars

if TYPE_CHECKING:
    from nadam.integrations.torch_optim import Nadam

__all__ = ["BackwardSteps", "check_group"]

# Records of backwards that raised are never closed by their end-of-backward callback; their
# graph tasks never come back, so only the oldest are dropped, once there are this many.
_MAX_OPEN_STEPS = 64


def check_group(group: dict[str, Any], where: str, params: Iterable[Any] = ()) -> None:
    """A group that cannot be stepped inside backward: `global_clipnorm` (ValueError) or a
    DTensor parameter (TypeError)."""
    if group.get("global_clipnorm") is not None:
        raise ValueError(
            f"{where}: global_clipnorm={group['global_clipnorm']!r} cannot be used with "
            "in_backward=True: the global norm needs every gradient of the step at once, and "
            "in this mode each parameter is stepped as soon as its own gradient is ready. Use "
            "clipnorm (per tensor) or clipvalue, or step normally"
        )
    for position, param in enumerate(params):
        tensor = param[1] if isinstance(param, tuple) else param
        kind = type(tensor)
        if kind.__name__ == "DTensor" and kind.__module__.startswith("torch.distributed"):
            raise TypeError(
                f"{where}['params'][{position}] is a DTensor (FSDP2, tensor parallel): "
                "in_backward=True cannot step it: FSDP2 sets the sharded gradient itself, "
                "outside autograd's accumulation, so no gradient hook would ever fire and the "
                "parameter would silently never move. Step normally"
            )


def check_flag(value: Any) -> bool:
    """`in_backward` must be a bool (TypeError otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"in_backward must be True or False, got {type(value).__name__} {value!r}")
    return value


@dataclass(slots=True)
class _Layout:
    """Every parameter of the optimizer, checked, as the first gradient of a backward finds
    them: where each one is in the param groups, its checked facts, and where all of them lie
    in memory."""

    where: dict[int, tuple[int, int]]
    known: dict[int, engine.KnownVariable]
    index: memory.SpanIndex


@dataclass(slots=True)
class _OpenStep:
    """One backward's step: committed when it opened; its scalars are made per (group, dtype)
    as the parameters arrive."""

    iterations: int
    momentum_cache: np.generic
    next_cache: np.generic
    hypers: tuple[engine.Hypers, ...]
    clipping: tuple[engine.Clipping, ...]
    layout: _Layout
    slot_round: int | None = None
    scalars: dict[tuple[int, np.dtype], NadamScalars] = field(default_factory=dict)


class BackwardSteps:
    """The in-backward machinery of one `nadam.torch.Nadam`: its hooks and its open steps.

    Holds the optimizer weakly, so that the hooks (which hold this object) never keep an
    optimizer alive; when it is collected the hooks are removed.
    """

    def __init__(self, optimizer: Nadam) -> None:
        self._optimizer = weakref.ref(optimizer)
        self._handles: dict[int, Any] = {}
        self._open: OrderedDict[int, _OpenStep] = OrderedDict()
        self._memo = engine.VariableMemo()
        self._finalizer = weakref.finalize(optimizer, _remove_all, self._handles)
        _warn_if_data_parallel()

    # --- hooks -----------------------------------------------------------------------------
    def watch(self, params: Iterable[torch.Tensor]) -> None:
        """Step these parameters inside backward from now on (each one once)."""
        for param in params:
            if id(param) not in self._handles:
                self._handles[id(param)] = param.register_post_accumulate_grad_hook(
                    self._on_gradient
                )

    def remove_hooks(self) -> None:
        """Remove every hook; the optimizer no longer steps inside backward."""
        self._finalizer.detach()
        _remove_all(self._handles)

    @property
    def watching(self) -> bool:
        """Whether the hooks are in place."""
        return bool(self._handles)

    # --- the step ----------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None) -> Any:
        """`optimizer.step()` in this mode: the update already happened inside backward."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _on_gradient(self, param: torch.Tensor) -> None:
        optimizer = self._optimizer()
        if optimizer is None or param.grad is None:
            return
        with torch.no_grad(), engine.exclusive_step(optimizer._step_lock):
            self._step_parameter(optimizer, param, torch._C._current_graph_task_id())

    def _step_parameter(self, optimizer: Nadam, param: torch.Tensor, task: int) -> None:
        from nadam.integrations.torch_optim import _checked, _param_name

        step = self._open.get(task)
        if step is None:
            hypers, clipping = optimizer._group_settings()
            for index, setting in enumerate(clipping):
                if setting.global_clipnorm is not None:
                    check_group({"global_clipnorm": setting.global_clipnorm},
                                f"param_groups[{index}]")
            layout = self._layout(optimizer)
        else:
            hypers, clipping, layout = step.hypers, step.clipping, step.layout
        position = layout.where.get(id(param))
        if position is None:
            return  # no longer in the param groups (a load replaced them): not ours to step
        group, _ = position
        name = partial(_param_name, *position)
        known = layout.known[id(param)]
        update = known.update
        update.group = group
        update.grad = _checked(name, TORCH_BACKEND.gradient, param.grad, param)
        try:
            slots = optimizer.state.get(param)
            if slots and "m" in slots:
                update.m, update.v = slots["m"], slots["v"]
                if known.m is not update.m:  # new slots (first step, a load): check once
                    _checked(name, engine.check_slots_fit, update,
                             partial(TORCH_BACKEND.describe, param))
                    known.m = update.m
            else:
                update.m = update.v = None
            engine.copy_aliased_gradients([update], layout.index)
            key = (group, update.dtype)
            if step is None or key not in step.scalars:  # once per (group, dtype) and step
                engine.check_hypers_fit(hypers, [key])
            engine.clip([update], clipping)
            # The commit: nothing below can fail on user input.
            if step is None:
                step = self._open_step(optimizer, task, param, hypers, clipping, layout)
            if update.m is None:
                self._create_slots(optimizer, param, step)
                slots = optimizer.state[param]
                update.m, update.v = slots["m"], slots["v"]
                known.m = update.m
            scalars = step.scalars.get(key)
            if scalars is None:
                context = engine.prepare(step.iterations, step.momentum_cache, hypers, [key])
                scalars = step.scalars[key] = context.scalars[key]
            engine.apply([update], engine.StepContext(step.iterations, step.next_cache,
                                                      {key: scalars}))
            param.grad = None
        finally:
            update.grad = None  # the memo keeps the Update: it must not keep the gradient

    def _layout(self, optimizer: Nadam) -> _Layout:
        """Check every parameter once per backward (cheaply when unchanged since the last)."""
        from nadam.integrations.torch_optim import _checked, _param_name

        memo = self._memo
        where: dict[int, tuple[int, int]] = {}
        known: dict[int, engine.KnownVariable] = {}
        for index, group in enumerate(optimizer.param_groups):
            for position, param in enumerate(group["params"]):
                facts = memo.recall(param)
                if facts is None:
                    _checked(partial(_param_name, index, position), TORCH_BACKEND.check_tensor,
                             param)
                    facts = memo.learn(TORCH_BACKEND, param, id(param), index)
                where[id(param)] = (index, position)
                known[id(param)] = facts
        listed = list(known.values())
        positions = list(where.values())
        index = memo.variable_index(
            listed, None,
            lambda p: f"{_param_name(*positions[p])} {TORCH_BACKEND.describe(listed[p].var)}",
        )
        memo.remember(listed)
        return _Layout(where, known, index)

    def _open_step(
        self,
        optimizer: Nadam,
        task: int,
        first: torch.Tensor,
        hypers: tuple[engine.Hypers, ...],
        clipping: tuple[engine.Clipping, ...],
        layout: _Layout,
    ) -> _OpenStep:
        """Start this backward's step and commit the schedule (see the module's docstring)."""
        step = _OpenStep(0, np.float32(1.0), np.float32(1.0), hypers, clipping, layout)
        if "momentum_cache" not in optimizer._schedule():
            # The cache takes the dtype of the first parameter ever stepped (Keras).
            self._create_slots(optimizer, first, step)
        schedule = optimizer._schedule()
        cache = schedule["momentum_cache"]
        step.iterations = int(schedule["iterations"])
        step.momentum_cache = cache.numpy()[()]
        step.next_cache = engine.prepare(
            step.iterations, step.momentum_cache, hypers, []
        ).momentum_cache
        cache.fill_(float(step.next_cache))
        schedule["iterations"].add_(1)
        self._open[task] = step
        while len(self._open) > _MAX_OPEN_STEPS:
            self._open.popitem(last=False)
        torch.autograd.Variable._execution_engine.queue_callback(partial(self._close, task))
        return step

    def _close(self, task: int) -> None:
        self._open.pop(task, None)

    @staticmethod
    def _create_slots(optimizer: Nadam, param: torch.Tensor, step: _OpenStep) -> None:
        """The parameter's m and v, numbered with the round of this step (Keras lists the slots
        of the variables first seen in one step together)."""
        if "m" in optimizer.state.get(param, {}):
            return
        optimizer._create_state([param])
        if step.slot_round is None:
            step.slot_round = optimizer.state[param]["round"]
        else:
            optimizer.state[param]["round"] = step.slot_round


def _warn_if_data_parallel() -> None:
    """A RuntimeWarning where a process group of several ranks is running: under
    DistributedDataParallel the hooks would step each rank's own gradient, before DDP averages
    them at the end of backward, and the ranks would silently drift apart."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized() and (
        distributed.get_world_size() > 1
    ):
        warnings.warn(
            "in_backward=True with a process group of several ranks: under "
            "DistributedDataParallel each rank would step on its own gradient (DDP averages "
            "them only after the hooks ran) and the ranks would drift apart. Step normally "
            "under DDP; this mode suits ranks that train on their own gradients",
            RuntimeWarning,
            stacklevel=4,
        )


def _remove_all(handles: dict[int, Any]) -> None:
    for handle in handles.values():
        handle.remove()
    handles.clear()
