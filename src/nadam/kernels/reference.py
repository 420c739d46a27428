"""The Nadam update in plain array code: the ground truth every fast path is tested against.

The element-wise operations are written in exactly Keras 2's order (SPEC section 2), which is
what makes the result bit-identical to Keras in float32 and float64. They use only operators
and a `sqrt`, so they run unchanged on NumPy arrays and PyTorch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nadam.kernels import NadamScalars


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
    g_prime = g / s.one_minus_prod
    m = s.beta_1 * m + s.one_minus_beta_1 * g
    m_prime = m / s.one_minus_prod1
    v = s.beta_2 * v + s.one_minus_beta_2 * (g * g)
    v_prime = v / s.v_correction
    m_bar = s.one_minus_mu_t * g_prime + s.mu_t1 * m_prime
    x = x - s.lr * m_bar / (sqrt(v_prime) + s.epsilon)
    return x, m, v


def sparse_step(
    x_rows: Any, g_rows: Any, m: Any, v: Any, indices: Any, s: NadamScalars,
    sqrt: Callable[[Any], Any],
) -> tuple[Any, Any, Any, Any, Any]:
    """One sparse Nadam step over unique row `indices`.

    Returns (new x rows, decayed m, new m rows, decayed v, new v rows): m and v decay over
    the whole slot, only the indexed rows receive the gradient and only those rows of x move.
    """
    g_prime = g_rows / s.one_minus_prod
    m_decayed = m * s.beta_1
    m_rows = m_decayed[indices] + g_rows * s.one_minus_beta_1
    m_prime = m_rows / s.one_minus_prod1
    m_bar = s.one_minus_mu_t * g_prime + s.mu_t1 * m_prime
    v_decayed = v * s.beta_2
    v_rows = v_decayed[indices] + (g_rows * g_rows) * s.one_minus_beta_2
    v_prime = v_rows / s.v_correction
    x_rows = x_rows + -s.lr * m_bar / (sqrt(v_prime) + s.epsilon)
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
