"""The Nadam rule's per-step scalars, written once for every backend (SPEC section 2).

`mu_t`, `mu_{t+1}`, the running products of the momentum schedule and the bias corrections,
each scalar op in the variable's dtype and in Keras's order. The rule (`scalar_rule`,
`momentum_schedule_rule`, `decayed_learning_rate_rule`) is written over a small set of scalar
ops (`ScalarOps`), so that each backend supplies only how an op runs there:

- here, on the host: NumPy scalars through `tf_math`, TensorFlow's C-library `pow` and its
  flushing of subnormal results to zero (`nadam_scalars`, `decayed_learning_rate`); the eager
  faces compute every step's scalars this way;
- `kernels.xla`: traced JAX, each product guarded against XLA's fused multiply-adds;
- `kernels.tf_ops`: TensorFlow ops, for Keras 3's TensorFlow backend.

The element-wise half of the rule is `kernels.reference`.

Example:
    >>> s, prod = nadam_scalars("float32", iterations=0, momentum_cache=1.0)
    >>> print(prod)  # mu_1 = 0.9 * (1 - 0.5 * 0.96 ** 0.004)
    0.45007348
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from nadam import checks, tf_math
from nadam.kernels import NadamScalars

_DECAY_BASE = np.float32(0.96)  # Keras casts the literal 0.96 from float32.

T = TypeVar("T")


class ScalarOps(Protocol[T]):
    """The scalar ops the rule is written in, all in one dtype (the op set's), of type `T`.

    An op set (`HostOps` here; `kernels.xla` and `kernels.tf_ops` have theirs) says how each
    op rounds and flushes on its backend; the rule says which ops run and in what order.

    Example:
        >>> ops = HostOps(np.dtype("float32"))
        >>> print(ops.one_minus(ops.mul(ops.const(0.5), ops.const(0.5))))
        0.75
    """

    def const(self, value: Any) -> T:
        """A literal of the rule (1, 0.5, the float32 0.96), converted to the dtype."""
        ...

    def hyper(self, value: Any) -> T:
        """A hyperparameter as Keras's hyper variables hold it: a Python number through
        float32 first, then cast (`keras_cast`)."""
        ...

    def direct(self, value: Any) -> T:
        """A value Keras converts to the dtype directly (epsilon, schedule_decay)."""
        ...

    def step(self, iterations: Any, offset: int) -> T:
        """The integer count `iterations + offset`, converted to the dtype."""
        ...

    def cast(self, value: Any) -> T:
        """A value of the optimizer's state (the momentum cache) cast to the dtype."""
        ...

    def mul(self, a: T, b: T) -> T:
        """`a * b`, rounded (and flushed) on its own before whatever sum it feeds."""
        ...

    def one_minus(self, x: T) -> T:
        """`1 - x`. Never subnormal for any `x` (a difference that small would need `x`
        within the smallest normal number of 1, where floats are spaced far wider), and a
        subnormal `x` gives 1 whether it is flushed or not: no backend flushes here."""
        ...

    def add(self, a: T, b: T) -> T:
        """`a + b`."""
        ...

    def div(self, a: T, b: T) -> T:
        """`a / b`, rounded once."""
        ...

    def pow(self, base: T, exponent: T) -> T:
        """`base ** exponent` as TensorFlow's Pow: the C library's `powf`/`pow`."""
        ...

    def if_positive(self, x: T, then: Callable[[], T], otherwise: T) -> T:
        """`then()` where `x > 0`, else `otherwise` (`then` may be left uncalled)."""
        ...

    def momentum(self, beta_1: T, schedule_decay: T, t: T) -> T:
        """mu_t (`momentum_schedule_rule`); an op set may remember it between steps."""
        return momentum_schedule_rule(self, beta_1, schedule_decay, t)


def momentum_schedule_rule(ops: ScalarOps[T], beta_1: T, schedule_decay: T, t: T) -> T:
    """mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t)), op by op in `ops`.

    Example:
        >>> ops = HostOps(np.dtype("float32"))
        >>> t = ops.step(0, 1)
        >>> print(momentum_schedule_rule(ops, ops.hyper(0.9), ops.direct(0.004), t))
        0.45007348
    """
    power = ops.pow(ops.const(_DECAY_BASE), ops.mul(schedule_decay, t))
    return ops.mul(beta_1, ops.one_minus(ops.mul(ops.const(0.5), power)))


def scalar_rule(
    ops: ScalarOps[T],
    iterations: Any,
    momentum_cache: Any,
    lr: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    schedule_decay: Any,
) -> tuple[NadamScalars, T]:
    """One step's scalars in `ops`'s dtype, and the new momentum cache (`prod`).

    `iterations` is the count before this step. `lr`, `beta_1` and `beta_2` are read as
    Keras's hyper variables (`ops.hyper`), `epsilon` and `schedule_decay` converted directly.

    Example:
        >>> s, prod = scalar_rule(HostOps(np.dtype("float64")), 0, 1.0, 0.001, 0.9, 0.999,
        ...                       1e-7, 0.004)
        >>> print(prod)  # beta_1 = 0.9 through float32
        0.4500734617086473
    """
    lr_t, beta_1_t, beta_2_t = ops.hyper(lr), ops.hyper(beta_1), ops.hyper(beta_2)
    local_step, next_step = ops.step(iterations, 1), ops.step(iterations, 2)
    decay = ops.direct(schedule_decay)
    mu_t = ops.momentum(beta_1_t, decay, local_step)
    mu_t1 = ops.momentum(beta_1_t, decay, next_step)
    # The products round and flush before `1 - prod`: TensorFlow's CPU kernels flush
    # subnormal results to 0, so Keras's momentum cache becomes exactly 0 once the product
    # underflows (float32 with the defaults: from step 111 on; float64: step 976), and x86
    # decides that before rounding to the subnormal range (`tf_math.mul`).
    prod = ops.mul(ops.cast(momentum_cache), mu_t)
    prod1 = ops.mul(prod, mu_t1)
    scalars = NadamScalars(
        lr=lr_t,
        beta_1=beta_1_t,
        beta_2=beta_2_t,
        one_minus_beta_1=ops.one_minus(beta_1_t),
        one_minus_beta_2=ops.one_minus(beta_2_t),
        epsilon=ops.direct(epsilon),
        one_minus_mu_t=ops.one_minus(mu_t),
        mu_t1=mu_t1,
        one_minus_prod=ops.one_minus(prod),
        one_minus_prod1=ops.one_minus(prod1),
        v_correction=ops.one_minus(ops.pow(beta_2_t, local_step)),
    )
    return scalars, prod


def decayed_learning_rate_rule(
    ops: ScalarOps[T], learning_rate: Any, decay: Any, iterations: Any
) -> T:
    """`lr / (1 + decay * iterations)` in `ops`'s dtype, or `lr` when decay is 0 (SPEC 4.1).

    Example:
        >>> print(decayed_learning_rate_rule(HostOps(np.dtype("float32")), 0.1, 1.0, 1))
        0.05
    """
    lr = ops.hyper(learning_rate)
    decay_t = ops.hyper(decay)
    return ops.if_positive(
        decay_t,
        lambda: ops.div(lr, ops.add(ops.const(1), ops.mul(decay_t, ops.step(iterations, 0)))),
        lr,
    )


# --- the host's ops: NumPy scalars, as TensorFlow's CPU kernels compute them ------------------
def keras_cast(value: Any, dtype: np.dtype) -> np.generic:
    """Cast a hyperparameter as Keras does: a Python number goes through float32 first."""
    if not isinstance(value, np.generic) and isinstance(value, numbers.Real):
        value = np.float32(value)
    if isinstance(value, np.floating):
        return tf_math.cast(value, dtype)  # TensorFlow's Cast: a subnormal float32 reads as 0
    return dtype.type(value)


class HostOps(ScalarOps[np.generic]):
    """The rule on NumPy scalars of `dtype`, each op flushed as TensorFlow's CPU kernel
    flushes it (`tf_math`: subnormal operands read as 0; a product rounded up to the
    smallest normal number can still be 0).

    On the hot path of every eager step: one instance per dtype (`host_ops`), the ops
    bound straight to `tf_math`'s functions.

    Example:
        >>> ops = host_ops(np.dtype("float32"))
        >>> print(ops.mul(np.float32(0.6184053), np.float32(1.9008478e-38)))
        0.0
    """

    mul = staticmethod(tf_math.mul)
    add = staticmethod(tf_math.add)
    div = staticmethod(tf_math.div)
    pow = staticmethod(tf_math.pow)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._type = dtype.type
        self._one = dtype.type(1)

    def const(self, value: Any) -> np.generic:
        return self._type(value)

    def hyper(self, value: Any) -> np.generic:
        return keras_cast(value, self.dtype)

    def direct(self, value: Any) -> np.generic:
        return self._type(value)

    def step(self, iterations: int, offset: int) -> np.generic:
        return self._type(iterations + offset)

    def cast(self, value: Any) -> np.generic:
        # Keras casts a cache of another dtype (TensorFlow's Cast, DAZ included).
        value = value if isinstance(value, np.floating) else self._type(value)
        return tf_math.cast(value, self.dtype)

    def one_minus(self, x: np.generic) -> np.generic:
        # TensorFlow's Sub without a flush (see `ScalarOps.one_minus`): tf_math.sub would
        # give the same, slower.
        return self._one - x

    def if_positive(
        self, x: np.generic, then: Callable[[], np.generic], otherwise: np.generic
    ) -> np.generic:
        return then() if x > 0 else otherwise

    def momentum(self, beta_1: np.generic, schedule_decay: np.generic, t: np.generic) -> Any:
        return momentum_schedule(beta_1, schedule_decay, t)


_HOST_OPS: dict[np.dtype, HostOps] = {}


def host_ops(dtype: np.dtype) -> HostOps:
    """The host's op set for `dtype`, made once.

    Example:
        >>> host_ops(np.dtype("float64")) is host_ops(np.dtype("float64"))
        True
    """
    ops = _HOST_OPS.get(dtype)
    if ops is None:
        ops = _HOST_OPS[dtype] = HostOps(dtype)
    return ops


def decayed_learning_rate(
    learning_rate: np.ndarray, decay: np.ndarray, iterations: int, dtype: np.dtype
) -> np.generic:
    """The step's learning rate in `dtype`: `lr / (1 + decay * iterations)` (SPEC 4.1).

    Example:
        >>> print(decayed_learning_rate(np.float32(0.1), np.float32(1.0), 1, np.dtype("f4")))
        0.05
    """
    return decayed_learning_rate_rule(host_ops(dtype), learning_rate[()], decay[()], iterations)


_MU_CACHE: dict[tuple[Any, ...], np.generic] = {}


def momentum_schedule(beta_1: np.generic, schedule_decay: np.generic, t: np.generic) -> np.generic:
    """mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t)), op by op in their dtype.

    Remembered for a few steps: each step needs mu_t and mu_{t+1}, and the next step's mu_t is
    this one's mu_{t+1}. Keyed by the operands' bits (not their values: 0.5 in float32 and in
    float64 compare equal, -0.0 and 0.0 too).

    Example:
        >>> print(momentum_schedule(np.float32(0.9), np.float32(0.004), np.float32(1)))
        0.45007348
    """
    key = (beta_1.dtype.char, beta_1.tobytes(), schedule_decay.tobytes(), t.tobytes())
    mu = _MU_CACHE.get(key)
    if mu is None:
        mu = momentum_schedule_rule(host_ops(beta_1.dtype), beta_1, schedule_decay, t)
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

    Every scalar op runs in `dtype`, in Keras 2's order (`scalar_rule` on `HostOps`). `lr`,
    `beta_1` and `beta_2` given as Python numbers are rounded to float32 first, as Keras's
    hyper variables are; NumPy scalars are cast directly. `epsilon` and `schedule_decay`
    convert to `dtype` directly.

    Example:
        >>> s, prod = nadam_scalars(np.float64, iterations=0, momentum_cache=1.0)
        >>> print(s.one_minus_prod)
        0.5499265382913527
    """
    return scalar_rule(host_ops(np.dtype(dtype)), iterations, momentum_cache, lr, beta_1,
                       beta_2, epsilon, schedule_decay)


_CACHE_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def momentum_cache_after(
    steps: int, dtype: Any, beta_1: Any = 0.9, schedule_decay: float = 0.004
) -> np.generic:
    """The momentum cache after `steps` steps from a fresh start: prod_{t<=steps} mu_t in
    `dtype`, op by op as each step computes it (exactly 0 once it underflows, and then for
    good, so the loop stops there). For a run resumed from a state that kept no cache.

    `steps` must be a whole number >= 0 (ValueError) and `dtype` float16, float32 or float64
    (TypeError): the dtypes a cache is kept in.

    Example:
        >>> print(momentum_cache_after(1, "float32"))
        0.45007348
    """
    steps = checks.iteration_count(steps, "steps")
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in _CACHE_DTYPES:
        raise TypeError(f"Expected the momentum cache's dtype to be float16, float32 or float64, "
                        f"received: {dtype!r}")
    cache = resolved.type(1)
    for iterations in range(steps):
        if cache == 0:
            break
        _, cache = nadam_scalars(resolved, iterations, cache, beta_1=beta_1,
                                 schedule_decay=schedule_decay)
    return cache
