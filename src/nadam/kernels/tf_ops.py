"""The Nadam step in TensorFlow ops, for Keras 3's TensorFlow backend (`nadam.keras`).

Keras 2's Nadam is a sequence of TensorFlow ops; writing the same ops in the same order gives
the same bits, because they are the same CPU kernels: the C library's `pow`, flush-to-zero and
denormals-are-zero included (`kernels.reference` says where TensorFlow flushes). So here the
scalars are `step_scalars.scalar_rule` itself, run on TensorFlow ops, and every element-wise
op follows `kernels.reference`, op for op, with nothing to emulate. The functions are pure
(they return new tensors) and trace inside `tf.function`, which `model.fit` uses;
`iterations` may be a symbolic tensor.

`g * g` is written `tf.square(g)` (one op, the same bits): inside `tf.function` Grappler's
arithmetic optimizer reorders a chain of multiplications by a scalar, `c * (g * g)` into
`(c * g) * g`, which changes bits; a `Square` is not a multiplication it reorders (Keras 2's
dense step uses it too).

Not under XLA (`jit_compile=True`): XLA contracts `a * b + c` into a fused multiply-add and
rewrites a division by a broadcast scalar, which changes bits (Keras 3 leaves XLA off on
CPU-only machines).

The API is the one `kernels.xla` has for the JAX backend: `nadam_scalars`,
`decayed_learning_rate`, `dense_update` and `sparse_update`.

Example:
    >>> import tensorflow as tf
    >>> s, cache = nadam_scalars(0, tf.constant(1.0), 0.001, 0.9, 0.999, 1e-7, 0.004,
    ...                          tf.float32)
    >>> one = tf.ones([2])
    >>> print(dense_update(one, one, 0 * one, 0 * one, s)[0].numpy())
    [0.99894357 0.99894357]
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from nadam.kernels import NadamScalars
from nadam.step_scalars import ScalarOps, decayed_learning_rate_rule, scalar_rule


def _hyper(value: Any, dtype: tf.DType) -> tf.Tensor:
    """A hyperparameter in `dtype` as Keras 2 reads it: a Python number goes through float32
    (its hyper variable) and is then cast, a tensor is cast."""
    if isinstance(value, numbers.Real) and not isinstance(value, np.generic):
        value = np.float32(value)
    return tf.cast(value, dtype)


class _TFOps(ScalarOps[tf.Tensor]):
    """The scalar rule (`step_scalars.scalar_rule`) in TensorFlow ops of `dtype`: the very
    kernels Keras 2 runs, so every op is plain (TensorFlow rounds and flushes them itself)."""

    def __init__(self, dtype: tf.DType) -> None:
        self.dtype = dtype

    def const(self, value: Any) -> tf.Tensor:
        if isinstance(value, np.generic):
            return tf.cast(value, self.dtype)  # Keras casts its float32 0.96
        return tf.constant(value, self.dtype)

    def hyper(self, value: Any) -> tf.Tensor:
        return _hyper(value, self.dtype)

    def direct(self, value: Any) -> tf.Tensor:
        return tf.constant(value, self.dtype)

    def step(self, iterations: tf.Tensor, offset: int) -> tf.Tensor:
        return tf.cast(iterations + offset if offset else iterations, self.dtype)

    def cast(self, value: Any) -> tf.Tensor:
        return tf.cast(value, self.dtype)

    def mul(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return a * b

    def one_minus(self, x: tf.Tensor) -> tf.Tensor:
        return tf.constant(1, self.dtype) - x

    def add(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return a + b

    def div(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return a / b

    def pow(self, base: tf.Tensor, exponent: tf.Tensor) -> tf.Tensor:
        return tf.pow(base, exponent)

    def if_positive(
        self, x: tf.Tensor, then: Callable[[], tf.Tensor], otherwise: tf.Tensor
    ) -> tf.Tensor:
        # Decided while tracing, as Keras 2 decides it on its Python `decay`: the value is a
        # constant of the graph (a host number cast), which the traced step then need not
        # carry; a decay known only at run time is selected in the graph.
        value = tf.get_static_value(x)
        if value is None:
            return tf.where(x > 0, then(), otherwise)
        return then() if value > 0 else otherwise


def decayed_learning_rate(
    learning_rate: Any, decay: Any, iterations: Any, dtype: tf.DType
) -> tf.Tensor:
    """`lr / (1 + decay * iterations)` in `dtype` (`step_scalars.decayed_learning_rate`).

    Example:
        >>> print(decayed_learning_rate(0.1, 1.0, 1, tf.float32).numpy())
        0.05
    """
    return decayed_learning_rate_rule(_TFOps(tf.as_dtype(dtype)), learning_rate, decay,
                                      iterations)


def nadam_scalars(
    iterations: Any,
    momentum_cache: Any,
    learning_rate: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: float,
    schedule_decay: float,
    dtype: Any,
) -> tuple[NadamScalars, tf.Tensor]:
    """One step's scalars in `dtype` as 0-d tensors, and the new momentum cache in `dtype`.

    `step_scalars.scalar_rule` in TensorFlow ops: `learning_rate` (already decayed),
    `beta_1`, `beta_2` through float32 when they are Python numbers, `epsilon` and
    `schedule_decay` straight to `dtype`, the cache cast to `dtype` before the product.
    """
    return scalar_rule(_TFOps(tf.as_dtype(dtype)), tf.convert_to_tensor(iterations),
                       momentum_cache, learning_rate, beta_1, beta_2, epsilon, schedule_decay)


def dense_update(
    x: Any, g: Any, m: Any, v: Any, s: NadamScalars
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One dense step: the new (x, m, v), op for op `kernels.reference.dense_step`."""
    g_prime = g / s.one_minus_prod
    m = s.beta_1 * m + s.one_minus_beta_1 * g
    m_prime = m / s.one_minus_prod1
    v = s.beta_2 * v + s.one_minus_beta_2 * tf.square(g)
    v_prime = v / s.v_correction
    m_bar = s.one_minus_mu_t * g_prime + s.mu_t1 * m_prime
    x = x - (s.lr * m_bar) / (tf.sqrt(v_prime) + s.epsilon)
    return x, m, v


def sparse_update(
    x: Any, indices: Any, values: Any, m: Any, v: Any, s: NadamScalars
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One sparse step over rows `indices` (repeats allowed): the new (x, m, v).

    Repeated rows are summed first, in the order their first occurrences come
    (`tf.unique` + `unsorted_segment_sum`, as Keras 2 deduplicates); then m and v decay over
    the whole slot and gain the scaled rows, and only the indexed rows of x move
    (`kernels.reference.sparse_step`).
    """
    unique, positions = tf.unique(indices)
    g = tf.math.unsorted_segment_sum(values, positions, tf.shape(unique)[0])
    rows = unique[:, None]
    g_prime = g / s.one_minus_prod
    m = tf.tensor_scatter_nd_add(m * s.beta_1, rows, g * s.one_minus_beta_1)
    m_prime = tf.gather(m, unique) / s.one_minus_prod1
    m_bar = s.one_minus_mu_t * g_prime + s.mu_t1 * m_prime
    v = tf.tensor_scatter_nd_add(v * s.beta_2, rows, tf.square(g) * s.one_minus_beta_2)
    v_prime = tf.gather(v, unique) / s.v_correction
    step = (-s.lr * m_bar) / (tf.sqrt(v_prime) + s.epsilon)
    return tf.tensor_scatter_nd_add(x, rows, step), m, v
