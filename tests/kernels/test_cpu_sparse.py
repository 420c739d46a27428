"""The fused CPU kernel's sparse step against the reference kernel, bit for bit (duplicate rows,
no rows, threads, dense and sparse in one call), and its refusal of out-of-range rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import (
    BIG,
    DTYPES,
    assert_bitwise_equal,
    assert_fused_equals_reference,
    random_sparse,
    random_variables,
)

from nadam.backends import NUMPY_BACKEND
from nadam.kernels import cpu
from nadam.nadam import nadam_scalars

# --- sparse ------------------------------------------------------------------------------------


SPARSE_CASES = {
    "rows of a matrix": [((50, 4), 30)],
    "a vector": [((40,), 25)],
    "3-d rows": [((9, 2, 3), 12)],
    "no rows this step": [((10, 3), 0)],
    "a big table (threads)": [((BIG // 8, 8), 2_000)],
    "several": [((20, 3), 5), ((31,), 40), ((BIG // 4, 4), 3)],
}


@pytest.mark.parametrize("case", SPARSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_with_duplicate_indices_equals_reference(dtype, case):
    specs = SPARSE_CASES[case]
    shapes = [shape for shape, _ in specs]

    def make_grads(rng, step):
        return [random_sparse(rng, shape, dtype, count) for shape, count in specs]

    assert_fused_equals_reference(random_variables(shapes, dtype), make_grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_and_sparse_mixed_in_one_call(dtype):
    dense_shapes = [(BIG,), (3, 4), ()]
    sparse_shapes = [(64, 5), (BIG // 2, 2)]
    shapes = dense_shapes + sparse_shapes

    def make_grads(rng, step):
        grads = [rng.standard_normal(s).astype(dtype) for s in dense_shapes]
        grads += [random_sparse(rng, s, dtype, 100) for s in sparse_shapes]
        if step % 2:  # two variables swap kinds: (3, 4) gets rows, (64, 5) a dense gradient
            grads[1] = random_sparse(rng, (3, 4), dtype, 2)
            grads[3] = rng.standard_normal((64, 5)).astype(dtype)
        return grads

    assert_fused_equals_reference(random_variables(shapes, dtype), make_grads, steps=4)
def test_sparse_kernel_rejects_out_of_range_rows_before_writing():
    s, _ = nadam_scalars(np.float32, iterations=0, momentum_cache=1.0)
    x, m, v = (np.ones((4, 2), np.float32) for _ in range(3))
    before = [a.copy() for a in (x, m, v)]
    with pytest.raises(IndexError, match="4 rows"):
        cpu.apply_sparse(NUMPY_BACKEND, x, np.ones((1, 2), np.float32), np.array([4]), m, v, s)
    for a, b in zip((x, m, v), before, strict=True):
        assert_bitwise_equal(a, b, "unchanged")
