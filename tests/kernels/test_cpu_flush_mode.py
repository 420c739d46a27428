"""The fused CPU kernel flushes subnormal numbers in the processor's FTZ/DAZ mode (as TensorFlow
does) in whichever thread runs it, and leaves the calling thread's mode as it found it: on, if
the caller had turned it on itself (torch.set_flush_denormal), off otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import BIG, DTYPES

from nadam import IndexedSlices, Nadam, Variable, kernels
from nadam.backends import NUMPY_BACKEND
from nadam.kernels import cpu


def _numpy_keeps_subnormals(dtype) -> bool:
    """Whether this thread computes subnormal results (FTZ off) and reads subnormal inputs as
    they are (DAZ off)."""
    tiny = np.finfo(dtype).tiny
    smallest = np.ones(1, f"u{np.dtype(dtype).itemsize}").view(dtype)  # no arithmetic
    return bool((np.array([tiny], dtype) * dtype(0.25))[0] != 0) and bool(
        (smallest * dtype(2))[0] != 0
    )


def _has_subnormals(array: np.ndarray) -> bool:
    return bool(((array != 0) & (np.abs(array) < np.finfo(array.dtype).tiny)).any())


@pytest.mark.parametrize("size", [7, BIG], ids=["calling thread", "helper threads"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_fused_kernel_flushes_and_restores_the_callers_mode(dtype, size):
    assert kernels.select(NUMPY_BACKEND, "cpu", np.dtype(dtype)).name == cpu.NAME
    assert _numpy_keeps_subnormals(dtype)
    tiny = np.finfo(dtype).tiny
    x = Variable(np.full(size, 0.5, dtype))
    table = Variable(np.full((BIG // 8 if size == BIG else 4, 8), 0.5, dtype))
    opt = Nadam()
    # (1 - beta_1) * g underflows: IEEE keeps a subnormal m, TensorFlow (and we) 0.
    grad = np.full(size, 4 * tiny, dtype)
    rows = IndexedSlices(np.full((2, 8), 4 * tiny, dtype), np.array([0, 3]), table.shape)
    opt.apply_gradients([(grad, x), (rows, table)])
    for slot in ("m", "v"):
        for var in (x, table):
            assert not _has_subnormals(opt.get_slot(var, slot).numpy())
    assert np.all(opt.get_slot(x, "m").numpy() == 0)
    assert _numpy_keeps_subnormals(dtype)  # the caller's mode is back


def test_a_caller_that_flushes_itself_keeps_its_mode():
    torch = pytest.importorskip("torch")
    if not torch.set_flush_denormal(True):
        pytest.skip("this processor has no flush-to-zero mode that torch can set")
    try:
        assert not _numpy_keeps_subnormals(np.float32)
        x = Variable(np.full(BIG, 0.5, np.float32))
        opt = Nadam()
        opt.apply_gradients([(np.full(BIG, 1e-30, np.float32), x)])
        opt.apply_gradients([(np.full(BIG, 1e-30, np.float32), x)])
        assert not _numpy_keeps_subnormals(np.float32)
    finally:
        torch.set_flush_denormal(False)
    assert _numpy_keeps_subnormals(np.float32)
