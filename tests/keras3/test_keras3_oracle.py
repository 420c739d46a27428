"""`nadam.keras.Nadam` against the live Keras 2 oracle, bit for bit, on each Keras 3 backend.

Each backend runs in its own process (`keras3_helpers.run_worker`) over 300 steps of random
gradients and hyperparameters (past the float32 momentum cache's underflow at step 111), in
float32, float64 and float16: every step's variables, then the slots and the momentum cache,
must have Keras 2's bits. TensorFlow also runs the step inside `tf.function` and with
row-sparse `tf.IndexedSlices` gradients (repeated rows); JAX runs `stateless_apply` under
`jax.jit` (float64 in a process with `jax_enable_x64`); torch runs `stateless_apply` too. One
float32 case per backend has gradient elements down to 1e-45: subnormal inputs and
underflowing products, which TensorFlow's kernels flush to 0.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from keras3_helpers import (
    STEPS,
    assert_same_trajectory,
    oracle,
    random_case,
    random_hypers,
    run_worker,
)

SEED = {"float32": 11, "float64": 12, "float16": 13}
# float16 runs with the default hyperparameters: a random beta_2 may round to 1.0 in float16,
# where Keras 2 goes NaN and this optimizer refuses it (test_keras3_errors).
DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
SPARSE = (0,)  # the (4, 3) variable, on TensorFlow

# backend -> (worker backend, x64, cases as (mode, dtype, sparse))
RUNS = {
    "tensorflow": ("tensorflow", False, [
        ("apply", "float32", False), ("apply", "float64", False),
        ("tf_function", "float32", False), ("tf_function", "float64", False),
        ("apply", "float32", True), ("tf_function", "float64", True),
        ("apply", "float16", False), ("tf_function", "float16", True),
        ("tf_function", "float32", "tiny"),
    ]),
    "torch": ("torch", False, [("apply", "float32", False), ("apply", "float64", False),
                               ("apply", "float16", False), ("stateless", "float32", False),
                               ("apply", "float32", "tiny")]),
    "jax": ("jax", False, [("apply", "float32", False), ("jit_stateless", "float32", False),
                           ("jit_stateless", "float16", False),
                           ("jit_stateless", "float32", "tiny")]),
    "jax-x64": ("jax", True, [("apply", "float64", False),
                              ("jit_stateless", "float64", False)]),
}


@functools.cache
def _inputs(dtype: str, sparse: bool) -> dict[str, np.ndarray]:
    if sparse == "tiny":
        return random_case(SEED[dtype] + 200, dtype, tiny=True)
    return random_case(SEED[dtype] + 100 * sparse, dtype, sparse=SPARSE if sparse else ())


def _hypers(dtype: str) -> dict[str, float]:
    return DEFAULTS if dtype == "float16" else random_hypers(SEED[dtype])


@functools.cache
def _oracle(dtype: str, sparse: bool) -> dict[str, np.ndarray]:
    return oracle(_inputs(dtype, sparse), _hypers(dtype), STEPS)


@pytest.mark.parametrize("run", list(RUNS))
def test_trajectories_are_keras_2s_bits(run: str, tmp_path) -> None:
    backend, x64, specs = RUNS[run]
    cases, inputs = [], {}
    for mode, dtype, sparse in specs:
        name = f"{mode}-{dtype}" + {False: "", True: "-sparse", "tiny": "-tiny"}[sparse]
        cases.append({"name": name, "mode": mode, "variables": 3, "steps": STEPS,
                      "hypers": _hypers(dtype)})
        inputs[name] = _inputs(dtype, sparse)
    records = run_worker(backend, cases, inputs, tmp_path, x64=x64)
    for (_, dtype, sparse), case in zip(specs, cases, strict=True):
        ours, theirs = records[case["name"]], _oracle(dtype, sparse)
        assert str(ours["backend"]) == backend
        assert_same_trajectory(ours, theirs, f"{run} {case['name']}")
        assert int(ours["iterations"]) == int(theirs["iterations"]) == STEPS
        if "inputs_kept" in ours:  # a stateless step changed none of the arrays it was given
            assert bool(ours["inputs_kept"])
        # The cache underflowed to exactly 0 in float32 (step 111) and not in float64 (nor in
        # float16, whose cache is the first variable's dtype too but keeps its subnormals).
        if dtype != "float16":
            assert (float(theirs["cache"]) == 0.0) == (dtype == "float32")
