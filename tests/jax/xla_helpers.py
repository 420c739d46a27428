"""Shared helpers for the tests of the exact XLA step (`nadam.kernels.xla`) and the optax face."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from nadam.kernels import xla

DTYPES = ("float32", "float64")


def x64_for(dtype: Any) -> contextlib.AbstractContextManager[None]:
    """JAX's 64-bit mode for float64, scoped to the block (thread-local, so other tests in this
    process keep JAX's default)."""
    return jax.enable_x64(np.dtype(dtype) == np.float64)


def assert_same_bits(ours: Any, theirs: Any, what: str) -> None:
    """Same dtype, shape and bits: -0.0 differs from 0.0, and NaNs must match too."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[ours.dtype.itemsize]
    differ = ours.view(unsigned) != theirs.view(unsigned)
    if differ.any():
        where = np.argwhere(differ)[:3].tolist()
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {differ.size} elements differ in their bits, "
            f"first at {where}: ours {ours[differ][:3]} vs {theirs[differ][:3]}"
        )


def wide_values(rng: np.random.Generator, shape: Any, dtype: Any) -> np.ndarray:
    """Random numbers over the whole range that the step meets: magnitudes from subnormal to
    100, signed zeros among them."""
    dtype = np.dtype(dtype)
    lowest = -44 if dtype == np.float32 else -320
    exponents = rng.integers(lowest, 3, size=shape)
    values = rng.standard_normal(shape) * 10.0 ** exponents
    values[rng.random(shape) < 0.02] = 0.0
    values[rng.random(shape) < 0.02] = -0.0
    return values.astype(dtype)


@contextlib.contextmanager
def guards_removed() -> Iterator[None]:
    """Run the XLA step without its guards against XLA's rewrites (to show that the tests catch
    their loss). Clears JAX's compilation caches on the way in and out: the switch is read when
    a function is traced."""
    jax.clear_caches()
    xla._GUARDS_ENABLED = False
    try:
        yield
    finally:
        xla._GUARDS_ENABLED = True
        jax.clear_caches()


@contextlib.contextmanager
def global_x64() -> Iterator[None]:
    """JAX's 64-bit mode process-wide for the block, restored after. Needed where JAX works
    on other threads (a `pure_callback`'s results are checked there), which the thread-local
    `jax.enable_x64` does not reach."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
