"""The Nadam update in plain array code: the ground truth every fast path is tested against.

The element-wise operations are written in exactly Keras 2's order (SPEC section 2), one
TensorFlow op per call of `mul`, `div`, `add` or `sub`, which is what makes the result
bit-identical to Keras in float32 and float64. They use only operators, `abs`, `.clip` and a
`sqrt`, so they run unchanged on NumPy arrays and PyTorch tensors (on any device: nothing here
waits for a GPU).

TensorFlow runs its CPU kernels with the x86 flush-to-zero (FTZ) and denormals-are-zero (DAZ)
modes on (SPEC section 2, "Traps"), in float32 and float64; float16 keeps its subnormals (its
arithmetic converts to float32 and back, where nothing underflows). Measured against TensorFlow
op by op and against tf_keras's legacy Nadam:

- every arithmetic op reads a subnormal input as a zero of its sign (DAZ). Here what the step
  reads from outside (x, g, m, v and the step's scalars) is flushed once on entry (`flush`);
  everything else an op reads is the result of an earlier op, flushed already;
- every arithmetic op returns a zero of the sign of its result where that result underflows
  (FTZ): `mul`, `div`, `add`, `sub` here. x86 decides underflow after rounding to the format's
  precision as if the exponent range had no bottom, not from the IEEE result: a product or
  quotient just below the smallest normal number that IEEE rounding (with subnormals) rounds up
  to it is flushed when its unbounded rounding stays below it (`mul`, `div`). Sums and
  differences near the smallest normal number are exact, so theirs is the plain test (`add`);
- `sqrt` needs no flush: its flushed input is 0 or normal, so its root is 0, NaN or normal;
- copies keep the bits (`gather`, `identity`, negation), and an op that does not read an
  element does not flush it: in the sparse step the rows of x that are not indexed keep their
  bits, subnormal or not (TensorFlow's `scatter_add` touches the indexed rows only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nadam.kernels import NadamScalars

# The smallest normal number 2**-E of each dtype whose subnormals TensorFlow flushes, by dtype
# name (NumPy's and torch's dtypes alike, without importing torch), and 2**(E-2), the scale that
# takes a result at the underflow threshold to 0.25 (`mul`, `div`). float16 keeps its subnormals.
_SMALLEST_NORMAL = {"float32": 2.0**-126, "float64": 2.0**-1022}
_UNDERFLOW_SCALE = {"float32": 2.0**124, "float64": 2.0**1020}
_smallest_normal_of: dict[Any, float | None] = {}
_underflow_scale_of: dict[Any, float | None] = {}


def smallest_normal(dtype: Any) -> float | None:
    """The smallest normal number of a NumPy or torch `dtype` that TensorFlow flushes below;
    None for a dtype whose subnormals it keeps (float16).

    Example:
        >>> import numpy as np
        >>> smallest_normal(np.dtype("float32")) == float(np.finfo(np.float32).tiny)
        True
        >>> smallest_normal(np.dtype("float16")) is None
        True
    """
    return _per_dtype(_SMALLEST_NORMAL, _smallest_normal_of, dtype)


def underflow_scale(dtype: Any) -> float | None:
    """2**(E-2) for a dtype whose smallest normal number is 2**-E (the scale `mul` and `div`
    test underflow at); None for a dtype whose subnormals TensorFlow keeps (float16)."""
    return _per_dtype(_UNDERFLOW_SCALE, _underflow_scale_of, dtype)


def _per_dtype(by_name: dict[str, float], seen: dict[Any, float | None], dtype: Any) -> Any:
    # NumPy and torch dtypes alike, looked up by name once each (every op asks).
    try:
        return seen[dtype]
    except KeyError:
        name = getattr(dtype, "name", None) or str(dtype).removeprefix("torch.")
        value = seen[dtype] = by_name.get(name)
        return value


def flush(a: Any) -> Any:
    """`a` with every subnormal element replaced by a zero of its sign (TensorFlow's FTZ/DAZ).

    Normal numbers, zeros, infinities and NaN are unchanged. Multiplying by the comparison
    keeps the sign (`-1e-40 * 0` is `-0.0`) and NaN (`abs(nan) >= tiny` is false, `nan * 0`
    is NaN), with operators only, so it runs on NumPy arrays and scalars and torch tensors.

    Example:
        >>> import numpy as np
        >>> flush(np.array([1e-39, -1e-39, 1.0, np.nan], np.float32))
        array([ 0., -0.,  1., nan], dtype=float32)
    """
    tiny = smallest_normal(a.dtype)
    if tiny is None:
        return a
    return a * (abs(a) >= tiny)


# TensorFlow's element-wise ops on flushed operands (0 or normal), as x86 computes them in its
# FTZ mode. `a.clip` is NumPy's and torch's alike.
def mul(a: Any, b: Any) -> Any:
    """`a * b`, or a zero of its sign where x86 underflows (also TensorFlow's `Square`).

    The product underflows when, rounded to the dtype's precision with an unbounded exponent,
    it is below 2**-E. Scaled by 2**(E-2) the product is a normal number, whose IEEE rounding
    is that rounding, so the test is `|a| * 2**(E-2) * |b| >= 0.25`. Clamping both magnitudes
    to 2 keeps that finite and changes no answer: the product of a normal number and one
    above 2 is above 2 * 2**-E, and the clamped test keeps it too.

    Example:
        >>> import numpy as np
        >>> a = np.array([0.81848085, 0.6184053], np.float32)
        >>> b = np.array([1.4361904e-38, 1.9008478e-38], np.float32)
        >>> a * b  # IEEE: both round up to the smallest normal number
        array([1.1754944e-38, 1.1754944e-38], dtype=float32)
        >>> mul(a, b)  # x86 (and TensorFlow): the second one underflows
        array([1.1754944e-38, 0.0000000e+00], dtype=float32)
    """
    product = a * b
    scale = underflow_scale(product.dtype)
    if scale is None:
        return product
    return product * ((abs(a).clip(max=2.0) * scale) * abs(b).clip(max=2.0) >= 0.25)


def div(a: Any, b: Any) -> Any:
    """`a / b`, or a zero of its sign where x86 underflows: as `mul`, with the test
    `|a| * 2**(E-2) / |b| >= 0.25`. Clamping |a| to at most 4 and |b| to at least 0.5 keeps
    that finite (and free of division by zero) and changes no answer: a normal number over
    one below 0.5 is above 2 * 2**-E, one above 4 over any finite number above 2**-E, and
    the clamped test keeps both (a zero over zero is NaN either way)."""
    quotient = a / b
    scale = underflow_scale(quotient.dtype)
    if scale is None:
        return quotient
    return quotient * ((abs(a).clip(max=4.0) * scale) / abs(b).clip(min=0.5) >= 0.25)


def add(a: Any, b: Any) -> Any:
    """`a + b`, flushed. A sum below 2**-E in magnitude is exact (all numbers of the dtype are
    multiples of its smallest subnormal), so no rounding decides here."""
    return flush(a + b)


def sub(a: Any, b: Any) -> Any:
    """`a - b`, flushed, as `add`."""
    return flush(a - b)


def flush_scalars(s: NadamScalars) -> NadamScalars:
    """The step's scalars as TensorFlow's ops read them (a subnormal one acts as zero)."""
    return NadamScalars(*map(flush, s))


def dense_step(
    x: Any, g: Any, m: Any, v: Any, s: NadamScalars, sqrt: Callable[[Any], Any]
) -> tuple[Any, Any, Any]:
    """One dense Nadam step; returns the new (x, m, v) and leaves its inputs alone.

    Example:
        >>> import numpy as np
        >>> from nadam.nadam import nadam_scalars
        >>> s, _ = nadam_scalars(np.dtype("float32"), iterations=0, momentum_cache=1.0)
        >>> one = np.ones(2, np.float32)
        >>> dense_step(one, one, 0 * one, 0 * one, s, np.sqrt)[0]
        array([0.99894357, 0.99894357], dtype=float32)
    """
    s = flush_scalars(s)
    x, g, m, v = flush(x), flush(g), flush(m), flush(v)
    g_prime = div(g, s.one_minus_prod)
    m = add(mul(s.beta_1, m), mul(s.one_minus_beta_1, g))
    m_prime = div(m, s.one_minus_prod1)
    v = add(mul(s.beta_2, v), mul(s.one_minus_beta_2, mul(g, g)))
    v_prime = div(v, s.v_correction)
    m_bar = add(mul(s.one_minus_mu_t, g_prime), mul(s.mu_t1, m_prime))
    x = sub(x, div(mul(s.lr, m_bar), add(sqrt(v_prime), s.epsilon)))
    return x, m, v


def sparse_step(
    x_rows: Any, g_rows: Any, m: Any, v: Any, indices: Any, s: NadamScalars,
    sqrt: Callable[[Any], Any],
) -> tuple[Any, Any, Any, Any, Any]:
    """One sparse Nadam step over unique row `indices`.

    Returns (new x rows, decayed m, new m rows, decayed v, new v rows): m and v decay over
    the whole slot, only the indexed rows receive the gradient and only those rows of x move.
    The ops are those of Keras's `_resource_apply_sparse`: m and v scaled in place, the scaled
    gradient rows added in with `scatter_add`, and the update added to the rows of x with it.
    """
    s = flush_scalars(s)
    x_rows, g, m, v = flush(x_rows), flush(g_rows), flush(m), flush(v)
    g_prime = div(g, s.one_minus_prod)
    m_decayed = mul(m, s.beta_1)
    m_rows = add(m_decayed[indices], mul(g, s.one_minus_beta_1))
    m_prime = div(m_rows, s.one_minus_prod1)
    m_bar = add(mul(s.one_minus_mu_t, g_prime), mul(s.mu_t1, m_prime))
    v_decayed = mul(v, s.beta_2)
    v_rows = add(v_decayed[indices], mul(mul(g, g), s.one_minus_beta_2))
    v_prime = div(v_rows, s.v_correction)
    x_rows = add(x_rows, div(mul(-s.lr, m_bar), add(sqrt(v_prime), s.epsilon)))
    return x_rows, m_decayed, m_rows, v_decayed, v_rows


def apply_dense(
    backend: Any, xs: Sequence[Any], gs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
    s: NadamScalars,
) -> None:
    """Run `dense_step` on each variable and write the results back through the backend."""
    for x, g, m, v in zip(xs, gs, ms, vs, strict=True):
        new_x, new_m, new_v = dense_step(
            backend.read(x), g, backend.read(m), backend.read(v), s, backend.sqrt
        )
        backend.write(m, new_m)
        backend.write(v, new_v)
        backend.write(x, new_x)


def apply_sparse(
    backend: Any, x: Any, g_rows: Any, indices: Any, m: Any, v: Any, s: NadamScalars
) -> None:
    """Run `sparse_step` on one variable (unique `indices`) and write back through the backend."""
    new_rows, m_decayed, m_rows, v_decayed, v_rows = sparse_step(
        backend.read(x)[indices], g_rows, backend.read(m), backend.read(v), indices, s,
        backend.sqrt,
    )
    backend.write(m, m_decayed)
    backend.write_rows(m, indices, m_rows)
    backend.write(v, v_decayed)
    backend.write_rows(v, indices, v_rows)
    backend.write_rows(x, indices, new_rows)
