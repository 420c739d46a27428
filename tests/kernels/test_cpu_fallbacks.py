"""Which kernel runs, and the reference taking over what the fused CPU kernel cannot do: other
devices, dtypes and backends, strided, Fortran-ordered and unaligned memory, NumPy scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kernel_helpers import (
    BIG,
    DTYPES,
    assert_bitwise_equal,
    assert_fused_equals_reference,
    random_grads,
    random_sparse,
    random_variables,
    run_steps,
)

from nadam import Variable, kernels
from nadam.backends import NUMPY_BACKEND
from nadam.kernels import cpu

# --- which kernel runs -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_groups_get_the_fused_kernel_so_the_oracle_suite_tests_it(dtype):
    # The conformance suite's "default" path is whatever `select` picks: this kernel.
    assert kernels.select(NUMPY_BACKEND, "cpu", np.dtype(dtype)).name == cpu.NAME
    with kernels.reference_only():
        assert kernels.select(NUMPY_BACKEND, "cpu", np.dtype(dtype)).name == "reference"


def test_groups_the_kernel_cannot_run_get_the_reference():
    assert kernels.select(NUMPY_BACKEND, "cpu", np.dtype(np.float16)).name == "reference"
    assert cpu.choose(NUMPY_BACKEND, "cuda:0", np.dtype(np.float32)) is None

    class NoViews:  # a backend that cannot lend NumPy views
        name = "other"

    assert cpu.choose(NoViews(), "cpu", np.dtype(np.float32)) is None
    assert cpu.choose(NUMPY_BACKEND, "cpu", np.dtype(np.float32)) is not None


# --- memory the kernel cannot address directly --------------------------------------------------


def _awkward_variables(dtype: Any, base: dict[str, np.ndarray]) -> Callable[[], list[Any]]:
    def make() -> list[Any]:
        rng = np.random.default_rng(3)
        base["strided"] = rng.standard_normal((40, 60)).astype(dtype)
        unaligned = np.frombuffer(bytearray(np.dtype(dtype).itemsize * 257 + 1), dtype, 257, 1)
        unaligned[:] = rng.standard_normal(257)
        return [
            base["strided"][:, ::2],  # a plain ndarray variable: a strided view, updated in place
            Variable(np.asfortranarray(rng.standard_normal((30, 20)).astype(dtype))),
            unaligned,
            Variable(rng.standard_normal(BIG).astype(dtype)),  # a normal one in the same group
            Variable(rng.standard_normal((31, 17)).astype(dtype)),
        ]

    return make


def _awkward_grads(dtype: Any) -> Callable[[np.random.Generator, int], list[np.ndarray]]:
    def make(rng: np.random.Generator, step: int) -> list[np.ndarray]:
        return [
            rng.standard_normal((40, 30)).astype(dtype),
            rng.standard_normal((30, 20)).astype(dtype),
            rng.standard_normal(257).astype(dtype),
            rng.standard_normal(BIG).astype(dtype),
            # A transposed (non-contiguous) gradient on every other step.
            rng.standard_normal((17, 31)).astype(dtype).T if step % 2 else
            rng.standard_normal((31, 17)).astype(dtype),
        ]

    return make


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_unaligned_and_fortran_memory_is_still_right(dtype, monkeypatch):
    fused_base: dict[str, np.ndarray] = {}
    ref_base: dict[str, np.ndarray] = {}
    sizes_sent_to_reference: list[list[int]] = []
    real_reference = cpu.reference.apply_dense

    def spy(backend, xs, gs, ms, vs, s):
        sizes_sent_to_reference.append([int(np.size(backend.read(x))) for x in xs])
        real_reference(backend, xs, gs, ms, vs, s)

    monkeypatch.setattr(cpu.reference, "apply_dense", spy)
    fused = run_steps(_awkward_variables(dtype, fused_base), _awkward_grads(dtype), 4, False)
    monkeypatch.setattr(cpu.reference, "apply_dense", real_reference)
    ref = run_steps(_awkward_variables(dtype, ref_base), _awkward_grads(dtype), 4, True)
    for i, (ours, theirs) in enumerate(zip(fused[0] + fused[1], ref[0] + ref[1], strict=True)):
        assert_bitwise_equal(ours, theirs, f"array {i}")
    # The strided variable was updated through its view, inside its base array.
    assert_bitwise_equal(fused_base["strided"], ref_base["strided"], "base of the view")
    # Exactly the awkward tensors went to the reference: the strided, Fortran and unaligned
    # variables every step, the transposed gradient's variable on odd steps; never the big one.
    assert sizes_sent_to_reference == [[1200, 600, 257], [1200, 600, 257, 527]] * 2


def test_numpy_scalar_gradient_after_clipping_takes_the_reference():
    # Clipping a 0-d gradient yields a NumPy scalar, which no backend view can lend.
    shapes = [(), (5,)]
    assert_fused_equals_reference(
        random_variables(shapes, np.float64), random_grads(shapes, np.float64), clipnorm=0.01
    )


def test_mixed_dtypes_in_one_call_use_one_group_each():
    specs = [((BIG,), np.float32), ((10,), np.float64), ((7, 3), np.float16), ((), np.float32)]

    def make_variables():
        rng = np.random.default_rng(5)
        return [Variable(rng.standard_normal(s).astype(d)) for s, d in specs]

    def make_grads(rng, step):
        grads = [rng.standard_normal(s).astype(d) for s, d in specs]
        grads[1] = random_sparse(rng, (10,), np.float64, 4)
        return grads

    assert_fused_equals_reference(make_variables, make_grads)
