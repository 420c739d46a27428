"""The fused CPU kernel end to end: its multi-threaded path against the Keras 2 oracle, and CPU
torch tensors taking it through the torch backend's NumPy views, bit for bit.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from kernel_helpers import BIG, DTYPES, assert_bitwise_equal

from nadam import Nadam, Variable, kernels
from nadam.kernels import cpu

# --- against the Keras 2 oracle, on the multi-threaded path ---------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_path_equals_keras(dtype):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    rng = np.random.default_rng(11)
    shapes = [(BIG,), (300, 3), (7,)]
    initial = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [Variable(a) for a in initial]
    theirs = [tf.Variable(a) for a in initial]
    opt, keras = Nadam(), tf_keras.optimizers.legacy.Nadam()
    for _ in range(5):
        grads = [(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes]
        opt.apply_gradients(list(zip(grads, ours, strict=True)))
        keras.apply_gradients(zip([tf.constant(g) for g in grads], theirs, strict=True))
    for a, b in zip(ours, theirs, strict=True):
        assert_bitwise_equal(a.numpy(), b.numpy(), "variable")
    for a, b in zip(opt.get_weights()[1:], keras.get_weights()[1:], strict=True):
        assert_bitwise_equal(a, b, "optimizer weight")


# --- CPU torch tensors, through the torch backend's NumPy views --------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_torch_tensors_take_the_fused_kernel_bit_for_bit(dtype):
    torch = pytest.importorskip("torch")
    from nadam.backends.torch import TORCH_BACKEND

    assert kernels.select(TORCH_BACKEND, "cpu", np.dtype(dtype)).name == cpu.NAME
    torch_dtype = getattr(torch, dtype)

    def run(reference: bool) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, dtype=torch_dtype, generator=generator))
                  for s in [(BIG,), (7, 3), ()]]
        params.append(torch.nn.Parameter(
            torch.randn(6, 5, dtype=torch_dtype, generator=generator).t()  # not contiguous
        ))
        table = torch.nn.Parameter(torch.randn(50, 4, dtype=torch_dtype, generator=generator))
        opt = Nadam()
        with kernels.reference_only() if reference else contextlib.nullcontext():
            for _ in range(3):
                grads = [torch.randn(p.shape, dtype=torch_dtype, generator=generator)
                         for p in params]
                rows = torch.tensor([[1, 5, 1, 49]])
                values = torch.randn(4, 4, dtype=torch_dtype, generator=generator)
                sparse = torch.sparse_coo_tensor(rows, values, (50, 4), check_invariants=True)
                opt.apply_gradients([*zip(grads, params, strict=True), (sparse, table)])
        return [p.detach().numpy().copy() for p in [*params, table]] + opt.get_weights()

    for i, (ours, theirs) in enumerate(zip(run(False), run(True), strict=True)):
        assert_bitwise_equal(ours, theirs, f"array {i}")
