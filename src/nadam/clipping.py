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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nadam import tf_reduce
from nadam.backends.base import DenseGrad, SparseGrad

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


def clip_by_value(backend: Any, grad: Gradient, clipvalue: float) -> Gradient:
    """Clamp every entry to [-clipvalue, clipvalue]."""
    c = _dtype_of(grad).type(clipvalue)
    return _replace(grad, backend.clip(_values(grad), -c, c))


def clip_by_norm(backend: Any, grad: Gradient, clipnorm: float) -> Gradient:
    """Scale one gradient so its L2 norm is at most `clipnorm`: `g * c / max(norm, c)`."""
    dtype = _dtype_of(grad)
    c = dtype.type(clipnorm)
    square_sum = dtype.type(backend.square_sum(_values(grad)))  # reduce_sum(t * t)
    # TensorFlow's `where(l2sum > 0, sqrt(l2sum), l2sum)`: a zero (or NaN) sum is kept as is.
    norm = np.sqrt(square_sum) if square_sum > 0 else square_sum
    # Keras multiplies first and divides second; the order matters for the last bit.
    scaled = backend.scale(_values(grad), c)
    return _replace(grad, backend.divide(scaled, np.maximum(norm, c)))


def global_norm(items: Sequence[tuple[Any, Gradient]]) -> np.generic:
    """The L2 norm of all gradients together, as `tf.linalg.global_norm`:
    `sqrt(2 * reduce_sum([l2_loss(g) for g]))`, in the gradients' common dtype (float64 if
    they are mixed, where TensorFlow would refuse to stack them)."""
    dtypes = {_dtype_of(grad) for _, grad in items}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
    half_squares = np.array(
        [backend.half_square_sum(_values(grad)) for backend, grad in items], dtype=dtype
    )
    total = tf_reduce.reduce_sum(half_squares)
    with np.errstate(over="ignore"):  # an overflow to inf is TensorFlow's result too
        return np.sqrt(total * dtype.type(2))


def clip_by_global_norm(
    items: Sequence[tuple[Any, Gradient]], clipnorm: float
) -> list[Gradient]:
    """Scale all gradients by `c / max(global_norm, c)` (NaN everywhere if the norm is inf)."""
    norm = global_norm(items)
    dtype = norm.dtype
    c = dtype.type(clipnorm)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = c * np.minimum(dtype.type(1) / norm, dtype.type(1) / c)
        scale = scale + (norm - norm)  # inf - inf = NaN marks a non-finite norm, as in Keras
    clipped = []
    for backend, grad in items:
        factor = _dtype_of(grad).type(scale)
        clipped.append(_replace(grad, backend.scale(_values(grad), factor)))
    return clipped
