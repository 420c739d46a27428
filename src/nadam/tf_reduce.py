"""TensorFlow's CPU sums, bit for bit: the reductions behind `clipnorm` and `global_clipnorm`.

Keras 2 clips with `tf.clip_by_norm`, whose norm is `sqrt(reduce_sum(t * t))`, and with
`tf.clip_by_global_norm`, whose norm is `sqrt(2 * reduce_sum(stack([l2_loss(t) ...])))`, where
`tf.nn.l2_loss(t)` is Eigen's `sum(t * t * 0.5)` in one expression. `np.sum` adds in another
order (pairwise, eight-way unrolled), which changes the last bit of such a sum in about a third
of the cases. The functions here add in TensorFlow's order:

- `square_sum(x)` is `tf.reduce_sum(x * x)` (the product is TensorFlow's `Mul` op, rounded and
  flushed element by element, then summed);
- `l2_loss(x)` is `tf.nn.l2_loss(x)`;
- `reduce_sum(x)` is `tf.reduce_sum(x)` over all axes.

The order is Eigen's full reduction (`unsupported/Eigen/CXX11/src/Tensor/TensorReduction.h`,
whose headers ship in the wheel), as compiled into TensorFlow 2.21's x86-64 CPU wheels, which are
built for AVX: a packet is 256 bits, 8 float32 or 4 float64 lanes, and 8 float16 lanes (computed
in float32). It was established against the live TensorFlow with 1 intra-op thread: this order
matched every random input of every size tried (up to 4M elements); packets of 4 or 16 float32
lanes, 8 or 16 float64 lanes, float16 summed in float32 or its lanes reduced in float16 each
disagreed on 19 to 73 % of them. tests/conformance/test_tf_reduce_oracle.py keeps checking it.
The order is the build's, not the machine's (this machine has AVX-512; the wheel uses AVX):
TensorFlow built for other targets (ARM's NEON: 4 float32 lanes; a source build with AVX-512:
16) adds in another order, and there these sums are the x86-64 wheels', within an ulp or so.

1. Tree. A range `[first, first + n)` with `n > packet * leaf` (leaf: 1024; 200 for float16)
   is split at `split = packet * ceil((first + ceil(n / 2)) / packet)`, the first packet
   boundary at or after its middle, and reduced as `(0 + reduce(left)) + reduce(right)`.
2. Leaf. Four packet accumulators run over blocks of four packets (accumulator k takes packet
   k of each block); they are folded as `((acc0 + acc1) + acc2) + acc3`; whole packets left
   over go into acc0; the last `n % packet` elements go one by one into a scalar that starts at
   0; the leaf's value is `scalar + predux(acc0)`, where predux adds the upper half of the lanes
   to the lower half until one is left (lane i + lane i+4, then i + i+2, then i + i+1).
3. float16. Every addition is done in float32 and rounded to float16 (Eigen's `half`), except
   predux, which adds the lanes in float32 and rounds once.
4. Flush to zero. TensorFlow's CPU kernels run with flush-to-zero and denormals-are-zero: a
   subnormal float32/float64 input reads as 0 and a subnormal result becomes 0 (float16 keeps
   its subnormals). `reduce_sum` of a single element copies it (no addition, nothing flushed).
5. Threads. On TensorFlow's intra-op thread pool, Eigen's cost model may cut the sum first into
   `k = min(threads, max(1, int((n * cost - 1e5) / 1e5 + 0.9)))` shards of `n // k` elements
   each reduced by the tree; the remainder `[k * (n // k), n)` is reduced first (0 if empty)
   and the shards' sums are added to it in order. `cost` is Eigen's estimate in cycles per
   element (TensorCostModel.h): `itemsize * 11 / 64 + (10 + ops) / packet`, with 10 the default
   functor cost that SumReducer gets and `ops` 0 for `reduce_sum` of a tensor, 2 for `l2_loss`
   (the square and the halving). Fitted by bisecting the shard counts of TensorFlow's results
   (float32 `reduce_sum` goes from 7 to 8 shards at n = 418,065: 1.9375 = 4 * 11/64 + 10/8
   cycles) and tested at 2 and 8 threads.

So TensorFlow's own result depends on its intra-op thread count from `first_sharded_size()`
elements on: `reduce_sum` (hence `clipnorm`) from 108,388 float32, 54,194 float64 and 131,765
float16 elements, `l2_loss` (`global_clipnorm`) from 96,000, 48,000 and 113,899. Below these
sizes, or with 1 intra-op thread, it is the same for any thread count. Every function here takes
`threads` (default 1, what the optimizer uses) and reproduces TensorFlow's result with that many
intra-op threads. Even 2 threads differ from 1 (the shards are the tree's own halves only when
`n / 2` is a whole number of packets, as for powers of two). The differences are rounding only:
at most about `2 h` units of roundoff of the sum, `h <= 270 + log2(n) + threads` being the most
additions any element goes through; measured at most 2 ulps of the sum, 1 ulp of its root.

Where numba is available the sums run compiled (`nadam._tf_reduce_numba`: one pass with the
square fused in, faster than `np.sum(x * x)` and about as fast as `np.sum(x)`); otherwise, and
for `reduce_sum` of arrays with negative elements, the NumPy reference below, with the same
bits.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

SUM, SQUARE, HALF_SQUARE = 0, 1, 2
"""What is summed: the elements, their squares (`reduce_sum(x * x)`), their squares times 0.5
(`l2_loss`)."""

_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Eigen's cost model (TensorCostModel.h): cycles per byte loaded, and the startup and per-thread
# costs that decide how many threads a full reduction gets.
_LOAD_CYCLES = 1.0 / 64 * 11
_STARTUP_CYCLES = 100000
_PER_THREAD_CYCLES = 100000
# Eigen's default functor cost, which SumReducer has; each element-wise op of l2_loss costs 1.
_REDUCER_COST = 10
_EXPRESSION_OPS = {SUM: 0, SQUARE: 0, HALF_SQUARE: 2}


def packet_size(dtype: np.dtype) -> int:
    """Lanes in one of Eigen's AVX packets: 8 float32, 4 float64, 8 float16."""
    dtype = np.dtype(dtype)
    return 8 if dtype == np.float16 else 32 // dtype.itemsize


def leaf_size(dtype: np.dtype) -> int:
    """Eigen's `LeafSize`: packets per leaf of the tree (1024; 200 for float16)."""
    return 200 if np.dtype(dtype) == np.float16 else 1024


def shards(n: int, dtype: np.dtype, mode: int, threads: int) -> int:
    """How many shards Eigen's thread-pool reducer cuts `n` elements into (see the module)."""
    if threads <= 1 or n == 0:
        return 1
    dtype = np.dtype(dtype)
    packet = packet_size(dtype)
    # The same double arithmetic as Eigen's, term by term, so boundary sizes agree exactly.
    compute = 0.0
    for _ in range(_EXPRESSION_OPS[mode]):
        compute += 1 / packet
    compute += _REDUCER_COST / packet
    cost = n * (_LOAD_CYCLES * dtype.itemsize + compute)
    wanted = (cost - _STARTUP_CYCLES) / _PER_THREAD_CYCLES + 0.9
    return min(threads, max(1, int(wanted)))


def first_sharded_size(dtype: np.dtype, mode: int) -> int:
    """The smallest size whose result may depend on TensorFlow's intra-op thread count."""
    low, high = 1, 1 << 40
    while low < high:
        mid = (low + high) // 2
        if shards(mid, dtype, mode, 2) > 1:
            high = mid
        else:
            low = mid + 1
    return low


# --- the public sums -------------------------------------------------------------------------


def reduce_sum(array: Any, *, threads: int = 1) -> np.generic:
    """`tf.reduce_sum(array)` over all axes, as TensorFlow's CPU kernel with `threads`
    intra-op threads computes it; a scalar of the array's dtype."""
    return _reduce(array, SUM, threads)


def square_sum(array: Any, *, threads: int = 1) -> np.generic:
    """`tf.reduce_sum(array * array)`: the squared L2 norm as `tf.clip_by_norm` takes it."""
    return _reduce(array, SQUARE, threads)


def l2_loss(array: Any, *, threads: int = 1) -> np.generic:
    """`tf.nn.l2_loss(array)`, `sum(array ** 2) / 2` in one reduction, as
    `tf.clip_by_global_norm` takes each tensor's share of the global norm."""
    return _reduce(array, HALF_SQUARE, threads)


def _reduce(array: Any, mode: int, threads: int, compiled: bool = True) -> np.generic:
    x = np.asarray(array)
    if x.dtype.kind == "f" and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in _DTYPES:
        raise TypeError(f"TensorFlow-order sums take float16, float32 or float64, not {x.dtype}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    flat = np.ascontiguousarray(x.reshape(-1))
    n = flat.shape[0]
    if mode == SUM and n == 1:
        # TensorFlow's reduce_sum copies a one-element input: no addition, nothing flushed.
        return flat[0]
    k = shards(n, x.dtype, mode, threads)
    size = n // k
    # Eigen's order of the pieces: the remainder after the k shards (if any), then the shards.
    pieces = [(k * size, n - k * size)] + [(i * size, size) for i in range(k)]
    # The compiled kernel never flushes a partial sum, which is exact when no summand is
    # negative (then none is subnormal); other sums run in NumPy.
    module = _compiled() if compiled else None
    if module is not None and mode == SUM and bool((flat < 0).any()):
        module = None
    if module is not None:
        consts = _consts(x.dtype)
        data = flat.view(np.uint16) if x.dtype == np.float16 else flat
        results = [
            x.dtype.type(module.tree(data, first, count, mode, consts) if count else 0)
            for first, count in pieces
        ]
    else:
        results = _reference_pieces(flat, mode, pieces)
    return _combine(results, pieces, x.dtype)


def reference(array: Any, mode: int, threads: int = 1) -> np.generic:
    """The same sum by the NumPy reference alone, whether or not numba is there (for tests)."""
    return _reduce(array, mode, threads, compiled=False)


def _combine(results: list, pieces: list, dtype: np.dtype) -> np.generic:
    """The pieces' sums in Eigen's thread-pool order (remainder or 0, then each shard); one
    shard is the whole tree, with nothing added."""
    if len(pieces) == 2 and pieces[0][1] == 0:
        return dtype.type(results[1])
    acc = results[0]
    for value in results[1:]:
        acc = _add(acc, value, dtype)
    return dtype.type(acc)


# --- the compiled path ------------------------------------------------------------------------

_module: Any = None
_failure: str | None = None


def _compiled() -> Any:
    """`nadam._tf_reduce_numba`, imported the first time; None (after one warning) if numba is
    missing or broken, and the NumPy reference runs instead."""
    global _module, _failure
    if _module is None and _failure is None:
        try:
            _module = importlib.import_module("nadam._tf_reduce_numba")
        except Exception as error:  # noqa: BLE001 - any failure to load means: use NumPy
            _failure = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"nadam: numba is unavailable ({_failure}); gradient norms are summed in "
                "TensorFlow's order by NumPy instead (same bits, slower on large arrays).",
                RuntimeWarning,
                stacklevel=4,
            )
    return _module


_CONSTS: dict[np.dtype, np.ndarray] = {}


def _consts(dtype: np.dtype) -> np.ndarray:
    """The kernel's scalars in its arithmetic type: 0.5, the smallest normal number (below it
    TensorFlow flushes to zero; float16 keeps its subnormals), 0."""
    consts = _CONSTS.get(dtype)
    if consts is None:
        if dtype == np.float16:
            consts = np.array([0.5, 0.0, 0.0], np.float32)
        else:
            consts = np.array([0.5, np.finfo(dtype).tiny, 0.0], dtype)
        consts.flags.writeable = False
        _CONSTS[dtype] = consts
    return consts


# --- the NumPy reference ---------------------------------------------------------------------
# The same order in NumPy, the readable statement of it: each leaf's lanes are array columns,
# and all leaves of one length are reduced together (a tree has at most a few lengths).


def _flush(values: Any, dtype: np.dtype) -> Any:
    """Subnormal to a zero of the same sign (float32/float64; float16 keeps subnormals)."""
    if dtype == np.float16:
        return values
    values = np.asarray(values)
    return np.where(np.abs(values) < np.finfo(dtype).tiny, values * 0, values)


def _add(a: Any, b: Any, dtype: np.dtype) -> Any:
    # NumPy's float16 addition is Eigen's: in float32, rounded to float16.
    with np.errstate(over="ignore", invalid="ignore"):
        return _flush(a + b, dtype)


def _terms(flat: np.ndarray, mode: int) -> np.ndarray:
    dtype = flat.dtype
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        terms = _flush(flat, dtype)
        if mode != SUM:
            terms = _flush(terms * terms, dtype)
        if mode == HALF_SQUARE:
            terms = _flush(terms * dtype.type(0.5), dtype)
    return np.asarray(terms, dtype)


def _predux(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Lanes (last axis) added upper half onto lower half down to one: float16 in float32."""
    lanes = acc.astype(np.float32) if dtype == np.float16 else acc
    while lanes.shape[-1] > 1:
        half = lanes.shape[-1] // 2
        with np.errstate(over="ignore", invalid="ignore"):
            lanes = _flush(lanes[..., :half] + lanes[..., half:], dtype)
    return lanes[..., 0].astype(dtype)


def _leaves(rows: np.ndarray) -> np.ndarray:
    """Eigen's vectorized inner reducer over each row of `rows` (leaves of one length)."""
    dtype = rows.dtype
    packet = packet_size(dtype)
    width = 4 * packet
    count, n = rows.shape
    zeros = np.zeros((count, width), dtype)
    quads, packets = n // width, n // packet
    acc = zeros
    for b in range(quads):
        acc = _add(acc, rows[:, b * width : (b + 1) * width], dtype)
    first = acc[:, :packet]
    if quads:
        for k in range(1, 4):
            first = _add(first, acc[:, k * packet : (k + 1) * packet], dtype)
    for b in range(quads * 4, packets):
        first = _add(first, rows[:, b * packet : (b + 1) * packet], dtype)
    scalar = zeros[:, 0]
    for j in range(packets * packet, n):
        scalar = _add(scalar, rows[:, j], dtype)
    return _add(scalar, _predux(first, dtype), dtype)


def _split(first: int, n: int, dtype: np.dtype) -> int | None:
    """Where the tree splits [first, first + n): the first packet boundary at or after the
    middle; None for a leaf."""
    packet = packet_size(dtype)
    if n <= packet * leaf_size(dtype):
        return None
    return packet * -(-(first + -(-n // 2)) // packet)


def _tree_ranges(first: int, n: int, dtype: np.dtype, out: list) -> None:
    """Append the leaves of the tree over [first, first + n) to `out`, in order."""
    split = _split(first, n, dtype)
    if split is None:
        out.append((first, n))
        return
    left = min(split - first, n)
    _tree_ranges(first, left, dtype, out)
    if left < n:
        _tree_ranges(split, n - left, dtype, out)


def _tree_value(first: int, n: int, dtype: np.dtype, leaf: Callable[[int], Any]) -> Any:
    """The tree's sum over [first, first + n), given `leaf(start)`, each leaf's sum."""
    split = _split(first, n, dtype)
    if split is None:
        return leaf(first)
    left = min(split - first, n)
    acc = _add(dtype.type(0), _tree_value(first, left, dtype, leaf), dtype)
    if left < n:
        acc = _add(acc, _tree_value(split, n - left, dtype, leaf), dtype)
    return acc


def _reference_pieces(flat: np.ndarray, mode: int, pieces: list) -> list:
    """Each piece's tree sum (0 for an empty piece)."""
    dtype = flat.dtype
    terms = _terms(flat, mode)
    ranges: list[tuple[int, int]] = []
    for first, count in pieces:
        if count:
            _tree_ranges(first, count, dtype, ranges)
    values: dict[int, Any] = {}
    for length in {count for _, count in ranges}:
        starts = np.array([first for first, count in ranges if count == length], np.int64)
        rows = terms[starts[:, None] + np.arange(length)]
        for start, value in zip(starts.tolist(), _leaves(rows), strict=True):
            values[start] = value
    return [
        _tree_value(first, count, dtype, values.__getitem__) if count else dtype.type(0)
        for first, count in pieces
    ]


__all__ = [
    "HALF_SQUARE",
    "SQUARE",
    "SUM",
    "first_sharded_size",
    "l2_loss",
    "leaf_size",
    "packet_size",
    "reduce_sum",
    "reference",
    "shards",
    "square_sum",
]
