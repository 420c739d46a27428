"""The compiled half of `nadam.tf_reduce`: Eigen's full-reduction tree, compiled by numba.

Importing this module imports numba, so `tf_reduce` imports it only when the first norm is
taken. `tf_reduce` states the order (and holds it in NumPy, the reference these loops are
tested against); here it is written for speed: one pass over the data with the square (and the
halving) fused in, each block's lanes updated together so that LLVM vectorizes across them.

Bit-identity rests on numba's default strict floating point (no fastmath: LLVM vectorizes
*across* the independent lanes and never reassociates within one) and on every addition being
written in Eigen's order. float16 arrives as its bit pattern (uint16; numba has no float16
arithmetic) and is computed as Eigen computes `half`: each value widened to float32, each
operation done in float32 and rounded back to float16 (LLVM's fpext/fptrunc; F16C on x86).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nadam.kernels._cpu_numba import _jit

_OPTIONS = {"error_model": "numpy", "nogil": True}

# Modes: what is summed (the terms), matching `tf_reduce`'s.
SUM, SQUARE, HALF_SQUARE = 0, 1, 2


@intrinsic
def _widen(typingctx: Any, value: Any) -> Any:
    """An element as the type its arithmetic runs in: float16 bits (uint16) -> float32."""
    if isinstance(value, types.Integer) and value.bitwidth == 16:

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(value), codegen
    if isinstance(value, types.Float):

        def identity(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return args[0]

        return value(value), identity
    return None


@intrinsic
def _narrow(typingctx: Any, value: Any, mark: Any) -> Any:
    """Round an arithmetic result to the storage type that `mark` (an element) stands for:
    float16 for float16 bits (uint16; the result stays in a float32), as Eigen rounds each
    `half` operation; identity for float32 and float64."""
    if not isinstance(value, types.Float):
        return None
    if isinstance(mark, types.Integer):

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

        return value(value, mark), codegen

    def identity(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return args[0]

    return value(value, mark), identity


@intrinsic
def _mark(typingctx: Any, array: Any) -> Any:
    """A zero element of `array`'s type: the scalar the helpers below dispatch on (passing
    the array itself into per-element calls would cost a reference count each)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return context.get_constant(array.dtype, 0)

    return array.dtype(array), codegen


# `consts` is an array of the arithmetic type (float32 for float16 data) holding these scalars.
HALF, TINY, ZERO = 0, 1, 2


@_jit(**_OPTIONS)
def _term(v: Any, mode: int, half: Any, tiny: Any, zero: Any) -> Any:
    # One summand: the element (SUM), its square (SQUARE: TensorFlow's `x * x`) or the square
    # times 0.5 (HALF_SQUARE: tf.nn.l2_loss's expression), each operation rounded to the
    # storage type and a subnormal input or result flushed to 0 (`tiny` is 0 for float16,
    # which keeps its subnormals).
    t = _widen(v)
    if mode == SUM:
        return t * zero if abs(t) < tiny else t
    t = _narrow(t * t, v)
    if mode == HALF_SQUARE:
        t = _narrow(t * half, v)
    if t < tiny:
        t = zero
    return t


# The additions need no flush to zero as long as no summand is negative (squares; `tf_reduce`
# sends other sums elsewhere): every summand is then 0 or at least the smallest normal number,
# so no partial sum is subnormal. `_narrow` rounds a float16 sum back to float16.


@_jit(**_OPTIONS)
def _leaf(y: Any, mode: int, consts: Any) -> Any:
    """Eigen's vectorized inner reducer over one leaf `y` (InnerMostDimReducer, no tree)."""
    half, tiny, zero, mark = consts[HALF], consts[TINY], consts[ZERO], _mark(y)
    packet = 8 if y.itemsize == 2 else 32 // y.itemsize
    width = 4 * packet
    n = y.shape[0]
    acc = np.zeros(width, consts.dtype)
    quads = n // width
    if quads > 0:
        # Four packet accumulators over blocks of four packets ...
        blocks = y[: quads * width].reshape((quads, width))
        for b in range(quads):
            for lane in range(width):
                term = _term(blocks[b, lane], mode, half, tiny, zero)
                acc[lane] = _narrow(acc[lane] + term, mark)
        # ... folded into the first: ((p0 + p1) + p2) + p3.
        for k in range(1, 4):
            for lane in range(packet):
                acc[lane] = _narrow(acc[lane] + acc[k * packet + lane], mark)
    # Whole packets left over go into the first accumulator.
    packets = n // packet
    if packets > quads * 4:
        rest = y[quads * width : packets * packet].reshape((packets - quads * 4, packet))
        for b in range(packets - quads * 4):
            for lane in range(packet):
                term = _term(rest[b, lane], mode, half, tiny, zero)
                acc[lane] = _narrow(acc[lane] + term, mark)
    # The last n % packet elements, one by one into a scalar that starts at 0.
    scalar = zero
    tail = y[packets * packet :]
    for j in range(tail.shape[0]):
        scalar = _narrow(scalar + _term(tail[j], mode, half, tiny, zero), mark)
    # predux: lane i += lane i + step, halving down to one lane. For float16 Eigen adds the
    # lanes in float32 and rounds once, at the end.
    step = packet // 2
    while step >= 1:
        for lane in range(step):
            acc[lane] = acc[lane] + acc[lane + step]
        step //= 2
    return _narrow(scalar + _narrow(acc[0], mark), mark)


@_jit(**_OPTIONS)
def tree(x: Any, first: int, n: int, mode: int, consts: Any) -> Any:
    """Elements [first, first + n) of `x` (mode SUM, none negative), their squares (SQUARE)
    or half squares (HALF_SQUARE), summed in Eigen's tree order (see tf_reduce): above
    `packet * leaf` elements, split at the first packet boundary at or after the middle."""
    packet = 8 if x.itemsize == 2 else 32 // x.itemsize
    leaf = 200 if x.itemsize == 2 else 1024
    if n <= packet * leaf:
        return _leaf(x[first : first + n], mode, consts)
    split = packet * ((first + (n + 1) // 2 + packet - 1) // packet)
    left = min(split - first, n)
    mark = _mark(x)
    acc = _narrow(consts[ZERO] + tree(x, first, left, mode, consts), mark)
    if left < n:
        acc = _narrow(acc + tree(x, split, n - left, mode, consts), mark)
    return acc
