"""`nadam.optax` against the live Keras 2 oracle (tf_keras's legacy Nadam), bit for bit.

The oracle's trajectories are computed once per module: random gradients for 1100 steps, past
the momentum cache's underflow to 0 (float32: step ~111, float64: step ~976). Our side runs
them jitted step by step with donated buffers and inside one `lax.scan`, through
`optax.apply_updates`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from jax import lax  # noqa: E402
from xla_helpers import DTYPES, assert_same_bits, guards_removed, x64_for  # noqa: E402

from nadam.optax import from_keras_weights, nadam, to_keras_weights  # noqa: E402

KerasNadam = tf_keras.optimizers.legacy.Nadam
STEPS = 1100
SHAPES = {"w": (257,), "b": (3, 4), "s": ()}


def gradient_draws(rng, dtype, steps):
    """Gradients of every magnitude the oracle meets in training, some exactly zero."""
    lowest = -40 if np.dtype(dtype) == np.float32 else -300
    draws = []
    for _ in range(steps):
        step = {}
        for name, shape in SHAPES.items():
            g = rng.standard_normal(shape) * 10.0 ** rng.integers(lowest, 2, size=shape)
            g = np.where(rng.random(shape) < 0.03, 0.0, g)
            step[name] = np.asarray(g, dtype)
        draws.append(step)
    return draws


def keras_run(params, grads, keras=None, variables=None, **hypers):
    """Keras's trajectory: the parameters after every step, and its final `get_weights()`."""
    keras = keras or KerasNadam(**hypers)
    names = sorted(params)  # jax.tree.leaves order of a dict
    variables = variables or [tf.Variable(np.array(params[n])) for n in names]
    trajectory = []
    for g in grads:
        keras.apply_gradients(zip([tf.constant(g[n]) for n in names], variables, strict=True))
        trajectory.append({n: v.numpy() for n, v in zip(names, variables, strict=True)})
    return trajectory, keras.get_weights(), keras, variables


def initial_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {n: np.asarray(rng.standard_normal(s), dtype) for n, s in SHAPES.items()}


@pytest.fixture(scope="module", params=DTYPES)
def oracle(request):
    dtype = request.param
    rng = np.random.default_rng(100 + DTYPES.index(dtype))
    params = initial_params(dtype)
    grads = gradient_draws(rng, dtype, STEPS)
    trajectory, weights, _, _ = keras_run(params, grads)
    return dtype, params, grads, trajectory, weights


def stacked(grads):
    return {n: np.stack([g[n] for g in grads]) for n in SHAPES}


def test_jitted_steps_with_donated_buffers_match_keras_every_step(oracle):
    dtype, params, grads, trajectory, weights = oracle
    assert weights[1] == 0, "the run must reach the momentum cache's underflow"
    tx = nadam()
    with x64_for(dtype):

        def step(params, state, g):
            updates, state = tx.update(g, state, params)
            return optax.apply_updates(params, updates), state

        jitted = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.asarray, params)
        state = tx.init(p)
        for i, g in enumerate(grads):
            old = (p, state)
            p, state = jitted(p, state, g)
            if i == 0:  # donation: the old buffers were given to the step
                assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old))
            for name in SHAPES:
                assert_same_bits(p[name], trajectory[i][name], f"{name} at step {i + 1}")
        ours = to_keras_weights(state, p)
    for k, (a, b) in enumerate(zip(ours, weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


def test_one_scan_over_all_steps_matches_keras_every_step(oracle):
    dtype, params, grads, trajectory, weights = oracle
    tx = nadam()
    with x64_for(dtype):

        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state)
            p = optax.apply_updates(p, updates)
            return (p, state), p

        p0 = jax.tree.map(jnp.asarray, params)
        (p, state), path = jax.jit(lambda p0, gs: lax.scan(body, (p0, tx.init(p0)), gs))(
            p0, stacked(grads)
        )
        ours = to_keras_weights(state, p)
        path = jax.device_get(path)
    for name in SHAPES:
        assert_same_bits(path[name], np.stack([t[name] for t in trajectory]), name)
    for k, (a, b) in enumerate(zip(ours, weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


def test_vmap_over_independent_runs_equals_each_run_and_keras():
    dtype, steps = "float32", 150
    grads = gradient_draws(np.random.default_rng(6), dtype, steps)
    starts = [initial_params(dtype, seed) for seed in (0, 1, 2)]
    scales = [1.0, 0.5, 3.0]  # each run sees its own gradients
    runs = [keras_run(p, [{n: g[n] * np.float32(c) for n in SHAPES} for g in grads])[0]
            for p, c in zip(starts, scales, strict=True)]
    tx = nadam()
    batch_p = {n: np.stack([s[n] for s in starts]) for n in SHAPES}
    batch_g = {n: np.stack([stacked(grads)[n] * np.float32(c) for c in scales], axis=1)
               for n in SHAPES}

    def run(p0, gs):
        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state)
            return (optax.apply_updates(p, updates), state), None

        return lax.scan(body, (p0, tx.init(p0)), gs)[0][0]

    batched = jax.jit(jax.vmap(run, in_axes=(0, 1)))(batch_p, batch_g)
    for b in range(3):
        for name in SHAPES:
            assert_same_bits(batched[name][b], runs[b][-1][name], f"{name} of run {b}")


def test_the_issues_regression_case_fails_without_the_guards():
    # A single 100k-element float32 parameter, the only leaf of its pytree, starting at zero,
    # compared bit for bit at step 1: the case where XLA's FMA contraction and its reciprocal
    # division both show (with several leaves, this JAX did not rewrite the division).
    rng = np.random.default_rng(7)
    n = 100_000
    g = rng.standard_normal(n).astype(np.float32)
    trajectory, _, _, _ = keras_run({"x": np.zeros(n, np.float32)}, [{"x": g}])
    expected = trajectory[0]["x"]
    tx = nadam()

    @jax.jit
    def step(p, g):
        updates, _ = tx.update(g, tx.init(p))
        return optax.apply_updates(p, updates)

    assert_same_bits(step(jnp.zeros(n), g), expected, "x at step 1")
    with guards_removed():
        unguarded = np.asarray(
            jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p))[0]))(
                jnp.zeros(n), g
            )
        )
    assert (unguarded != expected).sum() > 1000, "without the guards XLA's rewrites must show"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hypers",
    [
        dict(learning_rate=0.05, beta_1=0.6180339, beta_2=0.95, epsilon=1e-3),
        dict(learning_rate=3e-4, beta_1=0.99, beta_2=0.9999, epsilon=1e-8),
    ],
)
def test_other_hyperparameters_match_keras(dtype, hypers):
    rng = np.random.default_rng(8)
    params = initial_params(dtype, 3)
    grads = gradient_draws(rng, dtype, 120)
    trajectory, weights, _, _ = keras_run(params, grads, **hypers)
    tx = nadam(hypers["learning_rate"], hypers["beta_1"], hypers["beta_2"], hypers["epsilon"])
    with x64_for(dtype):

        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state)
            return (optax.apply_updates(p, updates), state), None

        (p, state), _ = jax.jit(lambda p0, gs: lax.scan(body, (p0, tx.init(p0)), gs))(
            params, stacked(grads)
        )
        ours = to_keras_weights(state, p)
    for name in SHAPES:
        assert_same_bits(p[name], trajectory[-1][name], name)
    for k, (a, b) in enumerate(zip(ours, weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_keras_run_continues_in_optax_with_its_state(dtype):
    rng = np.random.default_rng(9)
    params = initial_params(dtype, 4)
    grads = gradient_draws(rng, dtype, 160)
    first, weights, keras, variables = keras_run(params, grads[:80])
    second, final_weights, _, _ = keras_run(params, grads[80:], keras, variables)
    tx = nadam()
    with x64_for(dtype):
        p = {n: jnp.asarray(first[-1][n]) for n in SHAPES}
        state = from_keras_weights(weights, p)
        step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(g, s)))
        for i, g in enumerate(grads[80:]):
            p, state = step(p, state, g)
            for name in SHAPES:
                assert_same_bits(p[name], second[i][name], f"{name} at step {81 + i}")
        ours = to_keras_weights(state, p)
    for k, (a, b) in enumerate(zip(ours, final_weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_optax_run_continues_in_keras_with_its_state(dtype):
    rng = np.random.default_rng(10)
    params = initial_params(dtype, 5)
    grads = gradient_draws(rng, dtype, 140)
    whole, final_weights, _, _ = keras_run(params, grads)
    tx = nadam()
    with x64_for(dtype):
        p = jax.tree.map(jnp.asarray, params)
        state = tx.init(p)
        step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(g, s)))
        for g in grads[:70]:
            p, state = step(p, state, g)
        weights = to_keras_weights(state, p)
        p = jax.device_get(p)
    names = sorted(SHAPES)
    variables = [tf.Variable(np.array(p[n])) for n in names]
    keras = KerasNadam()
    keras._create_all_weights(variables)  # Keras 2 has no public `build`
    keras.set_weights(weights)
    rest, weights_after, _, _ = keras_run(p, grads[70:], keras, variables)
    for name in SHAPES:
        assert_same_bits(rest[-1][name], whole[-1][name], name)
    for k, (a, b) in enumerate(zip(weights_after, final_weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")
