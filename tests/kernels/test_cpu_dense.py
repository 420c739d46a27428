"""The fused CPU kernel's dense step against the reference kernel, bit for bit: shapes, sizes
that take the threaded path, other hyperparameters, extreme and non-finite values, and late
training where the kernel skips divisions by exactly 1; and that a step allocates nothing.
"""

from __future__ import annotations

import contextlib
import tracemalloc
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
    special_values,
)

import nadam
from nadam import Nadam, Variable, kernels
from nadam.nadam import nadam_scalars

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


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_equals_reference_on_subnormal_huge_and_zero_values(dtype):
    # The check that numba/LLVM neither contracts to FMA nor flushes subnormals: any change
    # in rounding shows up among a million mixed-magnitude inputs.
    n = 1 << 20
    shapes = [(n,), (1000,)]

    def make_variables() -> list[Variable]:
        rng = np.random.default_rng(7)
        return [Variable(special_values(rng, int(np.prod(s)), dtype).reshape(s)) for s in shapes]

    def make_grads(rng, step):
        return [special_values(rng, int(np.prod(s)), dtype).reshape(s) for s in shapes]

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
    variables = [Variable(special_values(rng, int(np.prod(s)), dtype).reshape(s))
                 for s in shapes]
    opt = Nadam()
    opt.iterations = iterations
    opt.build(variables)
    weights = opt.get_weights()
    weights[1] = np.asarray(cache, dtype)  # the momentum cache
    weights[2:] = [np.abs(special_values(rng, w.size, dtype)).reshape(w.shape)
                   for w in weights[2:]]
    opt.set_weights(weights)
    path = kernels.reference_only() if reference else contextlib.nullcontext()
    with path, np.errstate(over="ignore"):
        for _ in range(3):
            grads = [special_values(rng, int(np.prod(s)), dtype).reshape(s) for s in shapes[:2]]
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
