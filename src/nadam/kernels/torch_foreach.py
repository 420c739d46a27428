"""The Nadam step for CUDA tensors with torch's multi-tensor (`torch._foreach_*`) ops.

One op per line of the formula in `kernels.reference`, in the same order, each over the whole
list of tensors: every element sees exactly the reference's sequence of IEEE operations, so
the result is the reference's, bit for bit. Three details keep it that way:

- the step's scalars are 0-d tensors on the device, never host scalars: torch's CUDA division
  by a host scalar multiplies by its reciprocal, which can differ in the last bit (the host
  scalars below only multiply by powers of two, clamp and subtract, which are exact);
- no fused op (`addcmul`, `lerp`, `alpha=` other than 1), which could contract into an FMA;
- TensorFlow's flush-to-zero (`kernels.reference` says where and how): a GPU keeps subnormal
  numbers, so each op's result is multiplied by a 0/1 mask, 1 where x86 would not have flushed
  it, computed with foreach ops from the op's operands scaled by 2**(E-2) (so that the test is
  a comparison with 0.25 among normal numbers, which holds even on a device that flushes
  subnormals itself). The masks take about five more passes over memory per op (float32 and
  float64; float16 keeps its subnormals and skips them).

The kernel runs on any torch device; it is chosen for CUDA groups, and tested on the CPU (where
the `_foreach_` ops loop over the tensors) against the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from nadam.kernels import KernelChoice, NadamScalars, reference


def device_scalars(s: NadamScalars, like: torch.Tensor) -> NadamScalars:
    """The step's scalars as 0-d tensors of `like`'s dtype on its device (one transfer).

    Each scalar is a NumPy scalar of that dtype, so the conversion through float is exact.
    """
    packed = torch.tensor([float(value) for value in s], dtype=like.dtype)
    return NadamScalars(*packed.to(like.device).unbind())


class _Underflow(NamedTuple):
    """Constants of the flush-to-zero masks for one dtype whose smallest normal number is 2**-E."""

    scale: float  # 2**(E-2): takes 2**-E to 0.25
    below_quarter: float  # the largest number of the dtype below 0.25


_UNDERFLOW = {
    torch.float32: _Underflow(2.0**124, float(np.nextafter(np.float32(0.25), np.float32(0)))),
    torch.float64: _Underflow(2.0**1020, float(np.nextafter(0.25, 0.0))),
}
Masks = list[torch.Tensor] | None  # None: nothing to flush (float16)


def _at_least_a_quarter_(scaled: list[torch.Tensor], u: _Underflow) -> list[torch.Tensor]:
    """In place: 1.0 where an element is at least 0.25, else 0.0 (the sign of its difference
    with the largest number below 0.25, which is exact, with -1 made 0). A NaN element gives 0
    or NaN: it only comes from NaN operands, whose result is NaN and stays NaN."""
    torch._foreach_sub_(scaled, u.below_quarter)
    torch._foreach_sign_(scaled)
    torch._foreach_clamp_min_(scaled, 0.0)
    return scaled


def _scaled_magnitudes(
    tensors: Sequence[torch.Tensor], u: _Underflow, at_most: float | None = None
) -> list[torch.Tensor]:
    """|t| (clamped to `at_most`) times 2**(E-2), for each tensor: new tensors."""
    scaled = list(torch._foreach_abs(list(tensors)))
    if at_most is not None:
        torch._foreach_clamp_max_(scaled, at_most)
    torch._foreach_mul_(scaled, u.scale)
    return scaled


def _normal(values: Sequence[torch.Tensor], u: _Underflow | None) -> Masks:
    """Masks of `kernels.reference.flush`: 1 where |value| is at least 2**-E (a sum, a
    difference or an input, which TensorFlow reads as 0 if it is subnormal)."""
    if u is None:
        return None
    return _at_least_a_quarter_(_scaled_magnitudes(values, u), u)


def _product_kept(
    left: Sequence[torch.Tensor], right: Sequence[torch.Tensor] | float, u: _Underflow | None
) -> Masks:
    """Masks of `kernels.reference.mul` for the products left[i] * right[i] (or * right, a host
    number of the dtype): min(|a|, 2) * 2**(E-2) * min(|b|, 2) >= 0.25."""
    if u is None:
        return None
    scaled = _scaled_magnitudes(left, u, at_most=2.0)
    if isinstance(right, float):
        torch._foreach_mul_(scaled, min(abs(right), 2.0))
    else:
        other = list(torch._foreach_abs(list(right)))
        torch._foreach_clamp_max_(other, 2.0)
        torch._foreach_mul_(scaled, other)
    return _at_least_a_quarter_(scaled, u)


def _quotient_kept(
    numerators: Sequence[torch.Tensor], denominator: Sequence[torch.Tensor] | torch.Tensor,
    u: _Underflow | None,
) -> Masks:
    """Masks of `kernels.reference.div` for numerators[i] / denominator[i] (or / denominator, a
    0-d device tensor): min(|a|, 4) * 2**(E-2) / |b| >= 0.25. (The reference also clamps |b|
    to at least 0.5, against NumPy's warnings; torch's inf and NaN for a small or zero |b| give
    the same answers.)"""
    if u is None:
        return None
    scaled = _scaled_magnitudes(numerators, u, at_most=4.0)
    if isinstance(denominator, torch.Tensor):
        torch._foreach_div_(scaled, denominator.abs())
    else:
        torch._foreach_div_(scaled, list(torch._foreach_abs(list(denominator))))
    return _at_least_a_quarter_(scaled, u)


def _flush_(results: list[torch.Tensor], kept: Masks) -> None:
    """Zero (keeping the sign) the elements of `results` that the masks do not keep."""
    if kept is not None:
        torch._foreach_mul_(results, kept)


def _sqrt(backend: Any, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if tensors and tensors[0].device.type == "cuda":
        return list(torch._foreach_sqrt(tensors))
    return [backend.sqrt(t) for t in tensors]  # the CPU's vectorized sqrt is not IEEE


def apply_dense(
    backend: Any,
    xs: Sequence[Any],
    gs: Sequence[torch.Tensor],
    ms: Sequence[Any],
    vs: Sequence[Any],
    s: NadamScalars,
) -> None:
    """Update variables `xs` and slots `ms`, `vs` in place from gradients `gs`.

    Example:
        >>> import numpy as np
        >>> from nadam.backends.torch import TORCH_BACKEND
        >>> from nadam.nadam import nadam_scalars
        >>> s, _ = nadam_scalars(np.dtype("float32"), iterations=0, momentum_cache=1.0)
        >>> x, m, v = torch.ones(2), torch.zeros(2), torch.zeros(2)
        >>> apply_dense(TORCH_BACKEND, [x], [torch.ones(2)], [m], [v], s)
        >>> x
        tensor([0.9989, 0.9989])
    """
    x = [backend.read(t) for t in xs]
    m = [backend.read(t) for t in ms]
    v = [backend.read(t) for t in vs]
    u = _UNDERFLOW.get(x[0].dtype)
    s = reference.flush_scalars(s)  # TensorFlow reads a subnormal scalar as 0
    c = device_scalars(s, x[0])
    with torch.no_grad():
        # What TensorFlow reads: g flushed into new tensors (the gradients stay as they are),
        # m and v in place (they are overwritten below), x by a mask applied at its update.
        g = list(gs)
        g_normal = _normal(g, u)
        if g_normal is not None:
            g = list(torch._foreach_mul(g, g_normal))
        _flush_(m, _normal(m, u))
        _flush_(v, _normal(v, u))
        x_normal = _normal(x, u)
        # Each op, then its flush (masks computed from the op's operands before in-place ops).
        g_prime = list(torch._foreach_div(g, c.one_minus_prod))
        _flush_(g_prime, _quotient_kept(g, c.one_minus_prod, u))
        m_kept = _product_kept(m, float(s.beta_1), u)
        torch._foreach_mul_(m, c.beta_1)
        _flush_(m, m_kept)
        m_from_g = list(torch._foreach_mul(g, c.one_minus_beta_1))
        _flush_(m_from_g, _product_kept(g, float(s.one_minus_beta_1), u))
        torch._foreach_add_(m, m_from_g)
        _flush_(m, _normal(m, u))
        m_prime = list(torch._foreach_div(m, c.one_minus_prod1))
        _flush_(m_prime, _quotient_kept(m, c.one_minus_prod1, u))
        g_squared = list(torch._foreach_mul(g, g))
        _flush_(g_squared, _product_kept(g, g, u))
        g_squared_kept = _product_kept(g_squared, float(s.one_minus_beta_2), u)
        torch._foreach_mul_(g_squared, c.one_minus_beta_2)
        _flush_(g_squared, g_squared_kept)
        v_kept = _product_kept(v, float(s.beta_2), u)
        torch._foreach_mul_(v, c.beta_2)
        _flush_(v, v_kept)
        torch._foreach_add_(v, g_squared)
        _flush_(v, _normal(v, u))
        v_prime = list(torch._foreach_div(v, c.v_correction))
        _flush_(v_prime, _quotient_kept(v, c.v_correction, u))
        g_prime_kept = _product_kept(g_prime, float(s.one_minus_mu_t), u)
        torch._foreach_mul_(g_prime, c.one_minus_mu_t)
        _flush_(g_prime, g_prime_kept)
        m_prime_kept = _product_kept(m_prime, float(s.mu_t1), u)
        torch._foreach_mul_(m_prime, c.mu_t1)
        _flush_(m_prime, m_prime_kept)
        m_bar = list(torch._foreach_add(g_prime, m_prime))
        _flush_(m_bar, _normal(m_bar, u))
        denominator = _sqrt(backend, v_prime)  # never subnormal (`kernels.reference`)
        torch._foreach_add_(denominator, c.epsilon)
        _flush_(denominator, _normal(denominator, u))
        m_bar_kept = _product_kept(m_bar, float(s.lr), u)
        torch._foreach_mul_(m_bar, c.lr)
        _flush_(m_bar, m_bar_kept)
        step_kept = _quotient_kept(m_bar, denominator, u)
        torch._foreach_div_(m_bar, denominator)
        _flush_(m_bar, step_kept)
        _flush_(x, x_normal)
        torch._foreach_sub_(x, m_bar)
        _flush_(x, _normal(x, u))


def apply_sparse(
    backend: Any, x: Any, g_rows: torch.Tensor, indices: torch.Tensor, m: Any, v: Any,
    s: NadamScalars,
) -> None:
    """One variable's sparse step (unique `indices`): the reference rows, device scalars (the
    reference's flushing runs on any torch device, without synchronizing)."""
    with torch.no_grad():
        reference.apply_sparse(backend, x, g_rows, indices, m, v, device_scalars(s, g_rows))


def choose(backend: Any, device: str, dtype: Any) -> KernelChoice | None:
    """This kernel for torch tensors on CUDA devices; None for anything else."""
    if getattr(backend, "name", None) == "torch" and device.startswith("cuda"):
        return KernelChoice("torch-foreach", apply_dense, apply_sparse)
    return None
