"""The fused CPU kernel: one pass over memory per tensor, all tensors of a group in one call.

A Nadam step is memory-bound (it reads x, g, m, v and writes x, m, v), so the fastest step is
one pass over those arrays on every core, with nothing allocated. The work is split into chunks
that the calling thread and helper threads claim (`kernels._chunk_pool`), so a busy core delays
a step by at most one chunk, not by a scheduler time slice. `choose` offers this kernel
for any group of float32 or float64 variables on the CPU whose backend can lend zero-copy NumPy
views of its arrays (`Backend.as_numpy_view`: NumPy arrays, and contiguous CPU torch tensors).
The loops themselves live in `kernels._cpu_numba` and are compiled by numba, which is imported
only when the first such step runs; compiled code is cached on disk so that a new process loads
it instead of compiling. If numba is missing or fails, `choose` warns once and declines, and the
reference kernel runs instead. Results are bit-identical to `kernels.reference`.

Example:
    >>> import numpy as np
    >>> from nadam import Nadam, Variable
    >>> w = Variable(np.ones(3, np.float32))
    >>> Nadam().apply_gradients([(np.ones(3, np.float32), w)])  # the first step loads numba
    1
"""

from __future__ import annotations

import importlib
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter, is_
from types import ModuleType
from typing import Any

import numpy as np

from nadam.kernels import KernelChoice, NadamScalars, reference
from nadam.kernels._chunk_pool import ChunkPool
from nadam.memory import address as _address

NAME = "cpu-fused"
FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PARALLEL_MIN_ELEMENTS = 1 << 19
"""Groups smaller than this run on the calling thread alone: waking a helper thread (tens of
microseconds) costs more than it saves below about 400k elements (measured, float32)."""

_MAX_PLANS = 64

# --- loading numba, once per process, per dtype -----------------------------------------------
_lock = threading.Lock()
_compiled: dict[np.dtype, ModuleType] = {}
_failure: str | None = None


def _compiled_module(dtype: np.dtype) -> ModuleType | None:
    """The compiled kernels for `dtype`, compiling or loading them the first time; None if numba
    cannot be used (then a warning says why, once per process)."""
    global _failure
    module = _compiled.get(dtype)
    if module is not None or _failure is not None:
        return module
    with _lock:
        if dtype in _compiled or _failure is not None:
            return _compiled.get(dtype)
        try:
            module = importlib.import_module("nadam.kernels._cpu_numba")
            module.compile_for(dtype)
        except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
            _failure = f"{type(error).__name__}: {error}"
            warnings.warn(
                "nadam: the fused CPU kernel is unavailable, so every step runs the slower "
                f"reference kernel ({_failure}). Install numba (pip install numba) to fix this.",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        _compiled[dtype] = module
        return module


def unavailable_reason() -> str | None:
    """Why the fused kernel could not be loaded in this process (None: it loaded or was not
    tried yet)."""
    return _failure


# --- choosing ---------------------------------------------------------------------------------
def _on_cpu(device: Any) -> bool:
    return str(device).split(":", 1)[0] == "cpu"


def choose(backend: Any, device: Any, dtype: np.dtype) -> KernelChoice | None:
    """The fused kernel for a group on the CPU whose backend lends NumPy views, else None.

    Registered with `nadam.kernels.register_fast_path`; `nadam.kernels.select` calls it.

    Example:
        >>> from nadam.backends import NUMPY_BACKEND
        >>> choose(NUMPY_BACKEND, "cpu", np.dtype("float32")).name
        'cpu-fused'
        >>> choose(NUMPY_BACKEND, "cpu", np.dtype("float16")) is None
        True
    """
    if dtype not in FUSED_DTYPES or not _on_cpu(device):
        return None
    if getattr(backend, "as_numpy_view", None) is None:
        return None
    if _compiled_module(np.dtype(dtype)) is None:
        return None
    return _CHOICE


# --- which memory the kernels can address ------------------------------------------------------
def _fusable(array: Any, dtype: np.dtype, writable: bool) -> bool:
    """Whether the kernels can address `array` directly: contiguous, aligned, native `dtype`."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        return False
    flags = array.flags
    return flags.c_contiguous and flags.aligned and (flags.writeable or not writable)


def _reader(backend: Any) -> Callable[[Any], Any]:
    """How the kernels borrow what they only read (gradients, sparse indices).

    A backend's read-only view, which is not a write (torch does not bump the gradient's
    autograd version, so a graph that saved `p.grad` still differentiates after the step);
    `as_numpy_view` for a backend without one.
    """
    return getattr(backend, "as_read_only_numpy_view", None) or backend.as_numpy_view


def _read_only(array: Any) -> Any:
    """`array` as a read-only ndarray (a view if it was writable): the sparse kernels are
    compiled for read-only gradients and indices, and one type per argument keeps them from
    compiling a second specialization."""
    if isinstance(array, np.ndarray) and array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


_size_of, _dtype_of = attrgetter("size"), attrgetter("dtype")
_c_contiguous = attrgetter("flags.c_contiguous")


def _offsets(sizes: list[int]) -> np.ndarray:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


# --- plans: what a group of variables needs, computed once --------------------------------------
class _Plan:
    """The address table of a group's variables and slots, and which variables it leaves out.

    Plans are cached under the identity of the NumPy views of x, m and v. A weak reference to
    every view drops the plan as soon as one of them is freed, so an identity is never confused
    with a later array's. (NumPy variables lend the same array every step; a backend lending
    fresh views gets a fresh plan each step, which is correct, only slower.)
    """

    __slots__ = ("dtype", "table", "offsets", "sizes", "fused", "left_out", "_refs")

    def __init__(
        self, key: tuple, views: tuple[list[Any], list[Any], list[Any]], dtype: np.dtype
    ) -> None:
        self.dtype = dtype
        self.fused: list[int] = []  # positions in the group that the kernel updates
        self.left_out: list[int] = []  # positions that take the reference kernel
        self.sizes: list[int] = []
        rows = []
        for position, (x, m, v) in enumerate(zip(*views, strict=True)):
            if all(_fusable(a, dtype, writable=True) for a in (x, m, v)) and (
                x.size == m.size == v.size
            ):
                self.fused.append(position)
                self.sizes.append(x.size)
                rows.append((_address(x), 0, _address(m), _address(v)))
            else:
                self.left_out.append(position)
        self.table = np.array(rows, dtype=np.int64).reshape(len(rows), 4)
        self.offsets = _offsets(self.sizes)

        def forget(_: Any, key: tuple = key) -> None:
            _plans.pop(key, None)

        self._refs = [weakref.ref(a, forget) for group in views for a in group
                      if isinstance(a, np.ndarray)]

    def with_gradients(self, g_views: list[Any]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """This step's (table, offsets, left-out positions), gradients filled in."""
        grads = [g_views[p] for p in self.fused] if self.left_out else g_views
        # The usual case, checked over all gradients at once: every one is usable.
        if (
            all(map(isinstance, grads, repeat(np.ndarray)))
            and all(map(is_, map(_dtype_of, grads), repeat(self.dtype)))
            and list(map(_size_of, grads)) == self.sizes
            and all(map(_c_contiguous, grads))
        ):
            addresses = np.fromiter(map(_address, grads), np.int64, len(grads))
            if not (addresses & (self.dtype.itemsize - 1)).any():
                table = self.table.copy()  # plans are shared; this step's gradients are not
                table[:, 1] = addresses
                return table, self.offsets, self.left_out
        # Some gradient is strided, unaligned, or not an array: it takes the reference kernel.
        rows, sizes, left_out = [], [], list(self.left_out)
        for row, (g, size) in enumerate(zip(grads, self.sizes, strict=True)):
            if _fusable(g, self.dtype, writable=False) and g.size == size:
                x_address, _, m_address, v_address = (int(a) for a in self.table[row])
                rows.append((x_address, _address(g), m_address, v_address))
                sizes.append(size)
            else:
                left_out.append(self.fused[row])
        return np.array(rows, dtype=np.int64).reshape(len(rows), 4), _offsets(sizes), left_out


_plans: dict[tuple, _Plan] = {}


def _plan_for(xs: list[Any], ms: list[Any], vs: list[Any], dtype: np.dtype) -> _Plan:
    key = (dtype, tuple(map(id, xs)), tuple(map(id, ms)), tuple(map(id, vs)))
    plan = _plans.get(key)
    if plan is None:
        plan = _Plan(key, (xs, ms, vs), dtype)
        if len(_plans) >= _MAX_PLANS:
            _plans.pop(next(iter(_plans)), None)
        _plans[key] = plan
    return plan


_pool = ChunkPool()


def set_num_threads(threads: int) -> None:
    """Use at most `threads` threads per step (default: every core this process may use).

    Example:
        >>> set_num_threads(1)  # every step on the calling thread alone
        >>> set_num_threads(get_num_threads())
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    _pool.threads = threads


def get_num_threads() -> int:
    """The most threads one step uses."""
    return _pool.threads


def _use_helpers(elements: int) -> bool:
    return elements >= PARALLEL_MIN_ELEMENTS and _pool.threads > 1


# --- the kernels --------------------------------------------------------------------------------
def apply_dense(
    backend: Any, xs: Sequence[Any], gs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
    s: NadamScalars,
) -> None:
    """One fused dense step over every variable of a group, in place.

    Variables whose arrays are not contiguous, aligned native float32/float64 memory (or whose
    gradient is not) take the reference kernel instead, so any input gives the right result.

    Example:
        >>> from nadam.backends import NUMPY_BACKEND
        >>> from nadam.nadam import nadam_scalars
        >>> s, _ = nadam_scalars(np.float32, iterations=0, momentum_cache=1.0)
        >>> x, m, v = np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)
        >>> apply_dense(NUMPY_BACKEND, [x], [np.ones(2, np.float32)], [m], [v], s)
        >>> x
        array([0.99894357, 0.99894357], dtype=float32)
    """
    dtype = s.lr.dtype
    if _compiled_module(dtype) is None:
        reference.apply_dense(backend, xs, gs, ms, vs, s)
        return
    view = backend.as_numpy_view
    plan = _plan_for(list(map(view, xs)), list(map(view, ms)), list(map(view, vs)), dtype)
    _run_dense(plan, backend, xs, gs, ms, vs, s)


def _run_dense(
    plan: _Plan, backend: Any, xs: Sequence[Any], gs: Sequence[Any], ms: Sequence[Any],
    vs: Sequence[Any], s: NadamScalars,
) -> None:
    dtype = plan.dtype
    compiled = _compiled_module(dtype)
    table, offsets, left_out = plan.with_gradients(list(map(_reader(backend), gs)))
    if table.shape[0]:
        scalars = np.array(s, dtype=dtype)
        total = int(offsets[-1])
        if _use_helpers(total):
            chunks = compiled.chunk_count(total, compiled.CHUNK)
            _pool.run(compiled.dense_chunks, (table, offsets, scalars), chunks,
                      compiled.finished_chunks)
        else:
            compiled.dense_serial(table, offsets, scalars)
    if left_out:
        reference.apply_dense(
            backend,
            [xs[p] for p in left_out],
            [gs[p] for p in left_out],
            [ms[p] for p in left_out],
            [vs[p] for p in left_out],
            s,
        )


class _PreparedDense:
    """`apply_dense` for one group whose variables and slots keep their memory: their views
    and address table are made once; each call reads only the gradients' addresses.

    Lending a writable view is a write for a framework that tracks them (torch's version
    counters), so each call marks the variables and slots written again (`Backend.mark_written`).
    """

    __slots__ = ("_backend", "_xs", "_ms", "_vs", "_plan", "_written", "_mark_written")

    def __init__(
        self, backend: Any, xs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
        dtype: np.dtype,
    ) -> None:
        view = backend.as_numpy_view
        views = (list(map(view, xs)), list(map(view, ms)), list(map(view, vs)))
        self._backend, self._xs, self._ms, self._vs = backend, list(xs), list(ms), list(vs)
        self._plan = _Plan(None, views, np.dtype(dtype))
        self._written = [*xs, *ms, *vs]
        self._mark_written = getattr(backend, "mark_written", None)

    def __call__(self, gs: Sequence[Any], s: NadamScalars) -> None:
        if self._mark_written is not None:
            self._mark_written(self._written)
        if s.lr.dtype != self._plan.dtype or _compiled_module(self._plan.dtype) is None:
            reference.apply_dense(self._backend, self._xs, gs, self._ms, self._vs, s)
            return
        _run_dense(self._plan, self._backend, self._xs, gs, self._ms, self._vs, s)


def prepare_dense(
    backend: Any, xs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any], dtype: np.dtype
) -> Callable[[Sequence[Any], NadamScalars], None]:
    """`apply_dense` bound to one group: the caller guarantees that `xs`, `ms` and `vs` keep
    their memory, shape and dtype for as long as it calls the result.

    Example:
        >>> from nadam.backends import NUMPY_BACKEND
        >>> from nadam.nadam import nadam_scalars
        >>> x, m, v = np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)
        >>> step = prepare_dense(NUMPY_BACKEND, [x], [m], [v], np.dtype(np.float32))
        >>> step([np.ones(2, np.float32)], nadam_scalars(np.float32, 0, 1.0)[0])
        >>> x
        array([0.99894357, 0.99894357], dtype=float32)
    """
    return _PreparedDense(backend, xs, ms, vs, dtype)


def apply_sparse(
    backend: Any, x: Any, g_rows: Any, indices: Any, m: Any, v: Any, s: NadamScalars
) -> None:
    """One fused sparse step of one variable (`indices` unique): m and v decay everywhere,
    the indexed rows get the gradient and only those rows of x move.

    Falls back to the reference kernel for memory the kernel cannot address directly.
    """
    dtype = s.lr.dtype
    compiled = _compiled_module(dtype)
    view, read = backend.as_numpy_view, _reader(backend)
    xv, mv, vv = view(x), view(m), view(v)
    gv, iv = _read_only(read(g_rows)), read(indices)
    usable = (
        compiled is not None
        and all(_fusable(a, dtype, writable=True) for a in (xv, mv, vv))
        and _fusable(gv, dtype, writable=False)
        and xv.ndim >= 1
        and xv.shape == mv.shape == vv.shape
        and isinstance(iv, np.ndarray)
        and iv.ndim == 1
        and iv.dtype.kind in "iu"
        and gv.shape == (iv.shape[0], *xv.shape[1:])
    )
    if not usable:
        reference.apply_sparse(backend, x, g_rows, indices, m, v, s)
        return
    rows = xv.shape[0]
    width = xv.size // rows if rows else 0
    iv = _read_only(np.ascontiguousarray(iv, dtype=np.int64))  # no copy for int64 indices
    # The kernel writes rows by index: an index out of range would write outside the array.
    if iv.size and (iv.min() < 0 or iv.max() >= rows):
        raise IndexError(f"sparse indices out of range for a variable with {rows} rows")
    scalars = np.array(s, dtype=dtype)
    x_flat, g_flat, m_flat, v_flat = (a.reshape(-1) for a in (xv, gv, mv, vv))
    if not _use_helpers(mv.size):
        compiled.sparse_serial(x_flat, g_flat, iv, m_flat, v_flat, width, scalars)
        return
    # Two jobs, because a row may only take its gradient once its m and v have decayed.
    _pool.run(compiled.decay_chunks, (m_flat, v_flat, scalars),
              compiled.chunk_count(mv.size, compiled.CHUNK), compiled.finished_chunks)
    _pool.run(compiled.sparse_rows_chunks, (x_flat, g_flat, iv, m_flat, v_flat, width, scalars),
              compiled.chunk_count(iv.size, compiled.rows_per_chunk(width)),
              compiled.finished_chunks)


_CHOICE = KernelChoice(NAME, apply_dense, apply_sparse, prepare_dense)
