"""Nadam step kernels: pure functions of arrays and per-step scalars.

`reference` is the readable ground truth. Faster kernels register here and are picked per
group of variables by capability (backend, device, dtype); `reference_only()` turns the fast
paths off, for tests that compare a fast path with the reference and for benchmarks.
`registered_kernels()` lists every kernel known here, so that one test holds each of them to
the reference bit for bit. Importing this package imports NumPy only: a kernel built on a
framework (torch) is imported when a group of that framework's tensors first asks for it.
"""

from __future__ import annotations

import importlib
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


# A prepared dense kernel: `dense` bound to one group's variables and slots, called with each
# step's gradients and scalars (the caller keeps that memory unchanged meanwhile).
PreparedDense = Callable[[Sequence[Any], NadamScalars], None]
PrepareDense = Callable[[Any, Sequence[Any], Sequence[Any], Sequence[Any], np.dtype],
                        PreparedDense]


class KernelChoice(NamedTuple):
    name: str
    dense: DenseKernel
    sparse: SparseKernel
    prepare_dense: PrepareDense | None = None
    """Optional: binds `dense` to a group once, for steps that repeat over the same memory."""

    def prepared(
        self, backend: Any, xs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
        dtype: np.dtype,
    ) -> PreparedDense:
        """`dense` bound to this group: the kernel's own preparation, or a plain closure."""
        if self.prepare_dense is not None:
            return self.prepare_dense(backend, xs, ms, vs, dtype)
        dense = self.dense
        return lambda gs, s: dense(backend, xs, gs, ms, vs, s)


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


# The step inside a trace, per framework: modules with the same functions (`nadam_scalars`,
# `decayed_learning_rate`, `dense_update`, `sparse_update`), imported only when asked for.
_TRACED_KERNELS = {"jax": "nadam.kernels.xla", "tensorflow": "nadam.kernels.tf_ops"}


def traced(framework: str) -> Any:
    """The module that runs the step inside `framework`'s traces ("jax": `kernels.xla`,
    "tensorflow": `kernels.tf_ops`); ValueError for another framework.

    Example:
        >>> traced("jax").__name__
        'nadam.kernels.xla'
    """
    import importlib

    try:
        return importlib.import_module(_TRACED_KERNELS[framework])
    except KeyError:
        raise ValueError(
            f"No traced Nadam step for {framework!r}; there is one for "
            f"{', '.join(sorted(_TRACED_KERNELS))}"
        ) from None


Chooser = Callable[[Any, str, np.dtype], KernelChoice | None]

# Each chooser returns a KernelChoice for the groups it can run, else None.
_FAST_PATH_CHOOSERS: list[Chooser] = []


class RegisteredKernel(NamedTuple):
    """A kernel known to this package, named without importing it.

    `module` defines the kernel's `apply_dense` and `apply_sparse`; `arrays` is the array
    library whose CPU arrays a test hands it ("numpy", or "torch" for a kernel built on torch
    ops, which run on any device) and whose package must be importable to load it.

    Example:
        >>> [kernel.name for kernel in registered_kernels()][:2]
        ['reference', 'cpu-fused']
    """

    name: str
    module: str
    arrays: str

    def load(self) -> KernelChoice:
        """The kernel's functions (importing its module, and so its framework)."""
        module = importlib.import_module(self.module)
        return KernelChoice(self.name, module.apply_dense, module.apply_sparse)


_KERNELS: list[RegisteredKernel] = [
    RegisteredKernel("reference", "nadam.kernels.reference", "numpy"),
]


def register_fast_path(chooser: Chooser, kernel: RegisteredKernel | None = None) -> None:
    """Add a fast-path chooser; later registrations are tried first.

    Pass `kernel` to have `registered_kernels()` list it, and so have the registry's test
    compare it with the reference.
    """
    _FAST_PATH_CHOOSERS.insert(0, chooser)
    if kernel is not None:
        _KERNELS.append(kernel)


def registered_kernels() -> list[RegisteredKernel]:
    """Every kernel known here, in registration order: the reference first, then the fast paths
    registered with a `kernel` entry. Listing them imports nothing."""
    return list(_KERNELS)


def _torch_on_cuda(backend: Any, device: str, dtype: np.dtype) -> KernelChoice | None:
    """`kernels.torch_foreach` for torch groups on CUDA devices; it (and torch) is imported by
    the first such group, never by importing this package."""
    if getattr(backend, "name", None) != "torch" or not str(device).startswith("cuda"):
        return None
    from nadam.kernels import torch_foreach

    return torch_foreach.choose(backend, device, dtype)


def _jax_variables(backend: Any, device: str, dtype: np.dtype) -> KernelChoice | None:
    """`kernels.jax_variables` (the XLA step) for groups of `nadam.Variable`s holding JAX
    arrays; it (and JAX) is imported by the first such group."""
    if getattr(backend, "name", None) != "jax":
        return None
    from nadam.kernels import jax_variables

    return jax_variables.choose(backend, device, dtype)


def _register_builtin_fast_paths() -> None:
    # `cpu` imports NumPy only; numba is imported when its first step runs.
    from nadam.kernels import cpu

    register_fast_path(cpu.choose, RegisteredKernel(cpu.NAME, "nadam.kernels.cpu", "numpy"))
    # Registered last, so tried first; the CPU chooser declines CUDA groups anyway.
    register_fast_path(
        _torch_on_cuda,
        RegisteredKernel("torch-foreach", "nadam.kernels.torch_foreach", "torch"),
    )
    register_fast_path(
        _jax_variables, RegisteredKernel("jax-xla", "nadam.kernels.jax_variables", "jax")
    )


_register_builtin_fast_paths()
