"""`nadam.optax` beyond the plain run: learning-rate schedules, state shared with our other faces,
a sharded 2-device mesh, and every bad input (a clear error, nothing consumed or changed).

Each is held bit for bit to the Keras face `nadam.Nadam` (itself held to Keras 2 by the
conformance tests) or to the live Keras 2 oracle.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from jax import lax  # noqa: E402
from xla_helpers import (  # noqa: E402
    DTYPES,
    assert_same_bits,
    global_x64,
    guards_removed,
    x64_for,
)

import nadam  # noqa: E402
from nadam import schedules  # noqa: E402
from nadam.optax import NadamState, from_keras_weights, to_keras_weights  # noqa: E402
from nadam.optax import nadam as optax_nadam  # noqa: E402

SHAPES = {"b": (10,), "s": (), "w": (6, 5)}


def draws(seed, steps, dtype="float32"):
    rng = np.random.default_rng(seed)
    params = {n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
    grads = [{n: rng.standard_normal(s).astype(dtype) for n, s in SHAPES.items()}
             for _ in range(steps)]
    return params, grads


def keras_face_run(params, grads, **kwargs):
    """`nadam.Nadam` (NumPy) over the same parameters: the trajectory and get_weights()."""
    opt = nadam.Nadam(**kwargs)
    names = sorted(params)
    variables = [nadam.Variable(np.array(params[n])) for n in names]
    path = []
    for g in grads:
        opt.apply_gradients(zip([g[n] for n in names], variables, strict=True))
        path.append({n: v.numpy().copy() for n, v in zip(names, variables, strict=True)})
    return path, opt.get_weights(), opt, variables


def scanned_run(tx, params, grads):
    """Our optax face over `grads` in one jitted scan: the trajectory and the final state."""

    def body(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    stacked = {n: np.stack([g[n] for g in grads]) for n in SHAPES}
    (p, state), path = jax.jit(lambda p0, gs: lax.scan(body, (p0, tx.init(p0)), gs))(
        params, stacked
    )
    return jax.device_get(path), state, p


def assert_same_path(ours, theirs):
    for name in SHAPES:
        assert_same_bits(ours[name], np.stack([t[name] for t in theirs]), name)


# --- learning rates ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule",
    [
        schedules.CosineDecay(0.01, decay_steps=60, alpha=0.1),
        schedules.ExponentialDecay(0.02, decay_steps=7, decay_rate=0.8, staircase=True),
        schedules.PolynomialDecay(0.05, decay_steps=50, end_learning_rate=1e-4, power=2.0),
    ],
    ids=["cosine", "exponential", "polynomial"],
)
def test_nadam_schedules_are_exact_under_jit_like_the_keras_face(schedule):
    params, grads = draws(1, 80)
    expected, weights, _, _ = keras_face_run(params, grads, learning_rate=schedule)
    path, state, p = scanned_run(optax_nadam(schedule), params, grads)
    assert_same_path(path, expected)
    for k, (a, b) in enumerate(zip(to_keras_weights(state, p), weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


def test_a_float64_schedule_keeps_its_dtype():
    schedule = schedules.InverseTimeDecay(np.float64(0.01), decay_steps=5, decay_rate=0.5)
    with global_x64():
        params, grads = draws(2, 40, "float64")
        expected, _, _, _ = keras_face_run(params, grads, learning_rate=schedule)
        path, _, _ = scanned_run(optax_nadam(schedule), params, grads)
    assert_same_path(path, expected)


def test_decay_is_time_inverse_decay_like_the_keras_face():
    params, grads = draws(3, 60)
    expected, _, _, _ = keras_face_run(params, grads, learning_rate=0.01, decay=0.05)
    path, _, _ = scanned_run(optax_nadam(0.01, decay=0.05), params, grads)
    assert_same_path(path, expected)


def test_an_optax_schedule_is_called_with_the_count_and_cast():
    # Its arithmetic is its own (JAX's, and XLA may fuse it differently inside and outside
    # jit, so a piecewise constant one here): the Keras face given the very same values per
    # step (a zero-argument callable returning that float32) must take the same steps.
    schedule = optax.piecewise_constant_schedule(0.01, {10: 0.5, 30: 0.3})
    params, grads = draws(4, 50)
    opt = nadam.Nadam()
    opt.learning_rate = lambda: np.float32(schedule(int(opt.iterations.numpy())))
    names = sorted(params)
    variables = [nadam.Variable(np.array(params[n])) for n in names]
    expected = []
    for g in grads:
        opt.apply_gradients(zip([g[n] for n in names], variables, strict=True))
        expected.append({n: v.numpy().copy() for n, v in zip(names, variables, strict=True)})
    path, _, _ = scanned_run(optax_nadam(schedule), params, grads)
    assert_same_path(path, expected)


def test_keras_3s_schedule_constant():
    params, grads = draws(5, 30)
    expected, _, _, _ = keras_face_run(params, grads, schedule_decay=1.0, beta_1=0.8)
    path, _, _ = scanned_run(optax_nadam(b1=0.8, schedule_decay=1.0), params, grads)
    assert_same_path(path, expected)


def test_a_schedule_under_vmap():
    schedule = schedules.CosineDecay(0.01, decay_steps=30)
    params, grads = draws(6, 20)
    expected, _, _, _ = keras_face_run(params, grads, learning_rate=schedule)
    tx = optax_nadam(schedule)
    batched = {n: np.stack([params[n]] * 2) for n in SHAPES}
    stacked = {n: np.stack([np.stack([g[n] for g in grads])] * 2, axis=1) for n in SHAPES}

    def run(p0, gs):
        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state)
            return (optax.apply_updates(p, updates), state), None

        return lax.scan(body, (p0, tx.init(p0)), gs)[0][0]

    out = jax.jit(jax.vmap(run, in_axes=(0, 1)))(batched, stacked)
    for name in SHAPES:
        for b in range(2):
            assert_same_bits(out[name][b], expected[-1][name], f"{name}[{b}]")


def test_inject_hyperparams_changes_the_learning_rate_mid_run_like_the_keras_face():
    # optax's way to change hyperparameters during training: traced arrays inside the jitted
    # update. hyperparam_dtype=float32 rounds the numbers as Keras's hyper variables do.
    params, grads = draws(12, 40)
    opt = nadam.Nadam(learning_rate=0.01, beta_1=0.8)
    names = sorted(params)
    variables = [nadam.Variable(np.array(params[n])) for n in names]
    expected = []
    for i, g in enumerate(grads):
        if i == 20:
            opt.learning_rate = 0.003
        opt.apply_gradients(zip([g[n] for n in names], variables, strict=True))
        expected.append({n: v.numpy().copy() for n, v in zip(names, variables, strict=True)})
    tx = optax.inject_hyperparams(optax_nadam, hyperparam_dtype=jnp.float32)(
        learning_rate=0.01, b1=0.8
    )
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)), donate_argnums=(0, 1))
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for i, g in enumerate(grads):
        if i == 20:
            state.hyperparams["learning_rate"] = jnp.asarray(0.003, jnp.float32)
        p, state = step(p, state, g)
        for name in SHAPES:
            assert_same_bits(p[name], expected[i][name], f"{name} at step {i + 1}")


def test_parameters_of_several_dtypes_like_the_keras_face():
    # One momentum cache, in the first parameter's dtype (Keras's), cast for the others.
    with x64_for("float64"):
        params, grads = draws(13, 40)
        params["b"] = params["b"].astype(np.float64)
        for g in grads:
            g["b"] = g["b"].astype(np.float64)
        expected, weights, _, _ = keras_face_run(params, grads)
        path, state, p = scanned_run(optax_nadam(), params, grads)
        assert state.momentum_cache.dtype == jnp.float64
        ours = to_keras_weights(state, p)
    assert_same_path(path, expected)
    for k, (a, b) in enumerate(zip(ours, weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


# --- state shared with the other faces --------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_keras_face_run_continues_in_optax_and_back(dtype):
    with x64_for(dtype):
        params, grads = draws(7, 90, dtype)
        whole, final_weights, _, _ = keras_face_run(params, grads)
        first, weights, _, _ = keras_face_run(params, grads[:30])
        tx = optax_nadam()
        state = from_keras_weights(weights, first[-1])
        step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(g, s)))
        p = first[-1]
        for i, g in enumerate(grads[30:60]):
            p, state = step(p, state, g)
            for name in SHAPES:
                assert_same_bits(p[name], whole[30 + i][name], f"{name} at step {31 + i}")
        # ... and back to the Keras face for the last 30 steps.
        opt = nadam.Nadam()
        names = sorted(SHAPES)
        variables = [nadam.Variable(np.array(p[n])) for n in names]
        opt.build(variables)
        opt.set_weights(to_keras_weights(state, p))
        for g in grads[60:]:
            opt.apply_gradients(zip([g[n] for n in names], variables, strict=True))
    for name, var in zip(names, variables, strict=True):
        assert_same_bits(var.numpy(), whole[-1][name], name)
    for k, (a, b) in enumerate(zip(opt.get_weights(), final_weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


def test_a_torch_face_run_continues_in_optax_and_back():
    import torch

    from nadam.torch import Nadam as TorchNadam

    params, grads = draws(11, 90)
    names = sorted(SHAPES)  # the leaves' order

    def torch_run(start, grads, weights=None):
        tensors = [torch.nn.Parameter(torch.tensor(np.array(start[n]))) for n in names]
        opt = TorchNadam(tensors)
        if weights is not None:
            opt.build()
            opt.set_weights(weights)
        for g in grads:
            for tensor, n in zip(tensors, names, strict=True):
                tensor.grad = torch.tensor(g[n])
            opt.step()
        return {n: t.detach().numpy().copy() for n, t in zip(names, tensors, strict=True)}, \
            opt.get_weights()

    whole, final_weights = torch_run(params, grads)
    first, weights = torch_run(params, grads[:30])
    tx = optax_nadam()
    state = from_keras_weights(weights, first)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s)))
    p = first
    for g in grads[30:60]:
        p, state = step(p, state, g)
    last, weights_after = torch_run(p, grads[60:], to_keras_weights(state, p))
    for name in SHAPES:
        assert_same_bits(last[name], whole[name], name)
    for k, (a, b) in enumerate(zip(weights_after, final_weights, strict=True)):
        assert_same_bits(a, b, f"get_weights()[{k}]")


def test_from_keras_weights_takes_the_weights_of_tf_keras_directly():
    params, grads = draws(8, 20)
    names = sorted(params)
    keras = tf_keras.optimizers.legacy.Nadam()
    variables = [tf.Variable(np.array(params[n])) for n in names]
    for g in grads:
        keras.apply_gradients(zip([tf.constant(g[n]) for n in names], variables, strict=True))
    current = {n: v.numpy() for n, v in zip(names, variables, strict=True)}
    state = from_keras_weights(keras.get_weights(), current)
    assert isinstance(state, NadamState)
    assert state.count.dtype == jnp.int32 and int(state.count) == 20
    for k, (a, b) in enumerate(zip(to_keras_weights(state, current), keras.get_weights(),
                                   strict=True)):
        assert_same_bits(a, b, f"round trip of get_weights()[{k}]")


# --- a sharded mesh ---------------------------------------------------------------------------
def test_a_2_device_mesh_with_sharded_parameters_equals_the_unsharded_run(tmp_path):
    steps = 150
    params, grads = draws(9, steps)
    params["w"] = np.random.default_rng(90).standard_normal((64, 33)).astype(np.float32)
    rng = np.random.default_rng(91)
    for g in grads:
        g["w"] = rng.standard_normal((64, 33)).astype(np.float32)
    source, target = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(source, **{f"p/{n}": a for n, a in params.items()},
             **{f"g/{n}": np.stack([g[n] for g in grads]) for n in params})
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    worker = Path(__file__).with_name("optax_mesh_worker.py")
    done = subprocess.run([sys.executable, str(worker), str(source), str(target)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = dict(np.load(target))
    assert out["m_sharding_ok"] and out["p_sharding_ok"], "state and parameters stay sharded"
    assert out["restored_sharding_ok"], "from_keras_weights places m and v like the parameters"
    expected, weights, _, _ = keras_face_run(params, grads, learning_rate=0.01)
    for name in params:
        assert_same_bits(out[f"sharded/{name}"], out[f"unsharded/{name}"], f"{name} sharded")
        assert_same_bits(out[f"sharded/{name}"], expected[-1][name], f"{name} vs Keras face")
        assert_same_bits(out[f"scanned/{name}"], expected[-1][name], f"{name} in a scan")
    for k, w in enumerate(weights):
        assert_same_bits(out[f"sharded_weights/{k}"], w, f"get_weights()[{k}]")


# --- bad inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(b1=1.0), ValueError, r"Expected b1 in \[0, 1\), received: 1.0"),
        (dict(b2=-0.5), ValueError, r"Expected b2 in \[0, 1\), received: -0.5"),
        (dict(learning_rate=-1.0), ValueError, "Expected learning_rate >= 0, received: -1.0"),
        (dict(learning_rate="0.1"), TypeError, "learning_rate must be a real number"),
        (dict(eps=-1e-7), ValueError, "Expected eps >= 0"),
        (dict(eps="tiny"), TypeError, "eps must be a number"),
        (dict(schedule_decay=-0.004), ValueError, "Expected schedule_decay >= 0"),
        (dict(decay=float("inf")), ValueError, "Expected decay >= 0 and finite"),
        (dict(b1=True), TypeError, "b1 must be a real number"),
        (dict(b1=float("nan")), ValueError, "Expected b1 in"),
    ],
)
def test_bad_hyperparameters_are_clear_errors_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        optax_nadam(**kwargs)


def test_epsilon_none_or_zero_means_keras_1e_7():
    params, grads = draws(10, 5)
    expected, _, _, _ = keras_face_run(params, grads)
    for eps in (None, 0.0):
        path, _, _ = scanned_run(optax_nadam(eps=eps), params, grads)
        assert_same_path(path, expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "int32", "bool", "complex64"])
def test_parameters_nadam_cannot_train_are_a_type_error_naming_them(dtype):
    params = {"good": jnp.zeros(3), "bad": jnp.zeros(3, dtype)}
    with pytest.raises(TypeError, match=rf"parameter \['bad'\] is {dtype}"):
        optax_nadam().init(params)
    with pytest.raises(TypeError, match=rf"parameter \['bad'\] is {dtype}"):
        from_keras_weights([0, 1.0] + [np.zeros(3)] * 4, params)


def test_a_gradient_that_does_not_fit_is_an_error_and_donated_state_survives():
    tx = optax_nadam()
    params = {"w": jnp.ones(4), "b": jnp.ones(2)}
    state = tx.init(params)
    step = jax.jit(lambda s, g: tx.update(g, s), donate_argnums=0)
    state, _ = step(state, {"w": jnp.ones(4), "b": jnp.ones(2)}), None
    _, state = state
    before = to_keras_weights(state, params)
    for bad, what in (({"w": jnp.ones(3), "b": jnp.ones(2)}, r"Gradient \['w'\] has shape \(3,\)"),
                      ({"w": jnp.ones(4), "b": jnp.ones(2, jnp.float16)},
                       r"Gradient \['b'\] .* dtype float16")):
        with pytest.raises(ValueError, match=what):
            step(state, bad)
        assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
        for a, b in zip(to_keras_weights(state, params), before, strict=True):
            assert_same_bits(a, b, "state after the error")
    with pytest.raises(ValueError):  # another tree
        step(state, {"w": jnp.ones(4)})


@pytest.mark.parametrize(
    "weights,error,message",
    [
        ([0, 1.0, np.zeros(4)], ValueError, "with a weight list of length 3, but the optimizer "
         "was expecting 4 weights"),
        ([0, 1.0, np.zeros(5), np.zeros(4)], ValueError,
         r"Optimizer weight shape \(4,\) not compatible with provided weight shape \(5,\)"),
        ([-1, 1.0, np.zeros(4), np.zeros(4)], ValueError, "Expected iterations in"),
        ([1.5, 1.0, np.zeros(4), np.zeros(4)], ValueError, "Expected iterations to be a whole"),
        ([2**31, 1.0, np.zeros(4), np.zeros(4)], ValueError, r"2\*\*31 - 1\] \(the optax"),
        ([3, 1.5, np.zeros(4), np.zeros(4)], ValueError,
         r"Expected momentum_cache in \[0, 1\], received: 1.5"),
        ([3, np.nan, np.zeros(4), np.zeros(4)], ValueError, "Expected momentum_cache in"),
        ([3, 1.0, np.zeros(4), np.array(["a"] * 4)], TypeError, "Weight 3 given to set_weights"),
    ],
)
def test_bad_keras_weights_are_errors_and_change_nothing(weights, error, message):
    params = [jnp.ones(4)]
    copies = [np.array(w) for w in weights]
    with pytest.raises(error, match=message):
        from_keras_weights(weights, params)
    for a, b in zip(weights, copies, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert_same_bits(params[0], np.ones(4, np.float32), "params")


def test_a_float64_cache_needs_jax_64_bit_mode():
    with x64_for("float32"):
        with pytest.raises(TypeError, match="jax_enable_x64"):
            from_keras_weights([0, np.float64(1.0), np.zeros(2), np.zeros(2)], [jnp.ones(2)])


def test_to_keras_weights_checks_that_the_state_is_for_these_params():
    params = {"w": jnp.ones(4)}
    state = optax_nadam().init(params)
    with pytest.raises(ValueError, match="params do not have the structure of the state"):
        to_keras_weights(state, {"w": jnp.ones(4), "b": jnp.ones(2)})


@pytest.mark.parametrize("state", ["not a state", (None,), None])
def test_to_keras_weights_refuses_what_is_not_our_state(state):
    with pytest.raises(TypeError, match="Expected state to be the NadamState of nadam.optax"):
        to_keras_weights(state, {"w": jnp.ones(4)})


def test_to_keras_weights_names_the_chain_element_to_pass():
    params = {"w": jnp.ones(4)}
    chained = optax.chain(optax.clip(1.0), optax_nadam()).init(params)
    with pytest.raises(TypeError, match="inside optax.chain, its own element"):
        to_keras_weights(chained, params)
    assert len(to_keras_weights(chained[1], params)) == 4


def test_gradients_flow_through_the_step_as_through_the_plain_formula():
    # The guards pass values through their bits; their derivative must still be the identity
    # (meta-learning differentiates through optimizer steps), not the bitcast's zero.
    tx = optax_nadam(0.1)
    p = jnp.asarray([1.0, -2.0, 0.5])
    _, state = tx.update(jnp.asarray([0.3, 0.1, -0.2]), tx.init(p))

    def loss(g):
        return (optax.apply_updates(p, tx.update(g, state)[0]) ** 2).sum()

    g = jnp.asarray([0.1, -0.4, 2.0])
    guarded = np.asarray(jax.grad(loss)(g))
    with guards_removed():
        plain = np.asarray(jax.grad(loss)(g))
    assert np.all(guarded != 0)
    np.testing.assert_allclose(guarded, plain, rtol=1e-5)  # float32, FMAs or not
