"""Keras 2's Nadam step as pure JAX functions, bit-identical to Keras under `jax.jit` on CPU.

Three functions, each jit/scan/vmap-safe, every op in the variable's dtype and in Keras's order
(the scalars are `nadam.step_scalars.scalar_rule` itself, run on JAX's ops; the element-wise
step is `nadam.kernels.reference`'s rule):

- `nadam_scalars(iterations, momentum_cache, learning_rate, beta_1, beta_2, epsilon,
  schedule_decay, dtype)`: one step's `NadamScalars` (0-d arrays) and the new momentum cache;
  `decayed_learning_rate(lr, decay, iterations, dtype)`: `lr / (1 + decay * iterations)`;
- `dense_update(x, g, m, v, scalars)`: Keras 2's dense step, returns the new (x, m, v);
  `dense_decrement(g, m, v, scalars)`: what that step subtracts from x, and the new (m, v);
- `sparse_update(x, indices, values, m, v, scalars)`: Keras 2's sparse step over rows.

Why plain `jnp` code is not enough (measured with jax/jaxlib 0.10.2, XLA:CPU, float32 and
float64): XLA rewrites two things that change the bits of the result.

1. LLVM contracts a product that feeds a sum, `a*b + c`, into one fused multiply-add, rounded
   once instead of twice. TensorFlow's kernels round the product first.
2. XLA's algebraic simplifier turns `x / broadcast(s)` into `x * broadcast(1/s)`, two roundings
   instead of one.

The guards live in the traced code (a process-wide XLA flag would change the user's other
computations too). Both use a run-time zero `z`, an integer 0 that XLA and LLVM cannot prove
to be 0: from the sign of a non-negative scalar of the step (`v_correction = 1 - beta_2**t`;
the iteration count for the scalars), and, for the element-wise step, from a fact about the
first element of the gradient that compilers do not know (`_square_residue_zero`), so that
the guards hold even when the scalars are constants of the trace (a step count created in
the same jitted function, say).

1. A product feeding a sum is passed through its bits, `bitcast(bitcast(p) ^ z)`: exactly `p`,
   but LLVM cannot fuse an XOR with an unknown value into an FMA. One integer op per product,
   on values already in registers. (Multiplying by a run-time 1.0 instead, which would let
   LLVM contract harmlessly, is not robust: XLA reassociates it away from constant scalars.)
2. A scalar divisor is given a per-element dependency, `bitcast(bitcast(s) ^ (bitcast(g) & z))`,
   exactly `s` in every element: no longer a broadcast, so the division stays a division.

`nadam_scalars` with a Python-int iteration count inside a trace lets XLA compute the scalars
at compile time, where it does not flush subnormal numbers as TensorFlow does (the momentum
cache from float32 step ~111): pass the count as an array (a jitted function's argument or a
scan's carry), as every face here does.

Everything else is exact as it stands: XLA's `pow` gives the C library's `powf`/`pow` for every
step up to 200,000 (tested), `sqrt` and array division are correctly rounded, and XLA:CPU runs
with flush-to-zero and denormals-are-zero as TensorFlow's CPU kernels do, down to x86's choice
of which products at the smallest normal number underflow. float16 matches the reference too
(each op rounded to float16, as TensorFlow's). All of this is XLA:CPU, where it is tested; on
a GPU, XLA's code generator and flushing rules are others', and the bits there are not tested.

Example:
    >>> import jax.numpy as jnp
    >>> s, cache = nadam_scalars(jnp.asarray(0), jnp.asarray(1.0, "float32"))
    >>> x, m, v = dense_update(jnp.ones(2), jnp.ones(2), jnp.zeros(2), jnp.zeros(2), s)
    >>> x
    Array([0.99894357, 0.99894357], dtype=float32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nadam.kernels import NadamScalars
from nadam.step_scalars import (
    ScalarOps,
    decayed_learning_rate_rule,
    keras_cast,
    scalar_rule,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "decayed_learning_rate",
    "dense_decrement",
    "dense_update",
    "nadam_scalars",
    "sparse_update",
]

#: Float dtypes the step runs in, with the integer type of the same width (for the guards).
SUPPORTED_DTYPES = {
    np.dtype(np.float16): np.dtype(np.int16),
    np.dtype(np.float32): np.dtype(np.int32),
    np.dtype(np.float64): np.dtype(np.int64),
}

# Tests turn the guards off to show that the regression test catches their loss. Never set
# it elsewhere: the step stops being exact.
_GUARDS_ENABLED = True


def checked_dtype(dtype: Any, what: str = "dtype") -> np.dtype:
    """`dtype` as a NumPy dtype the step supports; TypeError naming `what` otherwise.

    Example:
        >>> checked_dtype("float32")
        dtype('float32')
    """
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{what} is {dtype}; Keras's Nadam step runs in float16, float32 or float64 only "
            "(bfloat16 has no Keras 2 counterpart to match, and integers and complex numbers "
            "cannot be trained). Keep a float32 copy of the parameter to train"
        )
    return resolved


# --- the guards --------------------------------------------------------------------------
def _bits(a: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(a, SUPPORTED_DTYPES[np.dtype(a.dtype)])


def _from_bits(b: jax.Array, dtype: np.dtype) -> jax.Array:
    return lax.bitcast_convert_type(b, dtype)


def _sign_zero(a: jax.Array, int_dtype: np.dtype) -> jax.Array:
    """0 for a non-negative `a` (int or float, 0-d or not), as an `int_dtype` the compiler
    cannot prove to be 0."""
    if jnp.issubdtype(a.dtype, jnp.floating):
        b = _bits(a)
    else:
        b = a
    shift = np.iinfo(b.dtype).bits - 1
    sign = lax.shift_right_arithmetic(b, jnp.asarray(shift, b.dtype))
    return sign.astype(int_dtype)


@jax.custom_jvp
def _same_value(a: jax.Array, zero: jax.Array) -> jax.Array:
    """`a` (broadcast against `zero`) through its bits XORed with `zero`: the same value, which
    the compiler cannot see through."""
    return _from_bits(_bits(a) ^ zero, a.dtype)


@_same_value.defjvp
def _same_value_jvp(primals: tuple, tangents: tuple) -> tuple:
    # The value is `a`, so is its derivative (a bitcast alone would differentiate to 0, and
    # gradients taken through the optimizer's step would silently vanish).
    a, zero = primals
    out = _same_value(a, zero)
    return out, jnp.broadcast_to(tangents[0], out.shape).astype(out.dtype)


def _unfused(product: jax.Array, zero: jax.Array) -> jax.Array:
    """`product`, in a form LLVM cannot contract with the sum it feeds into one FMA."""
    if not _GUARDS_ENABLED:
        return product
    return _same_value(product, zero)


def _divided(a: jax.Array, divisor: jax.Array, element_zero: jax.Array) -> jax.Array:
    """`a / divisor` for a scalar `divisor`, rounded once (never `a * (1 / divisor)`).

    `element_zero` is 0 in every element but depends on each element, so the divisor is no
    longer a broadcast that XLA turns into a reciprocal.
    """
    if not _GUARDS_ENABLED:
        return a / divisor
    return a / _same_value(divisor, element_zero)


# --- the scalars -------------------------------------------------------------------------
def _hyper(value: Any, dtype: np.dtype) -> jax.Array:
    """A hyperparameter in `dtype`, rounded as Keras rounds it: Python numbers through float32
    (Keras's hyper variables), NumPy scalars as TensorFlow's Cast, arrays cast directly."""
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return jnp.asarray(keras_cast(value, dtype), dtype)


def _direct(value: Any, dtype: np.dtype) -> jax.Array:
    """A value Keras converts to `dtype` directly (epsilon, schedule_decay)."""
    if isinstance(value, jax.Array):
        return value.astype(dtype)
    return jnp.asarray(np.asarray(value).astype(dtype), dtype)


class _XlaOps(ScalarOps[jax.Array]):
    """The scalar rule (`step_scalars.scalar_rule`) in traced JAX, in `dtype`.

    Made inside the jitted function, as it carries that trace's run-time `zero`: every
    product is guarded (`_unfused`), since each one feeds a sum there (`1 - 0.5 * power`,
    `1 - mu_t`, `1 - prod`, `1 + decay * t`) or, in the schedule, a `pow`, where the guard
    changes nothing. The hyperparameters arrive converted (`_hyper`, `_direct`, before the
    jit, where a Python number can still be told from an array).
    """

    def __init__(self, dtype: np.dtype, zero: jax.Array) -> None:
        self.dtype = dtype
        self.zero = zero

    def const(self, value: Any) -> jax.Array:
        return jnp.asarray(value, self.dtype)

    def hyper(self, value: jax.Array) -> jax.Array:
        return value.astype(self.dtype)

    direct = hyper

    def step(self, iterations: jax.Array, offset: int) -> jax.Array:
        return (iterations + offset if offset else iterations).astype(self.dtype)

    def cast(self, value: jax.Array) -> jax.Array:
        return value.astype(self.dtype)

    def mul(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return _unfused(a * b, self.zero)

    def one_minus(self, x: jax.Array) -> jax.Array:
        return jnp.asarray(1, self.dtype) - x

    def add(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return a + b

    def div(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return a / b  # two scalars: no broadcast for XLA to turn into a reciprocal

    def pow(self, base: jax.Array, exponent: jax.Array) -> jax.Array:
        return lax.pow(base, exponent)

    def if_positive(
        self, x: jax.Array, then: Callable[[], jax.Array], otherwise: jax.Array
    ) -> jax.Array:
        # `x` may be traced (a decay given as an array): both sides are computed.
        return jnp.where(x > 0, then(), otherwise)


def _ops(iterations: jax.Array, dtype: np.dtype) -> _XlaOps:
    """The op set for this trace, its guards' zero taken from the (non-negative) count."""
    return _XlaOps(dtype, _sign_zero(iterations, SUPPORTED_DTYPES[dtype]))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _scalars(
    iterations: jax.Array,
    momentum_cache: jax.Array,
    lr: jax.Array,
    beta_1: jax.Array,
    beta_2: jax.Array,
    epsilon: jax.Array,
    schedule_decay: jax.Array,
    dtype: np.dtype,
) -> tuple[NadamScalars, jax.Array]:
    return scalar_rule(_ops(iterations, dtype), iterations, momentum_cache, lr, beta_1, beta_2,
                       epsilon, schedule_decay)


def nadam_scalars(
    iterations: Any,
    momentum_cache: Any,
    learning_rate: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: Any = 1e-7,
    schedule_decay: Any = 0.004,
    dtype: Any = "float32",
) -> tuple[NadamScalars, jax.Array]:
    """One step's scalars in `dtype` (0-d arrays) and the new momentum cache in `dtype`.

    Bit-identical to `nadam.step_scalars.nadam_scalars` (and so to Keras 2): `learning_rate`,
    `beta_1` and `beta_2` given as Python numbers are rounded through float32 as Keras's hyper
    variables are; arrays (traced ones too, e.g. a scheduled learning rate) are cast to
    `dtype`. `iterations` (the count before this step) and `momentum_cache` may be traced;
    pass them as arrays, not Python numbers, inside a trace (see the module docstring).

    Example:
        >>> s, cache = nadam_scalars(jnp.asarray(0), jnp.asarray(1.0, "float32"))
        >>> cache  # mu_1 = 0.9 * (1 - 0.5 * 0.96 ** 0.004)
        Array(0.45007348, dtype=float32)
    """
    dtype = checked_dtype(dtype)
    iterations = jnp.asarray(iterations)
    if not jnp.issubdtype(iterations.dtype, jnp.integer):
        raise TypeError(f"iterations must be an integer count, got dtype {iterations.dtype}")
    return _scalars(
        iterations,
        jnp.asarray(momentum_cache),
        _hyper(learning_rate, dtype),
        _hyper(beta_1, dtype),
        _hyper(beta_2, dtype),
        _direct(epsilon, dtype),
        _direct(schedule_decay, dtype),
        dtype=dtype,
    )


@functools.partial(jax.jit, static_argnames=("dtype",))
def _decayed(lr: jax.Array, decay: jax.Array, iterations: jax.Array, dtype: np.dtype) -> Any:
    return decayed_learning_rate_rule(_ops(iterations, dtype), lr, decay, iterations)


def decayed_learning_rate(
    learning_rate: Any, decay: Any, iterations: Any, dtype: Any = "float32"
) -> jax.Array:
    """The step's learning rate in `dtype`: `lr / (1 + decay * iterations)` (SPEC 4.1), as
    `nadam.step_scalars.decayed_learning_rate` computes it, traceable.

    Example:
        >>> decayed_learning_rate(0.1, 1.0, jnp.asarray(1))
        Array(0.05, dtype=float32)
    """
    dtype = checked_dtype(dtype)
    return _decayed(_hyper(learning_rate, dtype), _hyper(decay, dtype),
                    jnp.asarray(iterations), dtype=dtype)


# --- the element-wise step ---------------------------------------------------------------
def _scalars_in(scalars: NadamScalars, dtype: np.dtype) -> NadamScalars:
    return NadamScalars(*(jnp.asarray(s).astype(dtype) for s in scalars))


def _square_residue_zero(a: jax.Array, int_dtype: np.dtype) -> jax.Array:
    """0 for every value of the 0-d float `a`, as an `int_dtype` XLA and LLVM cannot fold.

    The square of an integer is never 5 modulo 8 (an odd square is 1 modulo 8), but a
    compiler's known-bits analysis knows only that bit 1 of a square is clear, so it must
    compute the comparison. Used where the step's scalars may be compile-time constants: the
    gradient is a run-time value in any real use.
    """
    b = _bits(a)
    return (((b * b) & 7) == 5).astype(int_dtype)


def _zeros(g: jax.Array, s: NadamScalars) -> tuple[jax.Array, jax.Array]:
    """The guards' run-time zero, and the same zero element by element (for the divisors).

    From the sign of `v_correction` (never negative) and from the first element of the
    gradient, so that the zero stays unknown to the compiler when the scalars are constants
    of the trace (a step count created in the same jitted function, say) but the gradient is
    not.
    """
    int_dtype = SUPPORTED_DTYPES[np.dtype(g.dtype)]
    zero = _sign_zero(s.v_correction, int_dtype)
    if g.size:
        zero = zero | _square_residue_zero(g[(0,) * g.ndim], int_dtype)
    return zero, _bits(g) & zero


@jax.jit
def _decrement(g, m, v, s):  # noqa: ANN001, ANN202
    zero, element_zero = _zeros(g, s)
    g_prime = _divided(g, s.one_minus_prod, element_zero)
    m = _unfused(s.beta_1 * m, zero) + _unfused(s.one_minus_beta_1 * g, zero)
    m_prime = _divided(m, s.one_minus_prod1, element_zero)
    v = _unfused(s.beta_2 * v, zero) + _unfused(s.one_minus_beta_2 * (g * g), zero)
    v_prime = _divided(v, s.v_correction, element_zero)
    m_bar = _unfused(s.one_minus_mu_t * g_prime, zero) + _unfused(s.mu_t1 * m_prime, zero)
    # A quotient, so the subtraction it feeds has nothing to contract.
    return (s.lr * m_bar) / (jnp.sqrt(v_prime) + s.epsilon), m, v


def dense_decrement(
    g: jax.Array, m: jax.Array, v: jax.Array, scalars: NadamScalars
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What Keras 2's dense step subtracts from x, `lr * m_bar / (sqrt(v_hat) + epsilon)`, with
    the new (m, v): `x - decrement` is `dense_update`'s x, and so is `x + (-decrement)` (IEEE
    subtraction is addition of the negation, signed zeros and flushing included), which is how
    the optax face's updates give Keras's step through `optax.apply_updates`.

    Example:
        >>> s, _ = nadam_scalars(jnp.asarray(0), jnp.asarray(1.0, "float32"))
        >>> dense_decrement(jnp.ones(2), jnp.zeros(2), jnp.zeros(2), s)[0]
        Array([0.00105645, 0.00105645], dtype=float32)
    """
    dtype = checked_dtype(jnp.result_type(g), "the gradient's dtype")
    return _decrement(g, m, v, _scalars_in(scalars, dtype))


def dense_update(
    x: jax.Array, g: jax.Array, m: jax.Array, v: jax.Array, scalars: NadamScalars
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keras 2's dense Nadam step: the new (x, m, v), bit-identical to
    `nadam.kernels.reference.dense_step` (SPEC section 2).

    `x`, `g`, `m`, `v` share one shape and float dtype; `scalars` (from `nadam_scalars` of the
    same dtype, or any `NadamScalars`) are cast to that dtype. Pure: donate the inputs under
    `jax.jit` to update in place.

    Example:
        >>> s, _ = nadam_scalars(jnp.asarray(0), jnp.asarray(1.0, "float32"))
        >>> dense_update(jnp.ones(2), jnp.ones(2), jnp.zeros(2), jnp.zeros(2), s)[1]
        Array([0.10000002, 0.10000002], dtype=float32)
    """
    checked_dtype(jnp.result_type(x), "the variable's dtype")
    decrement, m, v = dense_decrement(g, m, v, scalars)
    return x - decrement, m, v


@jax.jit
def _sparse(x, indices, values, m, v, s):  # noqa: ANN001, ANN202
    g = values
    zero, element_zero = _zeros(g, s)
    g_prime = _divided(g, s.one_minus_prod, element_zero)
    # Keras scales the whole slot, then adds the scaled gradient into the indexed rows.
    m_decayed = m * s.beta_1
    m_rows = _unfused(m_decayed[indices], zero) + _unfused(g * s.one_minus_beta_1, zero)
    m_prime = _divided(m_rows, s.one_minus_prod1, element_zero)
    m_bar = _unfused(s.one_minus_mu_t * g_prime, zero) + _unfused(s.mu_t1 * m_prime, zero)
    v_decayed = v * s.beta_2
    v_rows = _unfused(v_decayed[indices], zero) + _unfused((g * g) * s.one_minus_beta_2, zero)
    v_prime = _divided(v_rows, s.v_correction, element_zero)
    x_rows = x[indices] + (-s.lr * m_bar) / (jnp.sqrt(v_prime) + s.epsilon)
    return (
        x.at[indices].set(x_rows, unique_indices=True),
        m_decayed.at[indices].set(m_rows, unique_indices=True),
        v_decayed.at[indices].set(v_rows, unique_indices=True),
    )


def sparse_update(
    x: jax.Array,
    indices: jax.Array,
    values: jax.Array,
    m: jax.Array,
    v: jax.Array,
    scalars: NadamScalars,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keras 2's sparse Nadam step over rows `indices` of `x`: the new (x, m, v), bit-identical
    to `nadam.kernels.reference.sparse_step`.

    m and v decay over the whole slot; only the indexed rows receive the gradient and only
    those rows of x move. `indices` must be unique and in range: the caller sums the values of
    duplicate indices first, in first-occurrence order, as Keras does (the engine's
    deduplication); a duplicate here would keep one of its rows arbitrarily.

    Example:
        >>> s, _ = nadam_scalars(jnp.asarray(0), jnp.asarray(1.0, "float32"))
        >>> x, m, v = sparse_update(jnp.ones((3, 1)), jnp.asarray([2]), jnp.ones((1, 1)),
        ...                         jnp.zeros((3, 1)), jnp.zeros((3, 1)), s)
        >>> x[:, 0]
        Array([1.        , 1.        , 0.99894357], dtype=float32)
    """
    dtype = checked_dtype(jnp.result_type(x), "the variable's dtype")
    return _sparse(x, jnp.asarray(indices), values, m, v, _scalars_in(scalars, dtype))
