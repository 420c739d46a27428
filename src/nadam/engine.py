"""The step engine: one Nadam step, once, for every face.

A face (the Keras `Optimizer`/`Nadam`, the torch.optim `nadam.torch.Nadam`, later optax and
Keras 3) translates its conventions into `Update`s (a variable, its checked gradient, the param
group whose settings apply) and resolved `Hypers`, then drives the same four stages:

1. `checked_update`, `check_slots_fit`, `check_variable_memory`, `copy_aliased_gradients`
   (with `VariableMemo` remembering what the previous step checked): every check, before
   anything changes — the variable is trainable, the gradient fits it, the variable's slots
   still fit it, no two variables share memory, no variable is the optimizer's own state; a
   gradient that shares memory with a variable is copied so it reads as it was before.
2. `clip`: clipvalue, clipnorm, global_clipnorm, per group (after any aggregation). A face
   that hands the engine local shards of larger tensors (DTensors) marks them with
   `Update.sharding` and passes `sum_partials`, which sums their norms over the shards in one
   collective per step.
3. `prepare`: the step's scalars once per (group, dtype) and the momentum cache the step
   will commit, in an explicit `StepContext` (nothing is written yet).
4. `apply`: the kernels, one call per (group, backend, device, dtype) for dense gradients and
   one per sparse gradient; then the face commits `context.momentum_cache` and
   `iterations + 1`.

`exclusive_step` wraps the stages that write: one optimizer's steps run one at a time, and a
Ctrl-C that arrives meanwhile is raised once the step has finished, never half-way.

Example:
    >>> import numpy as np
    >>> from nadam.backends import NUMPY_BACKEND
    >>> x, m, v = np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)
    >>> update = checked_update(NUMPY_BACKEND, x, np.ones(2, np.float32))
    >>> update.m, update.v = m, v
    >>> hypers = Hypers.of(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    >>> context = prepare(0, np.float32(1.0), [hypers], [(0, update.dtype)])
    >>> apply([update], context)
    >>> x
    array([0.99894357, 0.99894357], dtype=float32)
"""

from __future__ import annotations

import operator
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from nadam import clipping, kernels, memory
from nadam.backends.base import Backend, DenseGrad, SparseGrad
from nadam.kernels import NadamScalars
from nadam.step_scalars import decayed_learning_rate, nadam_scalars

Gradient = DenseGrad | SparseGrad


# --- what a step is made of ------------------------------------------------------------------
@dataclass(slots=True)
class Update:
    """One variable to update this step: its checked gradient, its slots and its group.

    A plain (not frozen) slotted dataclass: one is made per variable per step, and a frozen
    one costs several times more to build.
    """

    backend: Backend
    var: Any
    grad: Gradient
    dtype: np.dtype
    device: str
    group: int = 0
    m: Any = None
    v: Any = None
    sharding: Any = None
    """None, or what makes `var` one shard of a larger tensor (a face's DTensor parameter):
    `clip` then sums its norm over the shards with the face's `sum_partials`."""


class Hypers(NamedTuple):
    """One param group's settings for one step, resolved with Keras's rounding.

    `learning_rate`, `beta_1`, `beta_2` and `decay` are 0-d arrays (float32 for Python
    numbers, as Keras's hyper variables); `epsilon` and `schedule_decay` are Python floats,
    which Keras converts to the variable's dtype directly.
    """

    learning_rate: np.ndarray
    beta_1: np.ndarray
    beta_2: np.ndarray
    epsilon: float
    decay: np.ndarray
    schedule_decay: float

    @classmethod
    def of(
        cls,
        learning_rate: Any,
        beta_1: Any,
        beta_2: Any,
        epsilon: float,
        decay: Any = 0.0,
        schedule_decay: float = 0.004,
    ) -> Hypers:
        """Hypers from plain numbers (rounded through float32) or arrays (kept)."""

        def rounded(value: Any) -> np.ndarray:
            if isinstance(value, np.ndarray | np.generic):
                return np.asarray(value)
            return np.asarray(value, dtype=np.float32)

        return cls(rounded(learning_rate), rounded(beta_1), rounded(beta_2), float(epsilon),
                   rounded(decay), float(schedule_decay))


class Clipping(NamedTuple):
    """A group's clipping thresholds (None: off), applied in this order."""

    clipvalue: float | None = None
    clipnorm: float | None = None
    global_clipnorm: float | None = None


NO_CLIPPING = Clipping()


@dataclass(frozen=True, slots=True)
class StepContext:
    """What `prepare` computed for one step, passed to `apply` and to the face's commit."""

    iterations: int
    momentum_cache: np.generic
    """The momentum cache after this step, in the cache's dtype (not yet written)."""
    scalars: dict[tuple[int, np.dtype], NadamScalars]
    """The kernels' scalars per (group, dtype)."""


# --- stage 1: checks -------------------------------------------------------------------------
def checked_update(
    backend: Backend,
    var: Any,
    grad: Any,
    group: int = 0,
    check_variable: Callable[[Any], None] | None = None,
) -> Update:
    """An `Update` for `var` after checking the variable and the gradient against it.

    Raises TypeError/ValueError/IndexError (the backend's documented errors); changes nothing.
    """
    (check_variable or backend.check_variable)(var)
    checked = backend.gradient(grad, var)
    return Update(backend, var, checked, backend.dtype(var), backend.device(var), group)


def check_slots_fit(update: Update, describe: Callable[[], str]) -> None:
    """ValueError if the variable's existing slots no longer fit it (reshaped, re-typed or
    replaced since they were made)."""
    backend, var, m = update.backend, update.var, update.m
    if m is None:
        return
    shape, slot_shape = backend.shape(var), backend.shape(m)
    slot_dtype = backend.dtype(m)
    if shape != slot_shape or update.dtype != slot_dtype:
        raise ValueError(
            f"Variable {describe()} now has shape {shape} and dtype {update.dtype}, but its "
            f"optimizer slots were made for shape {slot_shape} and dtype {slot_dtype}: its "
            "array was reshaped, re-typed or replaced after the optimizer saw it. Give it back "
            "its shape, or use a new optimizer (or `set_weights`) for the new shape"
        )


def check_variable_memory(
    variables: Sequence[tuple[Backend, Any]],
    own_state: memory.SpanIndex | None,
    describe: Callable[[int], str],
) -> memory.SpanIndex:
    """ValueError if a variable overlaps itself (a stride of 0), another variable, or the
    optimizer's own state (`own_state`); `describe(position)` names it. Returns where the
    variables live."""
    spans, owners = [], []
    for position, (backend, var) in enumerate(variables):
        if backend.overlaps_itself(var):
            raise ValueError(
                f"Variable {describe(position)} overlaps itself (a stride of 0, e.g. made with "
                "expand() or broadcast_to): its elements share memory, so one update would be "
                "applied to them several times. Train a contiguous copy instead"
            )
        span = backend.span(var)
        if own_state is not None and own_state.meets(span):
            raise ValueError(
                f"Variable {describe(position)} is (or shares memory with) this optimizer's own "
                "state (a slot or the momentum cache), which it cannot train"
            )
        spans.append(span)
        owners.append(backend.memory_owner(var))
    if len(variables) > 1:
        pair = memory.first_overlap(
            spans,
            lambda i, j: variables[i][0] is variables[j][0]
            and variables[i][0].shares_memory(variables[i][1], variables[j][1]),
        )
        if pair is not None:
            first, second = pair
            raise ValueError(
                f"Variables {describe(first)} and {describe(second)} share memory (one is a view "
                "of the other, or both view one buffer): a step would update the shared "
                "elements twice. Pass each piece of memory once"
            )
    return memory.SpanIndex(spans, owners)


def copy_aliased_gradients(updates: Sequence[Update], variables: memory.SpanIndex) -> None:
    """Copy each gradient that shares memory with a variable of the step.

    Such a gradient would be read after that variable moved, by whichever update runs later;
    the copy keeps the value it had when it was given.
    """
    for update in updates:
        backend, grad = update.backend, update.grad
        if type(grad) is DenseGrad:
            array = grad.array
            if variables.may_meet_owner(backend.memory_owner(array)) and variables.meets(
                backend.span(array)
            ):
                update.grad = DenseGrad(backend.copy(array))
        elif variables.meets(backend.span(grad.values)) or variables.meets(
            backend.span(grad.indices)
        ):
            update.grad = SparseGrad(backend.copy(grad.values), backend.copy(grad.indices))


# --- what the previous step learned ----------------------------------------------------------
@dataclass(slots=True, eq=False)  # compared by identity: two records are never "equal"
class KnownVariable:
    """A variable's checked facts, valid while its backend's `signature` of it is unchanged.

    `update` is the variable's `Update`, made once and given a new gradient each step; `m` is
    set once its slots were found to fit (they keep fitting while the signature holds).
    """

    var: Any
    signature: Any
    backend: Backend
    key: Any
    span: tuple[int, int] | None
    update: Update
    kept: Any  # what `signature` identifies by id(), kept alive so no id is reused
    m: Any = None


class VariableMemo:
    """The variables of the previous step and their facts, so an unchanged variable is not
    checked again from scratch, and an unchanged set of variables not compared pairwise.

    Only the previous step is remembered: a fresh view passed each step costs a full check,
    and nothing accumulates.
    """

    __slots__ = ("_previous", "_layout", "_checked_layout", "_own_state", "_index", "_prepared",
                 "_prepared_now")

    def __init__(self) -> None:
        self._previous: dict[int, KnownVariable] = {}
        self._layout: tuple[KnownVariable, ...] = ()  # the previous step's variables
        self._checked_layout: tuple[KnownVariable, ...] | None = None  # what `_index` is of
        self._own_state: memory.SpanIndex | None = None
        self._index: memory.SpanIndex | None = None
        # Dense kernels bound to a group (`KernelChoice.prepared`), by the identities of the
        # group's Updates (one per KnownVariable) and slots: the previous step's, this step's.
        self._prepared: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._prepared_now: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def recall(self, var: Any) -> KnownVariable | None:
        """The facts about `var` from the previous step, if it is unchanged since."""
        known = self._previous.get(id(var))
        if (
            known is not None
            and known.var is var
            and known.backend.signature(var) == known.signature
        ):
            return known
        return None

    @staticmethod
    def learn(backend: Backend, var: Any, key: Any, group: int = 0) -> KnownVariable:
        """The facts about a variable that passed its checks."""
        update = Update(backend, var, None, backend.dtype(var), backend.device(var), group)
        return KnownVariable(
            var, backend.signature(var), backend, key, backend.span(var), update,
            kept=backend.signature_anchor(var),
        )

    def same_variables(self, known: Sequence[KnownVariable]) -> bool:
        """Whether `known` are exactly the previous step's variables, in order."""
        return len(known) == len(self._layout) and all(
            map(operator.is_, known, self._layout)
        )

    def variable_index(
        self,
        known: Sequence[KnownVariable],
        own_state: memory.SpanIndex | None,
        describe: Callable[[int], str],
    ) -> memory.SpanIndex:
        """`check_variable_memory` over `known`, skipped when those were the variables it last
        checked (and the optimizer's own state did not change)."""
        layout = tuple(known)
        if layout != self._checked_layout or own_state is not self._own_state:
            self._index = check_variable_memory(
                [(k.backend, k.var) for k in known], own_state, describe
            )
            self._checked_layout = layout
            self._own_state = own_state
        return self._index

    def prepared_dense(
        self, choice: kernels.KernelChoice, members: Sequence[Update]
    ) -> kernels.PreparedDense:
        """The group's dense kernel bound to its memory, made once while nothing changes.

        Valid while every member's variable keeps its memory (its `Update` belongs to one
        `KnownVariable`, which lives only while the variable's signature holds) and its slots
        are the same objects (a face that finds new slots calls `slots_changed`).
        """
        key = (choice.name, choice.dense, *map(id, members))
        entry = self._prepared.get(key) or self._prepared_now.get(key)
        if entry is None:
            first = members[0]
            entry = (list(members), choice.prepared(
                first.backend, [u.var for u in members], [u.m for u in members],
                [u.v for u in members], first.dtype,
            ))  # the members are kept alive with it, so their ids stay theirs
        self._prepared_now[key] = entry
        return entry[1]

    def slots_changed(self) -> None:
        """Some variable's slots are new objects (a loaded state): rebind every kernel."""
        self._prepared, self._prepared_now = {}, {}

    def finish_step(self) -> None:
        """Keep the kernels this step used, and only those."""
        self._prepared, self._prepared_now = self._prepared_now, {}

    def remember(self, known: Sequence[KnownVariable]) -> None:
        """Keep this step's variables (after every check passed) for the next step."""
        self._previous = {id(k.var): k for k in known}
        self._layout = tuple(known)


# --- stage 2: clipping -----------------------------------------------------------------------
SumPartials = Callable[[Sequence[Any], Sequence[np.generic]], list[np.generic]]
"""`(shardings, partial_sums) -> totals`: each shard's partial sum of squares summed over all
shards of its tensor (one collective for the whole list)."""


def clip(
    updates: Sequence[Update],
    settings: Sequence[Clipping],
    sum_partials: SumPartials | None = None,
) -> None:
    """Clip each update's gradient by its group's `settings`: value, norm, then global norm.

    The global norm is taken over all gradients whose groups share the same threshold. An
    update with a `sharding` is one shard of a larger tensor: its norm is that tensor's, its
    partial sum of squares summed over the shards by `sum_partials` (every such update of the
    step in one call, so one collective per step).
    """
    by_threshold: dict[float, list[Update]] = {}
    sharded: list[Update] = []
    for update in updates:
        setting = settings[update.group]
        if setting.clipvalue is not None:
            update.grad = clipping.clip_by_value(update.backend, update.grad, setting.clipvalue)
        if update.sharding is not None and (
            setting.clipnorm is not None or setting.global_clipnorm is not None
        ):
            sharded.append(update)
    totals = _shard_square_sums(sharded, settings, sum_partials) if sharded else {}
    for update in updates:
        setting = settings[update.group]
        if setting.clipnorm is not None:
            update.grad = clipping.clip_by_norm(
                update.backend, update.grad, setting.clipnorm, totals.get(id(update))
            )
        if setting.global_clipnorm is not None:
            by_threshold.setdefault(setting.global_clipnorm, []).append(update)
    for threshold, members in by_threshold.items():
        clipped = clipping.clip_by_global_norm(
            [(update.backend, update.grad) for update in members], threshold,
            [totals.get(id(update)) for update in members] if totals else None,
        )
        for update, grad in zip(members, clipped, strict=True):
            update.grad = grad


def _shard_square_sums(
    sharded: Sequence[Update], settings: Sequence[Clipping], sum_partials: SumPartials | None
) -> dict[int, np.generic]:
    """By `id(update)`: the whole tensor's sum of squares (clipnorm) or half of it
    (global_clipnorm, `l2_loss`) for each sharded update, after its clipvalue."""
    if sum_partials is None:
        raise ValueError(
            "Gradients of sharded variables need their norms summed across shards, but this "
            "step was given no `sum_partials`"
        )
    partials = []
    for update in sharded:
        values = update.grad.array if type(update.grad) is DenseGrad else update.grad.values
        if settings[update.group].clipnorm is not None:
            partials.append(update.backend.square_sum(values))
        else:
            partials.append(update.backend.half_square_sum(values))
    totals = sum_partials([update.sharding for update in sharded], partials)
    return {id(update): total for update, total in zip(sharded, totals, strict=True)}


def check_hypers_fit(hypers: Sequence[Hypers], keys: Iterable[tuple[int, np.dtype]]) -> None:
    """ValueError if `beta_1` or `beta_2` becomes 1 in a variable's dtype (0.99999999 is 1.0 in
    float32, 0.9999 in float16): the bias correction would divide by 0 and the step give NaN."""
    for group, dtype in set(keys):
        group_hypers = hypers[group]
        for name, value in (("beta_1", group_hypers.beta_1), ("beta_2", group_hypers.beta_2)):
            if dtype.type(value[()]) >= 1:
                raise ValueError(
                    f"Expected {name} in [0, 1), received: {value[()]!r}, which is 1.0 in the "
                    f"variables' dtype {dtype}"
                )


# --- stage 3: the step's scalars -------------------------------------------------------------
def prepare(
    iterations: int,
    momentum_cache: np.generic,
    hypers: Sequence[Hypers],
    keys: Iterable[tuple[int, np.dtype]],
) -> StepContext:
    """The step's scalars once per (group, dtype) in `keys`, and the next momentum cache.

    The cache advances once per step in its own dtype, whatever the variables' dtypes; its
    momentum schedule is group 0's (`beta_1`, `schedule_decay`), which faces keep equal in
    every group.
    """
    cache_dtype = momentum_cache.dtype
    scalars: dict[tuple[int, np.dtype], NadamScalars] = {}
    next_cache = None
    for key in dict.fromkeys(keys):
        group, dtype = key
        scalars[key], prod = _scalars(hypers[group], dtype, iterations, momentum_cache)
        if group == 0 and dtype == cache_dtype:
            next_cache = prod
    if next_cache is None:
        _, next_cache = _scalars(hypers[0], cache_dtype, iterations, momentum_cache)
    return StepContext(iterations, next_cache, scalars)


def _scalars(
    hypers: Hypers, dtype: np.dtype, iterations: int, momentum_cache: np.generic
) -> tuple[NadamScalars, np.generic]:
    return nadam_scalars(
        dtype,
        iterations,
        momentum_cache,
        lr=decayed_learning_rate(hypers.learning_rate, hypers.decay, iterations, dtype),
        beta_1=dtype.type(hypers.beta_1[()]),
        beta_2=dtype.type(hypers.beta_2[()]),
        epsilon=hypers.epsilon,
        schedule_decay=hypers.schedule_decay,
    )


def prepare_traced(
    kernel: Any,
    iterations: Any,
    momentum_cache: Any,
    dtypes: Iterable[Any],
    learning_rate: Any,
    decay: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    schedule_decay: Any,
    cache_dtype: Any = None,
) -> tuple[dict[Any, NadamScalars], Any]:
    """`prepare` for a step inside a trace (`jax.jit`, `tf.function`), where the host cannot
    be called: the scalars once per variable dtype and the next momentum cache, computed by
    `kernel`'s traced twin of the rule (`kernels.xla`, `kernels.tf_ops`, which share
    `step_scalars.scalar_rule`). One param group; `iterations` and `momentum_cache` may be
    traced values. The cache advances in its own dtype (`cache_dtype`, named as `dtypes` name
    theirs; by default `momentum_cache.dtype`), whatever the variables' dtypes.

    Example:
        >>> import jax.numpy as jnp
        >>> from nadam.kernels import xla
        >>> scalars, cache = prepare_traced(xla, jnp.asarray(0), jnp.asarray(1.0, "float32"),
        ...                                 [np.dtype("float32")], 1e-3, 0.0, 0.9, 0.999, 1e-7,
        ...                                 0.004)
        >>> cache  # mu_1, as the host's prepare gives it
        Array(0.45007348, dtype=float32)
    """
    if cache_dtype is None:
        cache_dtype = momentum_cache.dtype
    scalars: dict[Any, NadamScalars] = {}
    next_cache = None
    for dtype in dict.fromkeys([*dtypes, cache_dtype]):
        lr = kernel.decayed_learning_rate(learning_rate, decay, iterations, dtype)
        scalars[dtype], prod = kernel.nadam_scalars(
            iterations, momentum_cache, lr, beta_1, beta_2, epsilon, schedule_decay, dtype
        )
        if dtype == cache_dtype:
            next_cache = prod
    return scalars, next_cache


# --- stage 4: the kernels --------------------------------------------------------------------
DenseHook = Callable[[Update, NadamScalars], None]
SparseHook = Callable[[Update, NadamScalars], None]


def apply(
    updates: Sequence[Update],
    context: StepContext,
    dense_hook: DenseHook | None = None,
    sparse_hook: SparseHook | None = None,
    memo: VariableMemo | None = None,
) -> None:
    """Run the kernels: dense gradients one call per (group, backend, device, dtype), sparse
    ones per variable after summing repeated rows (Keras's order). Slots must be set. With the
    optimizer's `memo`, each group's kernel is bound to its memory once (`prepared_dense`).

    `dense_hook` / `sparse_hook` replace the kernels per variable (a Keras subclass that
    overrides `_resource_apply_dense` / `_resource_apply_sparse`); a sparse hook gets the
    gradient as given, repeated rows and all.
    """
    groups: dict[tuple[int, str, str, np.dtype], list[Update]] = {}
    sparse: list[Update] = []
    for update in updates:
        if type(update.grad) is SparseGrad:
            sparse.append(update)
            continue
        key = (update.group, update.backend.name, update.device, update.dtype)
        members = groups.get(key)
        if members is None:
            groups[key] = [update]
        else:
            members.append(update)
    scalars = context.scalars
    for (group, _, device, dtype), members in groups.items():
        s = scalars[(group, dtype)]
        if dense_hook is not None:
            for update in members:
                dense_hook(update, s)
            continue
        backend = members[0].backend
        choice = kernels.select(backend, device, dtype)
        gradients = [update.grad.array for update in members]
        if memo is not None:
            memo.prepared_dense(choice, members)(gradients, s)
        else:
            choice.dense(
                backend,
                [update.var for update in members],
                gradients,
                [update.m for update in members],
                [update.v for update in members],
                s,
            )
    for update in sparse:
        s = scalars[(update.group, update.dtype)]
        if sparse_hook is not None:
            sparse_hook(update, s)
            continue
        unique = update.backend.dedupe(update.grad)
        kernels.select(update.backend, update.device, update.dtype).sparse(
            update.backend, update.var, unique.values, unique.indices, update.m, update.v, s
        )
    if memo is not None:
        memo.finish_step()


# --- running a step exclusively --------------------------------------------------------------
class exclusive_step:  # noqa: N801 - used as a context manager, like a function
    """Hold `lock` (one optimizer's steps run one at a time) and hold back Ctrl-C until the
    block ends; then the interrupt is delivered to the handler that was installed before.

    SIGINT handlers can only be changed on the main thread; on other threads the lock alone
    applies (Python delivers signals to the main thread anyway).

    Example:
        >>> with exclusive_step(threading.RLock()):
        ...     pass  # a Ctrl-C here is raised when the block ends
    """

    __slots__ = ("_lock", "_previous", "_received")

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._previous: Any = None
        self._received: tuple[int, Any] | None = None

    def _defer(self, signum: int, frame: Any) -> None:
        self._received = (signum, frame)

    def __enter__(self) -> None:
        self._lock.acquire()
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._defer)
            except ValueError:  # pragma: no cover - an interpreter without signal support
                self._previous = None

    def __exit__(self, *exc_info: Any) -> None:
        try:
            previous, received = self._previous, self._received
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
                self._previous = None
        finally:
            self._lock.release()
        if received is not None:
            self._received = None
            if callable(previous):
                previous(*received)  # Python's default handler raises KeyboardInterrupt
            elif previous == signal.SIG_DFL:  # pragma: no cover - terminates the process
                signal.raise_signal(signal.SIGINT)
