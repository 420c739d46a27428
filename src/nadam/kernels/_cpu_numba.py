"""The compiled half of `nadam.kernels.cpu`: Nadam loops over raw CPU memory, built with numba.

Importing this module imports numba, so `kernels.cpu` imports it only when the first step on a
CPU group runs. Nothing here knows about backends or the optimizer: the dense kernels take a
table of memory addresses (one row of x, g, m, v per tensor) so that any number of tensors costs
one call, and the sparse kernels take flat arrays of one variable. Each step comes in a serial
form and a `*_chunks` form that several threads run together (`kernels._chunk_pool`); every
function releases the GIL.

Bit-identity with `kernels.reference` rests on four things: every element-wise operation is
written in the reference's order and in the arrays' dtype (the per-step scalars arrive in an
array of that dtype), numba's default strict floating point (no fastmath, so LLVM never
contracts a multiply and an add into an FMA nor turns a division into a reciprocal),
`error_model="numpy"` (IEEE results for division by zero, as NumPy, instead of exceptions,
which also lets the loops vectorize), and the processor's flush-to-zero mode.

TensorFlow runs its CPU kernels with the x86 MXCSR bits FTZ (a subnormal result becomes a zero
of its sign) and DAZ (a subnormal input reads as one) set; `kernels.reference` says where that
changes Nadam's results and models it op by op. These loops get it from the same hardware: each
entry point sets FTZ and DAZ in the thread that runs it and gives the caller back its own two
bits before returning, so every multiply, divide, add and square root in between flushes
exactly as TensorFlow's does, at no cost (a flush in software, a compare and a select per op,
halved the step's speed: the loops would no longer keep up with memory). Flushing in hardware
also decides underflow as x86 does: after rounding to the format's precision as if the exponent
were unbounded, so a product or quotient just below the smallest normal number that rounds up
to it survives and one that does not becomes 0, where IEEE rounding (with subnormals) gives the
smallest normal number in both cases. Memory barriers beside the mode switches keep LLVM, which
compiles for the default floating-point environment, from moving the loops' loads and stores
(hence their arithmetic) across them. The MXCSR is x86's: on other processors this module does
not load, and `kernels.cpu` leaves every step to the reference kernel.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

if platform.machine().lower() not in ("x86_64", "amd64"):
    raise ImportError(
        "the fused CPU kernel flushes subnormal numbers as TensorFlow does with x86's MXCSR "
        f"flush-to-zero mode, which this {platform.machine()} processor does not have"
    )

CHUNK = 1 << 16
"""Elements per work item shared between threads: big enough that claiming one costs nothing,
small enough to balance the threads over tensors of any size mix."""

# The order of the per-step scalars in the array the kernels receive (NadamScalars' order).
LR, BETA_1, BETA_2, ONE_MINUS_BETA_1, ONE_MINUS_BETA_2, EPSILON = range(6)
ONE_MINUS_MU_T, MU_T1, ONE_MINUS_PROD, ONE_MINUS_PROD1, V_CORRECTION = range(6, 11)

CACHE_PROBLEMS: list[str] = []
"""Why on-disk caching was turned off for a function (empty when caching works)."""


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`numba.njit` with the compiled code cached on disk, or uncached where that is impossible.

    numba caches next to this file, else in the user's cache directory (or NUMBA_CACHE_DIR);
    when none is writable (a read-only install and no writable home) it refuses `cache=True`
    at decoration time. Then every process compiles afresh: slower first step, same results.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError as error:  # "cannot cache function ...: no locator available"
            if not CACHE_PROBLEMS:
                warnings.warn(
                    f"nadam: cannot cache the compiled CPU kernel ({error}); each new process "
                    "compiles it again (a few seconds). Set NUMBA_CACHE_DIR to a writable "
                    "directory to avoid this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            CACHE_PROBLEMS.append(f"{func.__name__}: {error}")
            return numba.njit(cache=False, **options)(func)

    return decorate


_KERNEL_OPTIONS = {"error_model": "numpy", "nogil": True}


@intrinsic
def _pointer(typingctx: Any, address: Any, like: Any) -> Any:
    """A typed pointer to `address`, whose element type is that of array `like`."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(types.int64, like), codegen


# --- TensorFlow's floating-point mode: flush-to-zero and denormals-are-zero -----------------------
_FTZ_DAZ = 0x8040  # MXCSR bit 15 (flush to zero) and bit 6 (denormals are zero)


def _mxcsr_slot(builder: Any) -> tuple[Any, Any, Any]:
    """A stack slot for the MXCSR, a pointer to it, and LLVM's x86 load-MXCSR intrinsic; the
    register is read into the slot on the way."""
    pointer_type = ir.IntType(8).as_pointer()
    access = ir.FunctionType(ir.VoidType(), [pointer_type])
    store_mxcsr = cgutils.get_or_insert_function(builder.module, access, "llvm.x86.sse.stmxcsr")
    load_mxcsr = cgutils.get_or_insert_function(builder.module, access, "llvm.x86.sse.ldmxcsr")
    slot = cgutils.alloca_once(builder, ir.IntType(32))
    pointer = builder.bitcast(slot, pointer_type)
    builder.call(store_mxcsr, [pointer])
    return slot, pointer, load_mxcsr


def _memory_barrier(builder: Any) -> None:
    """No load or store moves across this point (an empty asm statement that clobbers memory)."""
    builder.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", [], side_effect=True)


@intrinsic
def _flush_subnormals(typingctx: Any) -> Any:
    """Set FTZ and DAZ in this thread's MXCSR; returns the MXCSR as it was, for
    `_restore_subnormals`. Every array access after it runs in TensorFlow's mode."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        slot, pointer, load_mxcsr = _mxcsr_slot(builder)
        before = builder.load(slot)
        builder.store(builder.or_(before, ir.Constant(ir.IntType(32), _FTZ_DAZ)), slot)
        builder.call(load_mxcsr, [pointer])
        _memory_barrier(builder)
        return before

    return types.uint32(), codegen


@intrinsic
def _restore_subnormals(typingctx: Any, before: Any) -> Any:
    """Give FTZ and DAZ back the values they had in `before` (`_flush_subnormals`' result),
    after every array access before it; the status flags keep what the kernel raised."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        _memory_barrier(builder)
        slot, pointer, load_mxcsr = _mxcsr_slot(builder)
        mode = ir.Constant(ir.IntType(32), _FTZ_DAZ)
        now = builder.load(slot)
        restored = builder.or_(builder.and_(now, builder.not_(mode)), builder.and_(args[0], mode))
        builder.store(restored, slot)
        builder.call(load_mxcsr, [pointer])
        return context.get_dummy_value()

    return types.void(types.uint32), codegen


@_jit(**_KERNEL_OPTIONS)
def _divides(a: Any, b: Any) -> bool:
    """Whether dividing by `a` and by `b` can change a value: not when both are exactly 1.

    The step is bound by its divisions where the arrays fit in cache (four and a square root
    per element). Two of the divisors, 1 - prod and 1 - prod * mu_t1, become exactly 1 once the
    momentum cache underflows to 0 (float32: from step ~111 at the default betas; float64:
    ~976), and 1 - beta_2 ** t does too (float32: step ~17000; float64: ~37000). Dividing by
    exactly 1 returns its argument (IEEE 754), so skipping it keeps every bit; LLVM moves the
    test out of the loop and vectorizes each variant. (In TensorFlow's mode the division would
    also flush a subnormal gradient to 0; skipped, the gradient goes on unflushed, but only into
    a multiplication, which reads it as 0 all the same.)
    """
    return a != 1 or b != 1


@_jit(**_KERNEL_OPTIONS)
def _dense_span(x: Any, g: Any, m: Any, v: Any, s: Any) -> None:
    # The loop runs from 0 over whole arrays: an index LLVM can prove non-negative needs no
    # wrap-around select, which is what lets it vectorize.
    lr, beta_1, beta_2, epsilon = s[LR], s[BETA_1], s[BETA_2], s[EPSILON]
    one_minus_beta_1, one_minus_beta_2 = s[ONE_MINUS_BETA_1], s[ONE_MINUS_BETA_2]
    one_minus_mu_t, mu_t1 = s[ONE_MINUS_MU_T], s[MU_T1]
    one_minus_prod, one_minus_prod1 = s[ONE_MINUS_PROD], s[ONE_MINUS_PROD1]
    v_correction = s[V_CORRECTION]
    # See `_divides`: once the bias corrections are exactly 1, their divisions are skipped.
    correct_moments = _divides(one_minus_prod, one_minus_prod1)
    correct_v = _divides(v_correction, v_correction)
    for i in range(x.shape[0]):
        gi = g[i]
        mi = beta_1 * m[i] + one_minus_beta_1 * gi
        vi = beta_2 * v[i] + one_minus_beta_2 * (gi * gi)
        if correct_moments:
            g_prime = gi / one_minus_prod
            m_prime = mi / one_minus_prod1
        else:
            g_prime, m_prime = gi, mi
        v_prime = vi / v_correction if correct_v else vi
        m_bar = one_minus_mu_t * g_prime + mu_t1 * m_prime
        x[i] = x[i] - lr * m_bar / (np.sqrt(v_prime) + epsilon)
        m[i] = mi
        v[i] = vi


@_jit(**_KERNEL_OPTIONS)
def _dense_range(table: Any, offsets: Any, lo: int, hi: int, s: Any) -> None:
    # Elements [lo, hi) of the tensors laid end to end; tensor t holds [offsets[t], offsets[t+1]).
    t = np.searchsorted(offsets, lo, side="right") - 1
    itemsize = s.itemsize
    while lo < hi:
        end = min(hi, offsets[t + 1])
        count = end - lo
        if count > 0:
            skip = (lo - offsets[t]) * itemsize
            _dense_span(
                carray(_pointer(table[t, 0] + skip, s), count),
                carray(_pointer(table[t, 1] + skip, s), count),
                carray(_pointer(table[t, 2] + skip, s), count),
                carray(_pointer(table[t, 3] + skip, s), count),
                s,
            )
        lo = end
        t += 1


# --- work shared between threads by claiming chunks ----------------------------------------------
# Entry points named `*_chunks` take `counters` (two int64: chunks claimed, chunks finished) and
# run on any number of threads at once: each thread claims the next chunk with an atomic
# increment until none is left. Unlike a fork-join parallel loop, the caller never waits for a
# thread that has not started: on a busy machine a helper that wakes late finds nothing left,
# and the step costs at most what one thread takes (see `kernels.cpu`). Every entry point runs
# its loops in TensorFlow's floating-point mode (`_flush_subnormals`), whichever thread runs it.


@intrinsic
def _fetch_add(typingctx: Any, address: Any, value: Any) -> Any:
    """Atomically add `value` to the int64 at `address`; returns the value before."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "seq_cst")

    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _load_acquire(typingctx: Any, address: Any) -> Any:
    """The int64 at `address`, read so that everything written before it was stored is seen."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(types.int64), codegen


@_jit(**_KERNEL_OPTIONS)
def chunk_count(items: int, per_chunk: int) -> int:
    """How many chunks a job of `items` has: the callers wait for exactly this many."""
    return (items + per_chunk - 1) // per_chunk


@_jit(**_KERNEL_OPTIONS)
def finished_chunks(counters: Any) -> int:
    """How many chunks of a job are finished, with their writes visible to the caller."""
    return _load_acquire(counters.ctypes.data + 8)


@_jit(**_KERNEL_OPTIONS)
def dense_chunks(table: Any, offsets: Any, s: Any, counters: Any) -> None:
    """Dense step over all tensors of `table` (rows: x, g, m, v addresses), CHUNK elements at a
    time, sharing the chunks with every other thread running it on the same `counters`."""
    total = offsets[offsets.shape[0] - 1]
    chunks = chunk_count(total, CHUNK)
    claimed, finished = counters.ctypes.data, counters.ctypes.data + 8
    mode = _flush_subnormals()
    while True:
        chunk = _fetch_add(claimed, 1)
        if chunk >= chunks:
            break
        lo = chunk * CHUNK
        _dense_range(table, offsets, lo, min(total, lo + CHUNK), s)
        _fetch_add(finished, 1)
    _restore_subnormals(mode)


@_jit(**_KERNEL_OPTIONS)
def dense_serial(table: Any, offsets: Any, s: Any) -> None:
    """`dense_chunks` on the calling thread alone: small groups do not wake other threads."""
    mode = _flush_subnormals()
    _dense_range(table, offsets, 0, offsets[offsets.shape[0] - 1], s)
    _restore_subnormals(mode)


@_jit(**_KERNEL_OPTIONS)
def _decay(a: Any, factor: Any) -> None:
    for i in range(a.shape[0]):
        a[i] = a[i] * factor


@_jit(**_KERNEL_OPTIONS)
def _sparse_row(x: Any, g: Any, m: Any, v: Any, s: Any) -> None:
    # One indexed row, after its m and v were decayed; `kernels.reference.sparse_step`'s order.
    negative_lr, epsilon = -s[LR], s[EPSILON]
    one_minus_beta_1, one_minus_beta_2 = s[ONE_MINUS_BETA_1], s[ONE_MINUS_BETA_2]
    one_minus_mu_t, mu_t1 = s[ONE_MINUS_MU_T], s[MU_T1]
    one_minus_prod, one_minus_prod1 = s[ONE_MINUS_PROD], s[ONE_MINUS_PROD1]
    v_correction = s[V_CORRECTION]
    correct_moments = _divides(one_minus_prod, one_minus_prod1)
    correct_v = _divides(v_correction, v_correction)
    for i in range(x.shape[0]):
        gi = g[i]
        mi = m[i] + gi * one_minus_beta_1
        if correct_moments:
            g_prime = gi / one_minus_prod
            m_prime = mi / one_minus_prod1
        else:
            g_prime, m_prime = gi, mi
        m_bar = one_minus_mu_t * g_prime + mu_t1 * m_prime
        vi = v[i] + (gi * gi) * one_minus_beta_2
        v_prime = vi / v_correction if correct_v else vi
        x[i] = x[i] + negative_lr * m_bar / (np.sqrt(v_prime) + epsilon)
        m[i] = mi
        v[i] = vi


@_jit(**_KERNEL_OPTIONS)
def _sparse_rows(x: Any, g: Any, indices: Any, m: Any, v: Any, width: int, lo: int, hi: int,
                 s: Any) -> None:
    for j in range(lo, hi):
        row = indices[j] * width
        gj = j * width
        _sparse_row(
            x[row:row + width], g[gj:gj + width], m[row:row + width], v[row:row + width], s
        )


@_jit(**_KERNEL_OPTIONS)
def rows_per_chunk(width: int) -> int:
    """How many rows of `width` elements make one chunk of `sparse_rows_chunks`."""
    return max(1, CHUNK // max(width, 1))


@_jit(**_KERNEL_OPTIONS)
def decay_chunks(m: Any, v: Any, s: Any, counters: Any) -> None:
    """The sparse step's first phase: m *= beta_1 and v *= beta_2 over the whole slots."""
    total = m.shape[0]
    chunks = chunk_count(total, CHUNK)
    claimed, finished = counters.ctypes.data, counters.ctypes.data + 8
    mode = _flush_subnormals()
    while True:
        chunk = _fetch_add(claimed, 1)
        if chunk >= chunks:
            break
        lo = chunk * CHUNK
        hi = min(total, lo + CHUNK)
        _decay(m[lo:hi], s[BETA_1])
        _decay(v[lo:hi], s[BETA_2])
        _fetch_add(finished, 1)
    _restore_subnormals(mode)


@_jit(**_KERNEL_OPTIONS)
def sparse_rows_chunks(x: Any, g: Any, indices: Any, m: Any, v: Any, width: int, s: Any,
                       counters: Any) -> None:
    """The sparse step's second phase, after `decay_chunks` finished: the indexed rows.

    x, m, v are flat (rows * width), g flat (len(indices) * width); `indices` must be unique
    and in range, because rows are updated by several threads at once.
    """
    rows = indices.shape[0]
    chunks = chunk_count(rows, rows_per_chunk(width))
    claimed, finished = counters.ctypes.data, counters.ctypes.data + 8
    mode = _flush_subnormals()
    while True:
        chunk = _fetch_add(claimed, 1)
        if chunk >= chunks:
            break
        lo = chunk * rows_per_chunk(width)
        _sparse_rows(x, g, indices, m, v, width, lo, min(rows, lo + rows_per_chunk(width)), s)
        _fetch_add(finished, 1)
    _restore_subnormals(mode)


@_jit(**_KERNEL_OPTIONS)
def sparse_serial(x: Any, g: Any, indices: Any, m: Any, v: Any, width: int, s: Any) -> None:
    """Both phases of the sparse step on the calling thread alone."""
    mode = _flush_subnormals()
    _decay(m, s[BETA_1])
    _decay(v, s[BETA_2])
    _sparse_rows(x, g, indices, m, v, width, 0, indices.shape[0], s)
    _restore_subnormals(mode)


def signatures(dtype: np.dtype) -> dict[Any, list[Any]]:
    """The exact signatures each entry point is compiled for, per float dtype."""
    real = numba.from_dtype(dtype)
    flat = types.Array(real, 1, "C")
    table = types.Array(types.int64, 2, "C")
    offsets = types.Array(types.int64, 1, "C")
    # The sparse kernels only read the gradient rows and the indices: read-only arrays, which
    # `kernels.cpu` lends without counting as a write (torch's autograd versions).
    rows = types.Array(real, 1, "C", readonly=True)
    indices = types.Array(types.int64, 1, "C", readonly=True)
    counters = types.Array(types.int64, 1, "C")
    dense = (table, offsets, flat)
    sparse = (flat, rows, indices, flat, flat, types.int64, flat)
    return {
        dense_serial: [types.void(*dense)],
        dense_chunks: [types.void(*dense, counters)],
        decay_chunks: [types.void(flat, flat, flat, counters)],
        sparse_serial: [types.void(*sparse)],
        sparse_rows_chunks: [types.void(*sparse, counters)],
    }


def compile_for(dtype: np.dtype) -> None:
    """Compile (or load from the on-disk cache) every entry point for `dtype`."""
    for dispatcher, sigs in signatures(np.dtype(dtype)).items():
        for sig in sigs:
            dispatcher.compile(sig)
    counters = types.Array(types.int64, 1, "C")
    finished_chunks.compile(types.int64(counters))
    rows_per_chunk.compile(types.int64(types.int64))
    chunk_count.compile(types.int64(types.int64, types.int64))
