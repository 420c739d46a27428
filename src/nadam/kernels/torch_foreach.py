"""The Nadam step for CUDA tensors with torch's multi-tensor (`torch._foreach_*`) ops.

One op per line of the formula in `kernels.reference`, in the same order, each over the whole
list of tensors: every element sees exactly the reference's sequence of IEEE operations, so
the result is the reference's, bit for bit. Two details keep it that way:

- the step's scalars are 0-d tensors on the device, never host scalars: torch's CUDA division
  by a host scalar multiplies by its reciprocal, which can differ in the last bit;
- no fused op (`addcmul`, `lerp`, `alpha=` other than 1), which could contract into an FMA.

The kernel runs on any torch device; it is chosen for CUDA groups, and tested on the CPU (where
the `_foreach_` ops loop over the tensors) against the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nadam.kernels import KernelChoice, NadamScalars, reference


def device_scalars(s: NadamScalars, like: torch.Tensor) -> NadamScalars:
    """The step's scalars as 0-d tensors of `like`'s dtype on its device (one transfer).

    Each scalar is a NumPy scalar of that dtype, so the conversion through float is exact.
    """
    packed = torch.tensor([float(value) for value in s], dtype=like.dtype)
    return NadamScalars(*packed.to(like.device).unbind())


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
    g = list(gs)
    c = device_scalars(s, x[0])
    with torch.no_grad():
        g_prime = torch._foreach_div(g, c.one_minus_prod)
        torch._foreach_mul_(m, c.beta_1)
        torch._foreach_add_(m, torch._foreach_mul(g, c.one_minus_beta_1))
        m_prime = torch._foreach_div(m, c.one_minus_prod1)
        g_squared = torch._foreach_mul(g, g)
        torch._foreach_mul_(g_squared, c.one_minus_beta_2)
        torch._foreach_mul_(v, c.beta_2)
        torch._foreach_add_(v, g_squared)
        v_prime = torch._foreach_div(v, c.v_correction)
        torch._foreach_mul_(g_prime, c.one_minus_mu_t)
        torch._foreach_mul_(m_prime, c.mu_t1)
        m_bar = torch._foreach_add(g_prime, m_prime)
        denominator = _sqrt(backend, list(v_prime))
        torch._foreach_add_(denominator, c.epsilon)
        torch._foreach_mul_(m_bar, c.lr)
        torch._foreach_div_(m_bar, denominator)
        torch._foreach_sub_(x, m_bar)


def apply_sparse(
    backend: Any, x: Any, g_rows: torch.Tensor, indices: torch.Tensor, m: Any, v: Any,
    s: NadamScalars,
) -> None:
    """One variable's sparse step (unique `indices`): the reference rows, device scalars."""
    with torch.no_grad():
        reference.apply_sparse(backend, x, g_rows, indices, m, v, device_scalars(s, g_rows))


def choose(backend: Any, device: str, dtype: Any) -> KernelChoice | None:
    """This kernel for torch tensors on CUDA devices; None for anything else."""
    if getattr(backend, "name", None) == "torch" and device.startswith("cuda"):
        return KernelChoice("torch-foreach", apply_dense, apply_sparse)
    return None
