"""Every kernel in `kernels.registered_kernels()` against `kernels.reference`, bit for bit.

The tests are parametrized over the registry, so a kernel registered later (with a
`RegisteredKernel` entry) is held to the reference here without a new test. Each kernel runs
on CPU arrays of the library it names (a torch kernel's ops run on any device), on the same
inputs as the reference on NumPy arrays: float32 and float64, tensors of odd sizes (0-d, empty,
one big enough for a multi-threaded path, a transposed one), mixed-magnitude and non-finite
values, dense and sparse (duplicate rows summed by the NumPy backend's `dedupe` first), at
steps from the first to late training, where the bias corrections are exactly 1. Among the
values are subnormal ones and, made from each step's scalars, operands whose products land at
the smallest normal number, where TensorFlow's flush-to-zero decides (`kernels.reference`): on
both sides of x86's rounding window, so a kernel that flushes in hardware (the fused CPU one)
and one that models it with masks (the torch one) are both held to the reference's model. A
second test holds every kernel, the reference included, to the flushing itself: subnormal
inputs act as zeros and no result is subnormal.
Also here: what the registry lists and in what order `select` tries it, and that importing the
kernels imports no framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kernel_helpers import BIG, DTYPES, SRC, assert_bitwise_equal_nan_aware, special_values

from nadam import kernels
from nadam.backends import NUMPY_BACKEND
from nadam.backends.base import SparseGrad
from nadam.kernels import reference
from nadam.nadam import nadam_scalars

FAST_KERNELS = [kernel for kernel in kernels.registered_kernels() if kernel.name != "reference"]

# (iterations, momentum_cache, hyperparameters) of the step whose scalars the kernels get.
STEPS = {
    "first": (0, 1.0, {}),
    "fifth, other hyperparameters": (4, 0.2, {"lr": 0.01, "beta_1": 0.8, "beta_2": 0.99}),
    "momentum cache underflowed": (1_200, 0.0, {}),
    "every correction exactly 1": (80_000, 0.0, {}),
}

# (shape, transposed): a transposed tensor is the transpose of a C-ordered one of the
# reversed shape, so not contiguous.
DENSE_TENSORS = [
    ((), False), ((0,), False), ((1,), False), ((7,), False), ((33, 5), False),
    ((4, 0, 3), False), ((BIG,), False), ((6, 4), True), ((1, 1), False),
]
# (variable shape, gradient rows before deduplication).
SPARSE_TENSORS = [((9,), 12), ((20, 3), 7), ((6, 2, 3), 4), ((5, 4), 0), ((1, 2), 3),
                  ((BIG // 8, 8), 300)]


# --- the array libraries a kernel can be handed -------------------------------------------------


def _numpy_arrays() -> tuple[Any, Callable[[np.ndarray], Any]]:
    return NUMPY_BACKEND, np.copy  # np.copy keeps a transposed array's (Fortran) layout


def _torch_arrays() -> tuple[Any, Callable[[np.ndarray], Any]]:
    torch = pytest.importorskip("torch")
    from nadam.backends.torch import TORCH_BACKEND

    def convert(array: np.ndarray) -> Any:
        if array.ndim == 2 and array.flags.f_contiguous and not array.flags.c_contiguous:
            return torch.from_numpy(array.T.copy(order="C")).t()  # the same layout
        return torch.from_numpy(array.copy(order="C"))

    return TORCH_BACKEND, convert


def _jax_arrays() -> tuple[Any, Callable[[np.ndarray], Any]]:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from nadam import Variable
    from nadam.backends.jax import JAX_BACKEND

    def convert(array: np.ndarray) -> Any:
        # A Variable (what the kernel swaps new values into); x64 only while the array is
        # made, so the rest of the process keeps JAX's default. The kernel keeps float64.
        with jax.enable_x64(True):
            return Variable(jnp.asarray(array))

    return JAX_BACKEND, convert


ARRAYS = {"numpy": _numpy_arrays, "torch": _torch_arrays, "jax": _jax_arrays}


def _arrays_for(kernel: kernels.RegisteredKernel) -> tuple[Any, Callable[[np.ndarray], Any]]:
    if kernel.arrays not in ARRAYS:
        pytest.fail(f"kernel {kernel.name!r} takes {kernel.arrays!r} arrays, which this test "
                    "cannot make yet: add them to ARRAYS")
    return ARRAYS[kernel.arrays]()


# --- inputs --------------------------------------------------------------------------------------


def _scalars(dtype: Any, step: str) -> Any:
    iterations, cache, hypers = STEPS[step]
    s, _ = nadam_scalars(np.dtype(dtype), iterations, cache, **hypers)
    # The step is the one its name says: which divisors are exactly 1.
    assert (s.one_minus_prod == 1 and s.one_minus_prod1 == 1) == (cache == 0.0)
    assert (s.v_correction == 1) == step.startswith("every")
    return s


def _at_the_smallest_normal(factor: Any, dtype: Any) -> np.ndarray:
    """The positive numbers t of `dtype` (within 64 units in the last place of 2**-E / |factor|)
    whose product with `factor` IEEE rounds to the smallest normal number 2**-E: those that
    x86 flushes (their product rounded with an unbounded exponent stays below 2**-E) and those
    it keeps, whichever this factor has."""
    tiny = np.finfo(dtype).tiny
    center = np.asarray(tiny / np.abs(np.asarray(factor, np.float64)), dtype)
    unsigned = f"u{center.itemsize}"
    neighbours = (center.reshape(1).view(unsigned).astype(np.int64) + np.arange(-64, 65))
    candidates = neighbours.astype(unsigned).view(dtype)
    return candidates[np.abs(dtype(factor) * candidates) == tiny]


def _edge_values(rng: np.random.Generator, n: int, dtype: Any, s: Any, kind: str) -> np.ndarray:
    """`n` values of gradient or slot `kind` at the edge of flushing for the step's scalars `s`:
    operands whose first product (beta_1 * m, (1 - beta_1) * g, g * g, beta_2 * v) IEEE rounds
    to the smallest normal number, their neighbours, and subnormal numbers, random signs."""
    tiny = np.finfo(dtype).tiny
    if kind == "g":
        square_root = np.asarray(np.sqrt(np.float64(tiny)), dtype)  # g * g at the edge
        unsigned = f"u{square_root.itemsize}"
        near = (square_root.reshape(1).view(unsigned).astype(np.int64) + np.arange(-8, 9))
        roots = near.astype(unsigned).view(dtype)
        edge = np.concatenate([_at_the_smallest_normal(s.one_minus_beta_1, dtype),
                               roots[np.abs(roots * roots) == tiny]])
    elif kind in "mv":
        edge = _at_the_smallest_normal(s.beta_1 if kind == "m" else s.beta_2, dtype)
    else:  # x: numbers at the smallest normal number, for x - step
        edge = np.array([tiny, 2 * tiny], dtype)
    values = rng.choice(edge, n) if edge.size else np.full(n, tiny, dtype)
    unsigned = f"u{values.itemsize}"
    nudged = values.view(unsigned).astype(np.int64) + rng.integers(-2, 3, n) * (rng.random(n) < 0.3)
    values = nudged.astype(unsigned).view(dtype)
    subnormal = rng.random(n) < 0.2
    values[subnormal] = values[subnormal] * rng.uniform(0, 1, int(subnormal.sum())).astype(dtype)
    values = values * rng.choice(np.array([-1, 1], dtype), n)
    return np.abs(values) if kind == "v" else values


def _edge_tensors(dtype: Any, s: Any, shape: tuple[int, ...], seed: int = 2025) -> dict:
    """x, g, m and v of `shape`, made of `_edge_values` for the step's scalars `s`."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return {kind: _edge_values(rng, size, dtype, s, kind).reshape(shape) for kind in "xgmv"}


def _with_non_finite(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    if array.size >= 8:
        for value in (np.inf, -np.inf, np.nan):
            where = rng.integers(array.size, size=max(1, array.size // 500))
            array[np.unravel_index(where, array.shape)] = value  # also into a transposed one
    return array


def _tensor(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any,
            transposed: bool = False) -> np.ndarray:
    stored = shape[::-1] if transposed else shape
    array = special_values(rng, int(np.prod(stored)), dtype).reshape(stored)
    return array.T if transposed else array


EDGE_SIZE = 4099  # one more tensor, of values at the flushing edge (`_edge_values`)


def _dense_inputs(dtype: Any, s: Any = None) -> list[list[np.ndarray]]:
    """[xs, gs, ms, vs] as NumPy arrays; v non-negative, as a second moment is. With the step's
    scalars `s`, one more tensor of values at the flushing edge for them."""
    rng = np.random.default_rng(2024)
    xs, gs, ms, vs = [], [], [], []
    for shape, transposed in DENSE_TENSORS:
        xs.append(_tensor(rng, shape, dtype, transposed))
        gs.append(_with_non_finite(rng, _tensor(rng, shape, dtype, transposed)))
        ms.append(_tensor(rng, shape, dtype, transposed))
        vs.append(np.asarray(np.abs(_tensor(rng, shape, dtype, transposed))))  # 0-d: an array
    if s is not None:
        edge = _edge_tensors(dtype, s, (EDGE_SIZE,))
        for group, kind in zip((xs, gs, ms, vs), "xgmv", strict=True):
            group.append(edge[kind])
    return [xs, gs, ms, vs]


EDGE_ROWS = (64, 33)  # a sparse variable of values at the flushing edge, half its rows indexed


def _sparse_inputs(dtype: Any, s: Any = None) -> list[tuple[np.ndarray, ...]]:
    """(x, unique rows, their indices, m, v) per variable, duplicates summed by `dedupe`. With
    the step's scalars `s`, one more variable of values at the flushing edge for them."""
    rng = np.random.default_rng(7)
    cases = []
    for shape, count in SPARSE_TENSORS:
        indices = rng.integers(shape[0], size=count).astype(np.int64)
        if count > 2:
            indices[1] = indices[0]  # always at least one duplicate
        values = _with_non_finite(rng, _tensor(rng, (count, *shape[1:]), dtype))
        unique = NUMPY_BACKEND.dedupe(SparseGrad(values, indices))
        assert unique.indices.size == np.unique(indices).size
        x, m = _tensor(rng, shape, dtype), _tensor(rng, shape, dtype)
        cases.append((x, unique.values, unique.indices, m, np.abs(_tensor(rng, shape, dtype))))
    if s is not None:
        rows = EDGE_ROWS[0]
        indices = rng.permutation(rows)[: rows // 2].astype(np.int64)
        edge = _edge_tensors(dtype, s, EDGE_ROWS)
        cases.append((edge["x"], edge["g"][indices], indices, edge["m"], edge["v"]))
    return cases


# --- the comparison -----------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", FAST_KERNELS, ids=lambda kernel: kernel.name)
def test_dense_kernel_equals_the_reference_bit_for_bit(kernel, dtype, step):
    backend, convert = _arrays_for(kernel)
    choice = kernel.load()
    s = _scalars(dtype, step)
    inputs = _dense_inputs(dtype, s)
    expected = [[a.copy() for a in group] for group in inputs]
    ours = [[convert(a) for a in group] for group in inputs]
    with np.errstate(all="ignore"):  # overflow and inf - inf, on both sides
        reference.apply_dense(NUMPY_BACKEND, *expected, s)
        choice.dense(backend, *ours, s)
    for name, position in (("x", 0), ("m", 2), ("v", 3)):
        for i, (theirs, mine) in enumerate(zip(expected[position], ours[position], strict=True)):
            what = f"{kernel.name}: {name} of tensor {i} {[*DENSE_TENSORS, 'edge'][i]}"
            assert_bitwise_equal_nan_aware(backend.to_numpy(mine), theirs, what)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", FAST_KERNELS, ids=lambda kernel: kernel.name)
def test_sparse_kernel_equals_the_reference_bit_for_bit(kernel, dtype, step):
    backend, convert = _arrays_for(kernel)
    choice = kernel.load()
    s = _scalars(dtype, step)
    for i, case in enumerate(_sparse_inputs(dtype, s)):
        x, rows, indices, m, v = (a.copy() for a in case)
        mine = [convert(a) for a in case]
        with np.errstate(all="ignore"):
            reference.apply_sparse(NUMPY_BACKEND, x, rows, indices, m, v, s)
            choice.sparse(backend, *mine, s)
        for name, theirs, ours in (("x", x, mine[0]), ("m", m, mine[3]), ("v", v, mine[4])):
            what = f"{kernel.name}: {name} of variable {i} {[*SPARSE_TENSORS, 'edge'][i]}"
            assert_bitwise_equal_nan_aware(backend.to_numpy(ours), theirs, what)


def test_the_inputs_reach_the_edges_they_are_meant_to():
    # Mixed magnitudes, non-finite gradients, and steps that really produce NaN and inf: the
    # comparison above is not only of tame values.
    inputs = _dense_inputs(np.float32)
    gradients = np.concatenate([g.reshape(-1) for g in inputs[1]])
    assert np.isnan(gradients).any() and np.isinf(gradients).any()
    magnitudes = np.abs(gradients[np.isfinite(gradients)])
    assert ((0 < magnitudes) & (magnitudes < np.finfo(np.float32).tiny)).any()  # subnormal
    x = [a.copy() for a in inputs[0]]
    with np.errstate(all="ignore"):
        reference.apply_dense(NUMPY_BACKEND, x, *inputs[1:], _scalars(np.float32, "first"))
    values = np.concatenate([a.reshape(-1) for a in x])
    assert np.isnan(values).any() and np.isfinite(values).mean() > 0.9


def test_the_edge_values_straddle_the_rounding_window():
    # Products that IEEE rounds to the smallest normal number, in the first ops of the dense
    # step: some flushed by x86's rule and some kept, in each dtype over the steps (which of
    # the two a scalar allows depends on its bits), and products that IEEE leaves subnormal.
    for dtype in DTYPES:
        tiny = np.finfo(dtype).tiny
        flushed = kept = 0
        for step in STEPS:
            s = _scalars(dtype, step)
            edge = _edge_tensors(dtype, s, (EDGE_SIZE,))  # as `_dense_inputs` has them
            g, m, v = (reference.flush(edge[kind]) for kind in "gmv")
            for scalar, operand in ((s.beta_1, m), (s.one_minus_beta_1, g), (g, g),
                                    (s.beta_2, v)):
                at_tiny = np.abs(scalar * operand) == tiny
                zero = reference.mul(scalar, operand) == 0
                flushed, kept = flushed + (at_tiny & zero).sum(), kept + (at_tiny & ~zero).sum()
                assert ((0 < np.abs(scalar * operand)) & (np.abs(scalar * operand) < tiny)).any()
        assert flushed > 100 and kept > 100, (dtype, flushed, kept)


def _zero_subnormals(array: np.ndarray) -> np.ndarray:
    """`array` with each subnormal element replaced by a zero of its sign."""
    subnormal = (array != 0) & (np.abs(array) < np.finfo(array.dtype).tiny)
    return np.where(subnormal, np.copysign(np.zeros_like(array), array), array)


def _has_subnormals(array: np.ndarray) -> bool:
    return bool(((array != 0) & (np.abs(array) < np.finfo(array.dtype).tiny)).any())


@pytest.mark.parametrize("step", ["first", "momentum cache underflowed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", kernels.registered_kernels(), ids=lambda kernel: kernel.name)
def test_every_kernel_flushes_subnormals_as_tensorflow(kernel, dtype, step):
    # TensorFlow's FTZ and DAZ (`kernels.reference`): a subnormal input acts as a zero of its
    # sign, and no x, m or v it writes is subnormal (except the rows a sparse step leaves
    # alone). The inputs hold subnormals and products that underflow. (The fused kernel's
    # threads flush too: the comparison above, on a tensor of BIG elements, shows it.)
    backend, convert = _arrays_for(kernel)
    choice = kernel.load()
    s = _scalars(dtype, step)
    rng = np.random.default_rng(5)
    edge = _edge_tensors(dtype, s, (EDGE_SIZE,), seed=6)
    inputs = [[special_values(rng, 5000, dtype), edge[kind]] for kind in "xgmv"]
    inputs[3] = [np.abs(v) for v in inputs[3]]
    assert all(_has_subnormals(a) for group in inputs for a in group)
    runs = []
    for arrays in (inputs, [[_zero_subnormals(a) for a in group] for group in inputs]):
        ours = [[convert(a) for a in group] for group in arrays]
        with np.errstate(all="ignore"):
            choice.dense(backend, *ours, s)
        runs.append([[backend.to_numpy(a) for a in ours[position]] for position in (0, 2, 3)])
    for name, with_subnormals, zeroed in zip("xmv", *runs, strict=True):
        for i, (a, b) in enumerate(zip(with_subnormals, zeroed, strict=True)):
            what = f"{kernel.name}: {name} of tensor {i}"
            assert not _has_subnormals(a), f"{what} has subnormal numbers"
            assert_bitwise_equal_nan_aware(a, b, f"{what}, subnormal inputs against zeros")
    # Sparse: m and v decay everywhere, x moves in the indexed rows only.
    rows = EDGE_ROWS[0]
    indices = rng.permutation(rows)[: rows // 2].astype(np.int64)
    case = _edge_tensors(dtype, s, EDGE_ROWS, seed=7)
    case["g"] = case["g"][indices]
    results = []
    for zero in (False, True):
        x, g, m, v = (case[k].copy() for k in "xgmv")
        if zero:
            x[indices], g, m, v = _zero_subnormals(x[indices]), *map(_zero_subnormals, (g, m, v))
        mine = [convert(a) for a in (x, g, indices, m, v)]
        with np.errstate(all="ignore"):
            choice.sparse(backend, *mine, s)
        results.append([backend.to_numpy(mine[p]) for p in (0, 3, 4)])
    untouched = np.setdiff1d(np.arange(rows), indices)
    assert_bitwise_equal_nan_aware(results[0][0][untouched], case["x"][untouched], "rows left")
    for name, a, b in zip("xmv", *results, strict=True):
        what = f"{kernel.name}: sparse {name}"
        assert not _has_subnormals(a[indices] if name == "x" else a), f"{what} has subnormals"
        assert_bitwise_equal_nan_aware(a, b, f"{what}, subnormal inputs against zeros")


# --- the registry ---------------------------------------------------------------------------------


def test_the_registry_lists_the_reference_first_and_every_builtin_kernel():
    registered = kernels.registered_kernels()
    names = [kernel.name for kernel in registered]
    assert names[0] == "reference" and len(set(names)) == len(names)
    assert {"cpu-fused", "torch-foreach"} <= set(names)
    assert all(kernel.arrays in ARRAYS for kernel in registered)
    numpy_kernels = [kernel for kernel in registered if kernel.arrays == "numpy"]
    assert [kernel.load().name for kernel in numpy_kernels] == [k.name for k in numpy_kernels]
    registered.clear()  # a copy: the registry itself is untouched
    assert kernels.registered_kernels()


def test_cuda_torch_groups_take_the_torch_kernel_and_cpu_ones_the_fused_kernel():
    pytest.importorskip("torch")
    from nadam.backends.torch import TORCH_BACKEND

    for dtype in (np.float16, np.float32, np.float64):
        assert kernels.select(TORCH_BACKEND, "cuda:0", np.dtype(dtype)).name == "torch-foreach"
        assert kernels.select(TORCH_BACKEND, "cuda", np.dtype(dtype)).name == "torch-foreach"
    assert kernels.select(TORCH_BACKEND, "cpu", np.dtype(np.float32)).name == "cpu-fused"
    assert kernels.select(TORCH_BACKEND, "cpu", np.dtype(np.float16)).name == "reference"
    assert kernels.select(NUMPY_BACKEND, "cuda:0", np.dtype(np.float32)).name == "reference"
    with kernels.reference_only():
        assert kernels.select(TORCH_BACKEND, "cuda:0", np.dtype(np.float32)).name == "reference"


LAZY_TORCH_KERNEL = """
    import json, sys
    import numpy as np
    import nadam, nadam.kernels
    from nadam.backends import NUMPY_BACKEND
    report = {}
    nadam.kernels.registered_kernels()
    nadam.kernels.select(NUMPY_BACKEND, "cpu", np.dtype("float32"))
    nadam.kernels.select(NUMPY_BACKEND, "cuda:0", np.dtype("float32"))
    report["torch_after_kernels"] = "torch" in sys.modules
    try:
        from nadam.backends.torch import TORCH_BACKEND
    except ImportError:
        report["torch_installed"] = False
    else:
        report["torch_installed"] = True
        foreach = "nadam.kernels.torch_foreach"
        report["foreach_after_backend"] = foreach in sys.modules
        nadam.kernels.select(TORCH_BACKEND, "cpu", np.dtype("float32"))
        report["foreach_after_cpu_group"] = foreach in sys.modules
        report["cuda_choice"] = nadam.kernels.select(TORCH_BACKEND, "cuda:0",
                                                     np.dtype("float32")).name
        report["foreach_after_cuda_group"] = foreach in sys.modules
    print(json.dumps(report))
"""


def test_importing_the_kernels_imports_no_framework_and_the_torch_kernel_loads_on_demand():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LAZY_TORCH_KERNEL)], capture_output=True,
        text=True, timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch_after_kernels"] is False
    if report["torch_installed"]:
        assert report["foreach_after_backend"] is False
        assert report["foreach_after_cpu_group"] is False
        assert report["cuda_choice"] == "torch-foreach"
        assert report["foreach_after_cuda_group"] is True
