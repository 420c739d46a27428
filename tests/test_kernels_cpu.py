"""The fused CPU kernel (`nadam.kernels.cpu`) against the reference kernel, bit for bit.

Every comparison runs the same random steps twice through the public `apply_gradients`: once on
the default path (which picks the fused kernel for NumPy groups) and once inside
`kernels.reference_only()`, then requires the variables, m, v, momentum_cache and iterations to
be equal bit for bit. A few tests run in a fresh interpreter because they are about what a new
process does (lazy import, missing numba, the on-disk cache of compiled code).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nadam
from nadam import IndexedSlices, Nadam, Variable, kernels
from nadam.backends import NUMPY_BACKEND
from nadam.kernels import cpu
from nadam.nadam import nadam_scalars

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


# --- dense, bit for bit ------------------------------------------------------------------------

DENSE_CASES = {
    "one tensor": [(3,)],
    "a scalar": [()],
    "odd sizes": [(1,), (7, 3), (), (65_537,), (2, 3, 5, 7), (0,), (1, 1)],
    "many tensors across chunk boundaries": [(513, 129), (65_535,), (100,)] * 12,
    "one big tensor (threads)": [(BIG,)],
    "big and small together (threads)": [(BIG // 3, 3), (5,), (), (70_001,)],
}


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_equals_reference(dtype, case):
    shapes = DENSE_CASES[case]
    assert_fused_equals_reference(random_variables(shapes, dtype), random_grads(shapes, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_equals_reference_with_other_hyperparameters(dtype):
    shapes = [(BIG,), (33, 3)]
    schedule = nadam.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    assert_fused_equals_reference(
        random_variables(shapes, dtype), random_grads(shapes, dtype), steps=5,
        learning_rate=schedule, beta_1=0.8, beta_2=0.95, epsilon=1e-3, decay=0.01,
        clipnorm=0.5,
    )


def _special_values(rng: np.random.Generator, n: int, dtype: Any) -> np.ndarray:
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_equals_reference_on_subnormal_huge_and_zero_values(dtype):
    # The check that numba/LLVM neither contracts to FMA nor flushes subnormals: any change
    # in rounding shows up among a million mixed-magnitude inputs.
    n = 1 << 20
    shapes = [(n,), (1000,)]

    def make_variables() -> list[Variable]:
        rng = np.random.default_rng(7)
        return [Variable(_special_values(rng, int(np.prod(s)), dtype).reshape(s)) for s in shapes]

    def make_grads(rng, step):
        return [_special_values(rng, int(np.prod(s)), dtype).reshape(s) for s in shapes]

    with np.errstate(over="ignore"):  # some squares overflow to inf, on both paths
        assert_fused_equals_reference(make_variables, make_grads, steps=3)


def test_non_finite_values_propagate_like_the_reference():
    shapes = [(BIG,)]

    def make_grads(rng, step):
        g = rng.standard_normal(BIG).astype(np.float32)
        g[rng.integers(BIG, size=100)] = np.inf
        g[rng.integers(BIG, size=100)] = -np.inf
        g[rng.integers(BIG, size=100)] = np.nan
        return [g]

    with np.errstate(invalid="ignore"):  # inf - inf, on both paths
        fused, fused_x = run_steps(random_variables(shapes, np.float32), make_grads, 2, False)
        ref, ref_x = run_steps(random_variables(shapes, np.float32), make_grads, 2, True)
    for ours, theirs in zip(fused + fused_x, ref + ref_x, strict=True):
        np.testing.assert_array_equal(ours, theirs)  # NaN where NaN, else equal
        finite = np.isfinite(np.asarray(theirs))
        assert_bitwise_equal(np.asarray(ours)[finite], np.asarray(theirs)[finite], "finite part")


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


# --- sparse ------------------------------------------------------------------------------------


def random_sparse(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, count: int):
    indices = rng.integers(shape[0], size=count)
    if count > 2:
        indices[1] = indices[0]  # always at least one duplicate
    values = rng.standard_normal((count, *shape[1:])).astype(dtype)
    return IndexedSlices(values, indices, shape)


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


# The kernel skips the bias corrections' divisions once their divisors are exactly 1 (see
# `_cpu_numba._divides`): after the momentum cache underflows, and after beta_2 ** t does.
LATE_PHASES = {
    "early (every division)": ({np.float32: 3, np.float64: 3}, 0.4),
    "momentum cache underflowed": ({np.float32: 150, np.float64: 1_200}, 0.0),
    "every correction exactly 1": ({np.float32: 40_000, np.float64: 80_000}, 0.0),
}


def _late_training_run(dtype: Any, iterations: int, cache: float, reference: bool) -> list[Any]:
    """Three dense and sparse steps of an optimizer restored at `iterations`, with m and v
    full of mixed-magnitude values; returns its weights and the variables."""
    rng = np.random.default_rng(11)
    shapes = [(BIG,), (33, 7), (40, 3)]
    variables = [Variable(_special_values(rng, int(np.prod(s)), dtype).reshape(s))
                 for s in shapes]
    opt = Nadam()
    opt.iterations = iterations
    opt.build(variables)
    weights = opt.get_weights()
    weights[1] = np.asarray(cache, dtype)  # the momentum cache
    weights[2:] = [np.abs(_special_values(rng, w.size, dtype)).reshape(w.shape)
                   for w in weights[2:]]
    opt.set_weights(weights)
    path = kernels.reference_only() if reference else contextlib.nullcontext()
    with path, np.errstate(over="ignore"):
        for _ in range(3):
            grads = [_special_values(rng, int(np.prod(s)), dtype).reshape(s) for s in shapes[:2]]
            grads.append(random_sparse(rng, shapes[2], dtype, 25))
            opt.apply_gradients(list(zip(grads, variables, strict=True)))
    return opt.get_weights() + [v.numpy() for v in variables]


@pytest.mark.parametrize("phase", LATE_PHASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_late_training_steps_skip_no_rounding(dtype, phase):
    first_iteration, cache = LATE_PHASES[phase]
    iterations = first_iteration[dtype]
    s, _ = nadam_scalars(dtype, iterations=iterations, momentum_cache=cache)
    # The phase really is the one named: which divisors are exactly 1.
    moments_one = s.one_minus_prod == 1 and s.one_minus_prod1 == 1
    assert moments_one == (cache == 0.0)
    assert (s.v_correction == 1) == phase.startswith("every")
    fused = _late_training_run(dtype, iterations, cache, reference=False)
    ref = _late_training_run(dtype, iterations, cache, reference=True)
    for i, (ours, theirs) in enumerate(zip(fused, ref, strict=True)):
        assert_bitwise_equal(ours, theirs, f"weight or variable {i}")


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


def test_sparse_kernel_rejects_out_of_range_rows_before_writing():
    s, _ = nadam_scalars(np.float32, iterations=0, momentum_cache=1.0)
    x, m, v = (np.ones((4, 2), np.float32) for _ in range(3))
    before = [a.copy() for a in (x, m, v)]
    with pytest.raises(IndexError, match="4 rows"):
        cpu.apply_sparse(NUMPY_BACKEND, x, np.ones((1, 2), np.float32), np.array([4]), m, v, s)
    for a, b in zip((x, m, v), before, strict=True):
        assert_bitwise_equal(a, b, "unchanged")


# --- the kernel's own promises -----------------------------------------------------------------


def test_a_step_allocates_nothing_the_size_of_the_model():
    n = 4 << 20  # 16 MiB of float32 per array
    x = Variable(np.ones(n, np.float32))
    g = np.full(n, 0.5, np.float32)
    opt = Nadam()
    opt.apply_gradients([(g, x)])  # slots are created on the first step
    tracemalloc.start()
    try:
        opt.apply_gradients([(g, x)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"a step allocated {peak} bytes at its peak"
    with kernels.reference_only():  # the same measurement sees the reference's temporaries
        tracemalloc.start()
        try:
            opt.apply_gradients([(g, x)])
            _, reference_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reference_peak > n * 4


def test_each_entry_point_is_compiled_once_per_dtype():
    # Mismatched argument types would compile (and round) differently: every call must hit
    # one of the signatures compiled up front.
    dense, sparse = [(BIG,), (3,)], [(BIG // 2, 2), (9, 2)]
    for dtype in DTYPES:
        assert_fused_equals_reference(
            random_variables(dense, dtype), random_grads(dense, dtype), steps=1
        )
        assert_fused_equals_reference(
            random_variables(sparse, dtype),
            lambda rng, step, d=dtype: [random_sparse(rng, s, d, 5) for s in sparse],
            steps=1,
        )
    from nadam.kernels import _cpu_numba

    for dispatcher in _cpu_numba.signatures(np.dtype(np.float32)):
        assert len(dispatcher.signatures) == 2, (dispatcher, dispatcher.signatures)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_any_number_of_threads_gives_the_same_bits(threads):
    shapes = [(BIG,), (BIG // 2, 3), (9,)]
    before = cpu.get_num_threads()
    cpu.set_num_threads(threads)
    try:
        assert_fused_equals_reference(
            random_variables(shapes, np.float32),
            lambda rng, step: [rng.standard_normal(shapes[0]).astype(np.float32),
                               random_sparse(rng, shapes[1], np.float32, 5_000),
                               rng.standard_normal(shapes[2]).astype(np.float32)],
        )
    finally:
        cpu.set_num_threads(before)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match="positive integer"):
        cpu.set_num_threads(threads)


def test_a_step_never_waits_for_helpers_that_have_not_started():
    # Both helpers are kept busy, as if the other cores belonged to another process: the
    # calling thread claims every chunk itself and returns, long before they are free; when
    # they finally read the job, nothing is left for them to do.
    from nadam.kernels import _chunk_pool, _cpu_numba

    pool = _chunk_pool.ChunkPool(threads=3)
    pool._ensure_helpers(2)
    gate = threading.Event()
    for _ in range(2):
        pool._jobs.put((gate.wait, (30,)))
    rng = np.random.default_rng(0)
    x, g, m, v = (rng.standard_normal(BIG).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    expected = [a.copy() for a in (x, m, v)]
    s, _ = nadam_scalars(np.float32, iterations=2, momentum_cache=0.5)
    scalars = np.array(s, np.float32)
    table = np.array([[a.ctypes.data for a in (x, g, m, v)]], np.int64)
    offsets = np.array([0, BIG], np.int64)
    exp_table = np.array([[a.ctypes.data for a in (expected[0], g, expected[1], expected[2])]],
                         np.int64)
    _cpu_numba.dense_serial(exp_table, offsets, scalars)
    chunks = _cpu_numba.chunk_count(BIG, _cpu_numba.CHUNK)
    start = time.perf_counter()
    pool.run(_cpu_numba.dense_chunks, (table, offsets, scalars), chunks,
             _cpu_numba.finished_chunks)
    assert time.perf_counter() - start < 10  # the gate stays shut for 30 s
    for ours, theirs in zip((x, m, v), expected, strict=True):
        assert_bitwise_equal(ours, theirs, "done by the calling thread")
    gate.set()
    deadline = time.perf_counter() + 10
    while not pool._jobs.empty() and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the helpers claim past the end and leave the arrays alone
    for ours, theirs in zip((x, m, v), expected, strict=True):
        assert_bitwise_equal(ours, theirs, "untouched by late helpers")


def test_cache_fallback_compiles_uncached_with_one_warning(monkeypatch):
    from nadam.kernels import _cpu_numba

    monkeypatch.setattr(_cpu_numba, "CACHE_PROBLEMS", [])
    namespace: dict[str, Any] = {}
    exec("def twice(a):\n    return a * 2\n", namespace)  # no source file: nowhere to cache
    with pytest.warns(RuntimeWarning, match="cannot cache the compiled CPU kernel"):
        twice = _cpu_numba._jit()(namespace["twice"])
    assert twice(21) == 42
    assert len(_cpu_numba.CACHE_PROBLEMS) == 1


# --- fresh processes -----------------------------------------------------------------------------


def run_python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a new interpreter; it prints one JSON object as its last line."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=full_env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


STEP_AND_REPORT = """
    import json, sys, time, warnings
    warnings.simplefilter("always")
    import numpy as np
    start = time.perf_counter()
    import nadam
    imported = time.perf_counter()
    numba_after_import = "numba" in sys.modules
    x = nadam.Variable(np.arange(6, dtype=np.float32))
    opt = nadam.Nadam()
    with warnings.catch_warnings(record=True) as caught:
        for _ in range(3):
            opt.apply_gradients([(np.ones(6, np.float32), x)])
    stepped = time.perf_counter()
    with nadam.kernels.reference_only():
        y = nadam.Variable(np.arange(6, dtype=np.float32))
        ref = nadam.Nadam()
        for _ in range(3):
            ref.apply_gradients([(np.ones(6, np.float32), y)])
    from nadam.kernels import cpu
    stats = {}
    if "nadam.kernels._cpu_numba" in sys.modules:
        from nadam.kernels import _cpu_numba as k
        stats = {f.__name__: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                 for f in k.signatures(np.dtype("float32"))}
    print(json.dumps({
        "numba_after_import": numba_after_import,
        "numba_after_step": "numba" in sys.modules,
        "kernel": nadam.kernels.select(nadam.backends.NUMPY_BACKEND, "cpu",
                                       np.dtype("float32")).name,
        "warnings": [str(w.message) for w in caught],
        "same_as_reference": bool((x.numpy() == y.numpy()).all()),
        "import_s": imported - start,
        "first_steps_s": stepped - imported,
        "unavailable": cpu.unavailable_reason(),
        "cache_stats": stats,
    }))
"""


def test_import_is_numpy_only_and_the_first_numpy_step_loads_the_kernel(tmp_path):
    report = run_python(STEP_AND_REPORT, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert report["numba_after_import"] is False
    assert report["numba_after_step"] is True
    assert report["kernel"] == cpu.NAME
    assert report["same_as_reference"] and report["unavailable"] is None
    # Compiled from scratch, then written to the cache directory for the next process.
    assert all(hits == 0 and misses == 1 for hits, misses in report["cache_stats"].values())
    assert list(tmp_path.rglob("*_cpu_numba.dense_chunks*.nbi"))
    again = run_python(STEP_AND_REPORT, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert again["same_as_reference"] and again["warnings"] == []
    assert all(hits == 1 and misses == 0 for hits, misses in again["cache_stats"].values())


def test_read_only_install_caches_in_the_user_cache_directory(tmp_path):
    # numba writes next to the module when it can; an install it cannot write to falls back to
    # the user's cache directory, as this locator setting simulates (tests may run as root,
    # for whom no directory is read-only).
    env = {
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserWideCacheLocator",
        "XDG_CACHE_HOME": str(tmp_path),
        "NUMBA_CACHE_DIR": "",
    }
    first = run_python(STEP_AND_REPORT, env)
    assert first["same_as_reference"] and first["warnings"] == []
    assert list((tmp_path / "numba").rglob("*.nbi"))
    second = run_python(STEP_AND_REPORT, env)
    assert all(hits == 1 for hits, _ in second["cache_stats"].values())


def test_without_numba_every_step_runs_the_reference_after_one_warning():
    code = "import sys; sys.modules['numba'] = None  # import numba fails\n" + textwrap.dedent(
        STEP_AND_REPORT
    )
    report = run_python(code)
    assert report["kernel"] == "reference"
    assert report["same_as_reference"]
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "fused CPU kernel is unavailable" in report["warnings"][0]
    assert "numba" in report["unavailable"]


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


# --- the benchmark's entry points ----------------------------------------------------------------


def test_bench_command_explains_when_the_script_is_not_there(monkeypatch, tmp_path, capsys):
    from nadam import __main__ as cli

    monkeypatch.setattr(cli, "_bench_script", lambda: tmp_path / "missing.py")
    assert cli.main(["bench"]) == 1
    assert "ships with the source repository" in capsys.readouterr().err


def test_benchmark_script_runs_and_prints_the_table():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--cases", "20 tensors, 100k",
         "--impls", "nadam", "numpy", "--no-first-step"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines()
            if line.startswith("| 20 tensors, 100k |")]
    labels = [row[2].strip() for row in rows]
    assert labels[0].startswith("*limit: streaming 28 B/param")
    assert labels[1:] == ["**nadam** (`apply_gradients`, fused kernel)", "plain NumPy, in place"]
    assert all(float(row[3]) > 0 for row in rows)  # ms/step
    assert "## Targets" in result.stdout


def test_overhead_benchmark_prints_every_implementation():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overhead.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tensors", "3", "--size", "8", "--steps", "5"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row[1].strip() for row in rows[1:]]
    assert names == [
        "nadam.Nadam on nadam.Variable (NumPy)", "nadam.Nadam on torch parameters",
        "nadam.torch.Nadam", "torch.optim.NAdam (foreach)", "torch.optim.NAdam (for-loop)",
    ]
    assert all(float(row[2]) > 0 for row in rows[1:])  # µs/step
    assert rows[4][4].strip() == "1.00×"  # foreach against itself


def _benchmark_module() -> Any:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["bench_step"]
    return module


def test_benchmark_times_our_steps_mid_training_and_pairs_them_with_the_stream():
    bench = _benchmark_module()
    case = bench.Case("tiny", [(300,), (7, 5)], warmup=1, steps=3)
    step = bench.setup_nadam(case)
    step()
    # The timed steps run where a long run spends its time: cache underflowed, step ~1000.
    opt = step.optimizer
    assert int(opt.iterations) == bench.MID_TRAINING_STEP + 1
    assert float(opt.momentum_cache.numpy()) == 0.0
    early = bench.setup_nadam_early(case)
    assert callable(early.between)
    fraction = bench.paired_fraction(step, case)
    assert 0 < fraction < 100


def test_a_pool_whose_helpers_stall_runs_alone_for_a_while():
    # A fake job whose chunks a "preempted helper" finishes late: the pool notices the long
    # wait and runs the following calls without helpers, then tries them again.
    from nadam.kernels import _chunk_pool

    pool = _chunk_pool.ChunkPool(threads=2)
    queued: list[Any] = []
    pool._ensure_helpers = lambda count: None  # no real threads: record what would be sent
    pool._jobs = type("Jobs", (), {"put": staticmethod(queued.append)})()
    late = {"until": 0.0}

    def kernel(counters: np.ndarray) -> None:
        counters[0] = 1

    def finished(counters: np.ndarray) -> int:  # all 4 chunks are done once "late" is over
        return 4 if time.perf_counter() >= late["until"] else 3

    late["until"] = time.perf_counter() + 5 * pool.STALL_SECONDS
    pool.run(kernel, (), chunks=4, finished=finished)
    assert pool.stalls == 1 and len(queued) == 1
    for _ in range(2):  # the next calls go without helpers
        pool.run(kernel, (), chunks=4, finished=finished)
    assert len(queued) == 1
    pool.run(kernel, (), chunks=4, finished=finished)  # and then helpers are tried again
    assert len(queued) == 2 and pool.stalls == 1
