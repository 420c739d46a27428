"""The Nadam step in TensorFlow ops, for Keras 3's TensorFlow backend (`nadam.keras`).

Keras 2's Nadam is a sequence of TensorFlow ops; writing the same ops in the same order gives
the same bits, because they are the same CPU kernels: the C library's `pow`, flush-to-zero and
denormals-are-zero included (`kernels.reference` says where TensorFlow flushes). So here every
scalar follows `step_scalars.nadam_scalars` and every element-wise op `kernels.reference`, op
for op, with nothing to emulate. The functions are pure (they return new tensors) and trace
inside `tf.function`, which `model.fit` uses; `iterations` may be a symbolic tensor.

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
from typing import Any

import numpy as np
import tensorflow as tf

from nadam.kernels import NadamScalars


def _hyper(value: Any, dtype: tf.DType) -> tf.Tensor:
    """A hyperparameter in `dtype` as Keras 2 reads it: a Python number goes through float32
    (its hyper variable) and is then cast, a tensor is cast."""
    if isinstance(value, numbers.Real) and not isinstance(value, np.generic):
        value = np.float32(value)
    return tf.cast(value, dtype)


def decayed_learning_rate(
    learning_rate: Any, decay: Any, iterations: Any, dtype: tf.DType
) -> tf.Tensor:
    """`lr / (1 + decay * iterations)` in `dtype` (`step_scalars.decayed_learning_rate`).

    `decay` is a host number: with 0 the rate is only cast, as there.
    """
    lr = _hyper(learning_rate, dtype)
    if float(decay) > 0:
        steps = _hyper(decay, dtype) * tf.cast(iterations, dtype)
        lr = lr / (tf.constant(1, dtype) + steps)
    return lr


def _momentum_schedule(beta_1: tf.Tensor, schedule_decay: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t)) (`step_scalars`)."""
    dtype = beta_1.dtype
    base = tf.cast(np.float32(0.96), dtype)  # Keras casts the literal from float32
    power = tf.pow(base, schedule_decay * t)
    return beta_1 * (tf.constant(1, dtype) - tf.constant(0.5, dtype) * power)


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

    The op sequence of `step_scalars.nadam_scalars`: `learning_rate` (already decayed),
    `beta_1`, `beta_2` through float32 when they are Python numbers, `epsilon` and
    `schedule_decay` straight to `dtype`, the cache cast to `dtype` before the product.
    """
    dtype = tf.as_dtype(dtype)
    one = tf.constant(1, dtype)
    lr, beta_1_t, beta_2_t = (_hyper(x, dtype) for x in (learning_rate, beta_1, beta_2))
    iterations = tf.convert_to_tensor(iterations)
    local_step = tf.cast(iterations + 1, dtype)
    next_step = tf.cast(iterations + 2, dtype)
    decay = tf.constant(schedule_decay, dtype)
    mu_t = _momentum_schedule(beta_1_t, decay, local_step)
    mu_t1 = _momentum_schedule(beta_1_t, decay, next_step)
    prod = tf.cast(momentum_cache, dtype) * mu_t
    prod1 = prod * mu_t1
    scalars = NadamScalars(
        lr=lr,
        beta_1=beta_1_t,
        beta_2=beta_2_t,
        one_minus_beta_1=one - beta_1_t,
        one_minus_beta_2=one - beta_2_t,
        epsilon=tf.constant(epsilon, dtype),
        one_minus_mu_t=one - mu_t,
        mu_t1=mu_t1,
        one_minus_prod=one - prod,
        one_minus_prod1=one - prod1,
        v_correction=one - tf.pow(beta_2_t, local_step),
    )
    return scalars, prod


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
