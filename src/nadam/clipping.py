"""Gradient clipping, as Keras applies it inside `apply_gradients`, on any backend.

Each function takes `(backend, gradient)` items, where a gradient is a validated `DenseGrad`
or `SparseGrad`, and returns new gradients without touching the inputs. For sparse gradients
the clipping acts on the values, as TensorFlow's clip ops do for IndexedSlices.

The norms are TensorFlow's, op for op (tensorflow/python/ops/clip_ops.py): `tf.clip_by_norm`
sums `t * t` with `reduce_sum`; `tf.clip_by_global_norm` takes each tensor's `l2_loss` (the
squares' sum halved, in one reduction), sums those with `reduce_sum` and doubles the total
before the square root. The backends add in TensorFlow's CPU order (`nadam.tf_reduce`), so the
norms, and with them the clipped gradients, are Keras's bit for bit (torch tensors on a device:
within an ulp, in torch's order).

TensorFlow's CPU kernels flush to zero (FTZ/DAZ) in float32 and float64, and so does every op
here, as `nadam.kernels.reference` models them: a subnormal gradient entry reads as 0 (in the
clamp too), and a product or quotient that underflows is 0, x86's rounding window included; the
scalar ops of the global norm's scale are `nadam.tf_math`'s. Only gradients with an entry small
enough for that to matter pay for it, found by one comparison per entry (on a device, where
that test would wait for it, the flushing ops always run). float16 keeps its subnormals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nadam import tf_math, tf_reduce
from nadam.backends.base import DenseGrad, SparseGrad
from nadam.kernels import reference

Gradient = DenseGrad | SparseGrad


def _values(grad: Gradient) -> Any:
    return grad.array if isinstance(grad, DenseGrad) else grad.values


def _replace(grad: Gradient, values: Any) -> Gradient:
    if isinstance(grad, DenseGrad):
        return DenseGrad(values)
    return SparseGrad(values, grad.indices)


def _dtype_of(grad: Gradient) -> np.dtype:
    values = _values(grad)
    dtype = values.dtype
    # torch dtypes are converted by name so that this module never imports torch.
    return np.dtype(dtype) if isinstance(dtype, np.dtype) else np.dtype(str(dtype).split(".")[-1])


def _on_device(values: Any) -> bool:
    # A torch tensor off the CPU (NumPy arrays have no device, or the string "cpu").
    return getattr(getattr(values, "device", None), "type", "cpu") != "cpu"


def _has_small(values: Any, bound: float) -> bool:
    """Whether an entry is nonzero and below `bound` in magnitude: the entries that TensorFlow's
    flushing can change (always True on a device, where asking would wait for it)."""
    if _on_device(values):
        return True
    magnitude = abs(values)
    small = magnitude < bound
    if not small.any():
        return False
    return bool((small & (magnitude > 0)).any())


def _mul(backend: Any, values: Any, factor: np.generic, flushing: bool) -> Any:
    """TensorFlow's `values * factor` for flushed values and a flushed scalar factor: the
    product, 0 where x86 underflows (`reference.mul`'s test, with the factor folded in)."""
    product = backend.scale(values, factor)
    if not flushing:
        return product
    scale = reference.underflow_scale(values.dtype)
    folded = scale * min(abs(float(factor)), 2.0)  # exact: a power of two times the factor
    return product * (abs(values).clip(max=2.0) * folded >= 0.25)


def _div(backend: Any, values: Any, divisor: np.generic, flushing: bool) -> Any:
    """TensorFlow's `values / divisor` for flushed values and a flushed scalar divisor, as
    `reference.div`."""
    quotient = backend.divide(values, divisor)
    if not flushing:
        return quotient
    scale = reference.underflow_scale(values.dtype)
    clamped = type(divisor)(max(abs(float(divisor)), 0.5))
    return quotient * (backend.divide(abs(values).clip(max=4.0) * scale, clamped) >= 0.25)


def clip_by_value(backend: Any, grad: Gradient, clipvalue: float) -> Gradient:
    """Clamp every entry to [-clipvalue, clipvalue] (TensorFlow's `minimum`, then `maximum`,
    which read a subnormal entry as a zero of its sign)."""
    values = _values(grad)
    c = tf_math.flush(_dtype_of(grad).type(clipvalue))
    tiny = reference.smallest_normal(values.dtype)
    if tiny is not None and _has_small(values, tiny):
        values = reference.flush(values)
    return _replace(grad, backend.clip(values, -c, c))


def clip_by_norm(
    backend: Any, grad: Gradient, clipnorm: float, square_sum: np.generic | None = None
) -> Gradient:
    """Scale one gradient so its L2 norm is at most `clipnorm`: `g * c / max(norm, c)`.

    `square_sum`, if given, is the squares' sum of the whole tensor that `grad` is one shard
    of (summed over the shards by the caller); otherwise it is `grad`'s own.
    """
    dtype = _dtype_of(grad)
    values = _values(grad)
    c = tf_math.flush(dtype.type(clipnorm))
    if square_sum is None:
        square_sum = backend.square_sum(values)
    square_sum = dtype.type(square_sum)  # reduce_sum(t * t), flushed
    # TensorFlow's `where(l2sum > 0, sqrt(l2sum), l2sum)`: a zero (or NaN) sum is kept as is.
    norm = np.sqrt(square_sum) if square_sum > 0 else square_sum
    divisor = np.maximum(norm, c)
    tiny = reference.smallest_normal(values.dtype)
    flushing = False
    if tiny is not None and c != 0:
        # Entries that are subnormal, or whose product or quotient may underflow.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            bound = max(tiny, 2 * tiny / float(c), 2 * tiny * float(divisor) / float(c))
        flushing = _has_small(values, bound)
        if flushing:
            values = reference.flush(values)
    # Keras multiplies first and divides second; the order matters for the last bit.
    scaled = _mul(backend, values, c, flushing)
    return _replace(grad, _div(backend, scaled, divisor, flushing))


def global_norm(
    items: Sequence[tuple[Any, Gradient]],
    half_square_sums: Sequence[np.generic | None] | None = None,
) -> np.generic:
    """The L2 norm of all gradients together, as `tf.linalg.global_norm`:
    `sqrt(2 * reduce_sum([l2_loss(g) for g]))`, in the gradients' common dtype (float64 if
    they are mixed, where TensorFlow would refuse to stack them).

    `half_square_sums[i]`, where given (not None), is the `l2_loss` of the whole tensor that
    gradient `i` is one shard of, summed over the shards by the caller.
    """
    dtypes = {_dtype_of(grad) for _, grad in items}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
    given = half_square_sums or [None] * len(items)
    half_squares = np.array(
        [
            backend.half_square_sum(_values(grad)) if total is None else total
            for (backend, grad), total in zip(items, given, strict=True)
        ],
        dtype=dtype,
    )
    total = tf_reduce.reduce_sum(half_squares)
    with np.errstate(over="ignore"):  # an overflow to inf is TensorFlow's result too
        return np.sqrt(total * dtype.type(2))


def clip_by_global_norm(
    items: Sequence[tuple[Any, Gradient]],
    clipnorm: float,
    half_square_sums: Sequence[np.generic | None] | None = None,
) -> list[Gradient]:
    """Scale all gradients by `c / max(global_norm, c)` (NaN everywhere if the norm is inf);
    `half_square_sums` as for `global_norm`."""
    norm = global_norm(items, half_square_sums)
    dtype = norm.dtype
    c = dtype.type(clipnorm)
    one = dtype.type(1)
    # TensorFlow's scalar ops, flushed as its kernels flush them: 1 / norm is 0 for a norm
    # above the reciprocal of the smallest normal number, not a subnormal.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = tf_math.mul(c, np.minimum(tf_math.div(one, norm), tf_math.div(one, c)))
        # inf - inf = NaN marks a non-finite norm, as in Keras
        scale = tf_math.add(scale, tf_math.sub(norm, norm))
    clipped = []
    for backend, grad in items:
        values = _values(grad)
        factor = tf_math.cast(scale, _dtype_of(grad))
        tiny = reference.smallest_normal(values.dtype)
        flushing = False
        if tiny is not None and factor != 0 and np.isfinite(factor):
            flushing = _has_small(values, max(tiny, 2 * tiny / abs(float(factor))))
            if flushing:
                values = reference.flush(values)
        clipped.append(_replace(grad, _mul(backend, values, factor, flushing)))
    return clipped
