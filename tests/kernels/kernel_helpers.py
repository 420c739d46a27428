"""Shared helpers of the kernel tests: bit-for-bit comparison and random steps.

Imported by name (`from kernel_helpers import ...`), as `tests/torch/torch_helpers.py` is:
pytest's default import mode puts this directory on `sys.path` for the test modules in it.

The CPU kernel tests run the same random steps twice through the public `apply_gradients`: once
on the default path (which picks the fused kernel for NumPy groups) and once inside
`kernels.reference_only()`, then require the variables, m, v, momentum_cache and iterations to
be equal bit for bit (`assert_fused_equals_reference`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import nadam
from nadam import IndexedSlices, Nadam, Variable, kernels
from nadam.backends import NUMPY_BACKEND
from nadam.kernels import cpu

DTYPES = (np.float32, np.float64)
BIG = cpu.PARALLEL_MIN_ELEMENTS + 12_345  # one tensor that takes the multi-threaded kernel
SRC = Path(nadam.__file__).resolve().parent.parent

Grad = Any  # an ndarray or an IndexedSlices


def _bits(array: Any) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.reshape(-1).view(f"u{array.dtype.itemsize}")


def assert_bitwise_equal(ours: Any, theirs: Any, what: str) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
    same = _bits(ours) == _bits(theirs)
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise AssertionError(
            f"{what}: {int((~same).sum())} of {same.size} elements differ, first at flat index "
            f"{bad}: {ours.reshape(-1)[bad]!r} != {theirs.reshape(-1)[bad]!r}"
        )


def assert_bitwise_equal_nan_aware(ours: Any, theirs: Any, what: str) -> None:
    """NaN exactly where `theirs` has NaN (any payload), every other element bit for bit."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
    nan = np.isnan(theirs)
    np.testing.assert_array_equal(np.isnan(ours), nan, err_msg=f"{what}: NaN positions")
    assert_bitwise_equal(ours[~nan], theirs[~nan], what)


def run_steps(
    make_variables: Callable[[], list[Any]],
    make_grads: Callable[[np.random.Generator, int], list[Grad]],
    steps: int,
    reference: bool,
    seed: int = 0,
    **hypers: Any,
) -> tuple[list[np.ndarray], list[Any]]:
    """`steps` calls of apply_gradients; returns get_weights() and the variables' values."""
    variables = make_variables()
    opt = Nadam(**hypers)
    rng = np.random.default_rng(seed)
    path = kernels.reference_only() if reference else contextlib.nullcontext()
    with path:
        for step in range(steps):
            opt.apply_gradients(list(zip(make_grads(rng, step), variables, strict=True)))
    values = [NUMPY_BACKEND.to_numpy(v) for v in variables]
    return opt.get_weights(), values


def assert_fused_equals_reference(make_variables, make_grads, steps=4, **hypers) -> None:
    fused_weights, fused_values = run_steps(make_variables, make_grads, steps, False, **hypers)
    ref_weights, ref_values = run_steps(make_variables, make_grads, steps, True, **hypers)
    assert len(fused_weights) == len(ref_weights)
    names = ["iterations", "momentum_cache"] + [f"slot {i}" for i in range(len(ref_weights) - 2)]
    for name, ours, theirs in zip(names, fused_weights, ref_weights, strict=True):
        assert_bitwise_equal(ours, theirs, name)
    assert int(fused_weights[0]) == steps
    for i, (ours, theirs) in enumerate(zip(fused_values, ref_values, strict=True)):
        assert_bitwise_equal(ours, theirs, f"variable {i}")


def random_variables(shapes: Sequence[tuple[int, ...]], dtype: Any, seed: int = 1):
    def make() -> list[Variable]:
        rng = np.random.default_rng(seed)
        return [Variable(rng.standard_normal(s).astype(dtype)) for s in shapes]

    return make


def random_grads(shapes: Sequence[tuple[int, ...]], dtype: Any):
    def make(rng: np.random.Generator, step: int) -> list[np.ndarray]:
        return [(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes]

    return make

def special_values(rng: np.random.Generator, n: int, dtype: Any) -> np.ndarray:
    """`n` values of `dtype` mixing normal, subnormal, huge, tiny and signed-zero ones."""
    info = np.finfo(dtype)
    pools = [
        rng.standard_normal(n),
        rng.standard_normal(n) * float(info.smallest_subnormal) * 64,  # subnormal
        rng.standard_normal(n) * float(info.tiny),  # near the normal/subnormal edge
        rng.standard_normal(n) * float(info.max) ** 0.5,  # squares near overflow
        rng.standard_normal(n) * 1e-20,
        np.zeros(n),
        -np.zeros(n),
        10.0 ** rng.uniform(-30, 30, n) * rng.choice([-1, 1], n),
    ]
    which = rng.integers(len(pools), size=n)
    return np.choose(which, pools).astype(dtype)


def random_sparse(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, count: int):
    indices = rng.integers(shape[0], size=count)
    if count > 2:
        indices[1] = indices[0]  # always at least one duplicate
    values = rng.standard_normal((count, *shape[1:])).astype(dtype)
    return IndexedSlices(values, indices, shape)
