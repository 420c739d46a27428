"""Nadam step kernels: pure functions of arrays and per-step scalars.

`reference` is the readable ground truth. Faster kernels register here and are picked per
group of variables by capability (backend, device, dtype); `reference_only()` turns the fast
paths off, for tests that compare a fast path with the reference and for benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np


class NadamScalars(NamedTuple):
    """One step's scalars for one dtype, each a NumPy scalar of that dtype (SPEC section 2)."""

    lr: np.generic
    beta_1: np.generic
    beta_2: np.generic
    one_minus_beta_1: np.generic
    one_minus_beta_2: np.generic
    epsilon: np.generic
    one_minus_mu_t: np.generic  # 1 - mu_t
    mu_t1: np.generic  # mu_{t+1}
    one_minus_prod: np.generic  # 1 - prod_{i<=t} mu_i
    one_minus_prod1: np.generic  # 1 - prod_{i<=t+1} mu_i
    v_correction: np.generic  # 1 - beta_2 ** t


# A dense kernel updates variables `xs` and slots `ms`, `vs` (backend objects) in place from
# gradient arrays `gs`; a sparse kernel does one variable from deduplicated rows.
DenseKernel = Callable[[Any, Sequence[Any], Sequence[Any], Sequence[Any], Sequence[Any],
                        NadamScalars], None]
SparseKernel = Callable[[Any, Any, Any, Any, Any, Any, NadamScalars], None]


class KernelChoice(NamedTuple):
    name: str
    dense: DenseKernel
    sparse: SparseKernel


_fast_paths_enabled = True


@contextmanager
def reference_only() -> Iterator[None]:
    """Run every step through `kernels.reference` inside this block.

    Example:
        >>> with reference_only():
        ...     pass  # opt.apply_gradients(...) here uses the plain formula
    """
    global _fast_paths_enabled
    previous, _fast_paths_enabled = _fast_paths_enabled, False
    try:
        yield
    finally:
        _fast_paths_enabled = previous


def select(backend: Any, device: str, dtype: np.dtype) -> KernelChoice:
    """The fastest kernel able to run a group of variables of this backend, device and dtype."""
    from nadam.kernels import reference

    if _fast_paths_enabled:
        for chooser in _FAST_PATH_CHOOSERS:
            choice = chooser(backend, device, dtype)
            if choice is not None:
                return choice
    return KernelChoice("reference", reference.apply_dense, reference.apply_sparse)


# Each chooser returns a KernelChoice for the groups it can run, else None.
_FAST_PATH_CHOOSERS: list[Callable[[Any, str, np.dtype], KernelChoice | None]] = []


def register_fast_path(chooser: Callable[[Any, str, np.dtype], KernelChoice | None]) -> None:
    """Add a fast-path chooser; later registrations are tried first."""
    _FAST_PATH_CHOOSERS.insert(0, chooser)


def _register_builtin_fast_paths() -> None:
    # `cpu` imports NumPy only; numba is imported when its first step runs.
    from nadam.kernels import cpu

    register_fast_path(cpu.choose)


_register_builtin_fast_paths()
