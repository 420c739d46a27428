"""The Nadam rule's per-step scalars, computed op by op in the variable's dtype as Keras 2 does.

SPEC section 2: `mu_t`, `mu_{t+1}`, the running products of the momentum schedule and the bias
corrections, each scalar op in the variable's dtype and in Keras's order; TensorFlow's C-library
`pow` (`tf_math`) and its flushing of subnormal results to zero. The element-wise half of the
rule is `kernels.reference`.

Example:
    >>> s, prod = nadam_scalars("float32", iterations=0, momentum_cache=1.0)
    >>> print(prod)  # mu_1 = 0.9 * (1 - 0.5 * 0.96 ** 0.004)
    0.45007348
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from nadam import tf_math
from nadam.kernels import NadamScalars

_DECAY_BASE = np.float32(0.96)  # Keras casts the literal 0.96 from float32.


def keras_cast(value: Any, dtype: np.dtype) -> np.generic:
    """Cast a hyperparameter as Keras does: a Python number goes through float32 first."""
    if not isinstance(value, np.generic) and isinstance(value, numbers.Real):
        value = np.float32(value)
    if isinstance(value, np.floating):
        return tf_math.cast(value, dtype)  # TensorFlow's Cast: a subnormal float32 reads as 0
    return dtype.type(value)


def decayed_learning_rate(
    learning_rate: np.ndarray, decay: np.ndarray, iterations: int, dtype: np.dtype
) -> np.generic:
    """The step's learning rate in `dtype`: `lr / (1 + decay * iterations)` (SPEC 4.1).

    Example:
        >>> print(decayed_learning_rate(np.float32(0.1), np.float32(1.0), 1, np.dtype("f4")))
        0.05
    """
    lr_t = _cast(learning_rate[()], dtype)
    decay_t = _cast(decay[()], dtype)
    if decay_t > 0:
        # TensorFlow's scalar ops, each flushed as its CPU kernel flushes (tf_math).
        steps = tf_math.mul(decay_t, dtype.type(iterations))
        lr_t = tf_math.div(lr_t, tf_math.add(dtype.type(1), steps))
    return lr_t


def _cast(value: Any, dtype: np.dtype) -> np.generic:
    """A stored hyperparameter in `dtype` as TensorFlow's Cast makes it (tf_math.cast)."""
    return tf_math.cast(value, dtype) if isinstance(value, np.floating) else dtype.type(value)


_MU_CACHE: dict[tuple[Any, ...], np.generic] = {}


def momentum_schedule(beta_1: np.generic, schedule_decay: np.generic, t: np.generic) -> np.generic:
    """mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t)), op by op in their dtype.

    Remembered for a few steps: each step needs mu_t and mu_{t+1}, and the next step's mu_t is
    this one's mu_{t+1}. Keyed by the operands' bits (not their values: 0.5 in float32 and in
    float64 compare equal, -0.0 and 0.0 too).
    """
    key = (beta_1.dtype.char, beta_1.tobytes(), schedule_decay.tobytes(), t.tobytes())
    mu = _MU_CACHE.get(key)
    if mu is None:
        d = beta_1.dtype.type
        # Each scalar op flushed as TensorFlow's kernel flushes it (tf_math: subnormal
        # operands read as 0; a product rounded up to the smallest normal can still be 0).
        power = tf_math.pow(d(_DECAY_BASE), tf_math.mul(schedule_decay, t))
        mu = tf_math.mul(beta_1, tf_math.sub(d(1), tf_math.mul(d(0.5), power)))
        if len(_MU_CACHE) >= 64:
            _MU_CACHE.clear()
        _MU_CACHE[key] = mu
    return mu


def nadam_scalars(
    dtype: Any,
    iterations: int,
    momentum_cache: Any,
    lr: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: float = 1e-7,
    schedule_decay: float = 0.004,
) -> tuple[NadamScalars, np.generic]:
    """One step's scalars in `dtype`, and the new momentum cache (`prod`) in `dtype`.

    Every scalar op runs in `dtype`, in Keras 2's order. `lr`, `beta_1` and `beta_2` given as
    Python numbers are rounded to float32 first, as Keras's hyper variables are; NumPy scalars
    are cast directly. `epsilon` and `schedule_decay` convert to `dtype` directly.
    """
    dtype = np.dtype(dtype)
    d = dtype.type
    lr_t, beta_1_t, beta_2_t = (keras_cast(x, dtype) for x in (lr, beta_1, beta_2))
    one = d(1)
    local_step, next_step = d(iterations + 1), d(iterations + 2)
    decay = d(schedule_decay)
    mu_t = momentum_schedule(beta_1_t, decay, local_step)
    mu_t1 = momentum_schedule(beta_1_t, decay, next_step)
    # TensorFlow's CPU kernels flush subnormal results to 0: Keras's momentum cache becomes
    # exactly 0 once the product underflows (float32 with the defaults: from step 111 on;
    # float64: step 976), where NumPy would keep a subnormal; and x86 decides that before
    # rounding to the subnormal range, so a product that IEEE rounds up to the smallest
    # normal number can be 0 too (`tf_math.mul`). Keras casts a cache of another dtype.
    cache = momentum_cache if isinstance(momentum_cache, np.floating) else d(momentum_cache)
    prod = tf_math.mul(tf_math.cast(cache, dtype), mu_t)
    prod1 = tf_math.mul(prod, mu_t1)
    # lr, beta_1, beta_2 and epsilon are read as they are (tf.identity, a constant); the
    # kernels flush what they read. The differences `1 - x` are TensorFlow's without a flush
    # (tf_math.sub would give the same, slower): every x is in [0, 1] (flushed already, or a
    # beta, whose subnormal value TF reads as 0 where IEEE rounds 1 - x to 1 all the same),
    # so each difference is 0 or at least half an ulp of 1, never subnormal.
    scalars = NadamScalars(
        lr=lr_t,
        beta_1=beta_1_t,
        beta_2=beta_2_t,
        one_minus_beta_1=one - beta_1_t,
        one_minus_beta_2=one - beta_2_t,
        epsilon=d(epsilon),
        one_minus_mu_t=one - mu_t,
        mu_t1=mu_t1,
        one_minus_prod=one - prod,
        one_minus_prod1=one - prod1,
        v_correction=one - tf_math.pow(beta_2_t, local_step),
    )
    return scalars, prod
