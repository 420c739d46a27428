"""The Keras face on JAX arrays: minimize / get_gradients through JAX's autodiff, the weights
layout, moving a Keras 2 run onto JAX Variables, and JAX being imported only when needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tf_keras
from conformance.oracle import KerasNadam, random_array, tf

import nadam
from nadam import Nadam, Variable
from nadam.backends import backend_for

from .jax_twin import JaxTwin, precision

SRC = Path(__file__).resolve().parents[2] / "src"


def test_importing_nadam_imports_no_jax_and_a_jax_variable_finds_the_backend():
    program = textwrap.dedent("""
        import json, sys
        import numpy as np
        import nadam
        report = {}
        w = nadam.Variable(np.ones(2, np.float32))
        nadam.Nadam().apply_gradients([(np.ones(2, np.float32), w)])
        report["jax_after_numpy_step"] = "jax" in sys.modules
        import jax.numpy as jnp
        from nadam.backends import backend_for
        report["backend"] = backend_for(nadam.Variable(jnp.ones(2))).name
        report["bare"] = backend_for(jnp.ones(2)).name
        print(json.dumps(report))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""}, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"jax_after_numpy_step": False, "backend": "jax", "bare": "jax"}


def test_keras_docstring_example_through_jax_grad():
    x = Variable(jnp.asarray(10.0))
    assert Nadam(learning_rate=0.2).minimize(lambda: x.value ** 2 / 2, [x]) == 1
    assert x.numpy() == np.float32(9.78871)
    assert isinstance(x.value, jax.Array)


def _loss_of(params, inputs, targets):
    def loss():
        w, b = (p.value for p in params)
        return jnp.mean((jnp.tanh(inputs @ w + b) - targets) ** 2)

    return loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_minimize_is_apply_gradients_of_jax_grad(dtype):
    rng = np.random.default_rng(0)
    with precision(dtype):
        arrays = [random_array(rng, (4, 3), dtype), random_array(rng, (3,), dtype)]
        inputs, targets = random_array(rng, (8, 4), dtype), random_array(rng, (8, 3), dtype)
        ours = [Variable(jnp.asarray(a)) for a in arrays]
        by_hand = [Variable(jnp.asarray(a)) for a in arrays]
        opt_ours, opt_by_hand = Nadam(clipnorm=1.0), Nadam(clipnorm=1.0)

        def pure_loss(w, b):
            return jnp.mean((jnp.tanh(inputs @ w + b) - targets) ** 2)

        for _ in range(5):
            opt_ours.minimize(_loss_of(ours, inputs, targets), ours)
            grads = jax.grad(pure_loss, argnums=(0, 1))(*(v.value for v in by_hand))
            opt_by_hand.apply_gradients(zip(grads, by_hand, strict=True))
        for a, b in zip(ours, by_hand, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), strict=True)
        assert ours[0].dtype == dtype
        # get_gradients gives jax.grad's arrays, and grad_loss scales them.
        got = opt_ours.get_gradients(_loss_of(ours, inputs, targets), ours)
        expected = jax.grad(pure_loss, argnums=(0, 1))(*(v.value for v in ours))
        for g, e in zip(got, expected, strict=True):
            assert isinstance(g, jax.Array)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e), strict=True)


def test_minimize_against_keras_on_a_loss_with_exact_gradients():
    # d/dw sum(c * w) = c exactly, in JAX and TensorFlow alike: the trajectories must agree
    # bit for bit, so minimize adds nothing of its own.
    rng = np.random.default_rng(5)
    start, c = random_array(rng, (6,), np.float32), random_array(rng, (6,), np.float32)
    w = Variable(jnp.asarray(start))
    tf_w = tf.Variable(start)
    ours, keras = Nadam(learning_rate=0.01), KerasNadam(learning_rate=0.01)
    for _ in range(10):
        ours.minimize(lambda: jnp.sum(jnp.asarray(c) * w.value), [w])
        keras.minimize(lambda: tf.reduce_sum(tf.constant(c) * tf_w), [tf_w])
    np.testing.assert_array_equal(w.numpy(), tf_w.numpy(), strict=True)


def test_a_variable_the_loss_ignores():
    used, unused = Variable(jnp.ones(2)), Variable(jnp.ones(3))
    before = unused.value
    opt = Nadam()
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        opt.minimize(lambda: jnp.sum(used.value ** 2), [used, unused])
    assert unused.value is before and not np.array_equal(used.numpy(), np.ones(2))
    with pytest.raises(ValueError, match="has `None` for gradient"):
        opt.get_gradients(lambda: jnp.sum(used.value ** 2), [used, unused])
    with pytest.raises(ValueError, match="grad_loss has shape"):
        opt.minimize(lambda: used.value * 2.0, [used], grad_loss=jnp.ones(3))


def test_weights_layout_slots_and_old_values():
    x, e = Variable(jnp.ones((4, 2)), name="x"), Variable(jnp.zeros(3), name="e")
    opt = Nadam()
    held = x.value  # a value read before the step stays valid: variables are not donated
    opt.apply_gradients([(jnp.ones((4, 2)), x), (jnp.ones(3), e)])
    np.testing.assert_array_equal(np.asarray(held), np.ones((4, 2), np.float32))
    weights = opt.get_weights()
    assert [w.shape for w in weights] == [(), (), (4, 2), (3,), (4, 2), (3,)]
    assert [w.dtype for w in weights] == [np.int64, np.float32, *[np.dtype(np.float32)] * 4]
    m = opt.get_slot(x, "m")
    assert isinstance(m, Variable) and isinstance(m.value, jax.Array)
    assert m.value.sharding == x.value.sharding
    assert opt.get_slot_names() == ["m", "v"]


def test_get_and_set_weights_round_trip():
    rng = np.random.default_rng(9)
    arrays = [random_array(rng, (3, 2), np.float32), random_array(rng, (5,), np.float32)]
    first = [Variable(jnp.asarray(a)) for a in arrays]
    opt = Nadam(learning_rate=0.01)
    for _ in range(4):
        opt.apply_gradients([(jnp.asarray(random_array(rng, v.shape, np.float32)), v)
                             for v in first])
    second = [Variable(jnp.asarray(v.numpy())) for v in first]
    restored = Nadam(learning_rate=0.01)
    restored.build(second)
    restored.set_weights(opt.get_weights())
    for got, expected in zip(restored.get_weights(), opt.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected, strict=True)
    for _ in range(3):
        grads = [jnp.asarray(random_array(rng, v.shape, np.float32)) for v in first]
        opt.apply_gradients(zip(grads, first, strict=True))
        restored.apply_gradients(zip(grads, second, strict=True))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_keras_2_run_continues_on_jax_variables(dtype):
    # Keras trains alone for a while; its weights and optimizer state move to JAX Variables
    # (build, then set_weights with Keras's get_weights()); then both go on, bit for bit.
    rng = np.random.default_rng(13)
    shapes = [(3, 2), (4,)]
    tf_vars = [tf.Variable(random_array(rng, s, dtype)) for s in shapes]
    keras = tf_keras.optimizers.legacy.Nadam(learning_rate=0.02)
    for _ in range(6):
        keras.apply_gradients(
            [(tf.constant(random_array(rng, s, dtype)), v) for s, v in zip(shapes, tf_vars,
                                                                           strict=True)])
    with precision(dtype):
        ours_vars = [Variable(jnp.asarray(v.numpy()), name=f"x{i}")
                     for i, v in enumerate(tf_vars)]
        ours = Nadam(learning_rate=0.02)
        ours.build(ours_vars)
        ours.set_weights(keras.get_weights())
        twin = JaxTwin.of_variables(ours, keras, ours_vars, tf_vars, "default")
        twin.check()
        for _ in range(5):
            twin.step([random_array(rng, s, dtype) for s in shapes])
            twin.check()


def test_constraint_applies_after_the_update():
    rng = np.random.default_rng(2)
    start = random_array(rng, (5,), np.float32)
    w = Variable(jnp.asarray(start), constraint=lambda v: jnp.clip(v.value, -0.1, 0.1))
    tf_w = tf.Variable(start, constraint=lambda v: tf.clip_by_value(v, -0.1, 0.1))
    ours, keras = Nadam(), KerasNadam()
    for _ in range(3):
        g = random_array(rng, (5,), np.float32)
        ours.apply_gradients([(jnp.asarray(g), w)])
        keras.apply_gradients([(tf.constant(g), tf_w)])
    np.testing.assert_array_equal(w.numpy(), tf_w.numpy(), strict=True)
    assert isinstance(w.value, jax.Array)


def test_the_jax_kernel_runs_and_the_fast_path_registry_names_it():
    w = Variable(jnp.ones(3))
    backend = backend_for(w)
    choice = nadam.kernels.select(backend, backend.device(w), backend.dtype(w))
    assert choice.name == "jax-xla"
    assert "jax-xla" in [k.name for k in nadam.kernels.registered_kernels()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation or donation warnings from JAX
        Nadam().apply_gradients([(jnp.ones(3), w)])


SHARDED = """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import nadam
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("d",)), PartitionSpec("d"))
    rng = np.random.default_rng(0)
    start = rng.standard_normal((8, 3)).astype(np.float32)
    sharded = nadam.Variable(jax.device_put(jnp.asarray(start), sharding))
    plain = nadam.Variable(jnp.asarray(start))
    on_mesh, on_one = nadam.Nadam(clipnorm=1.0), nadam.Nadam(clipnorm=1.0)
    for step in range(12):
        g = rng.standard_normal((8, 3)).astype(np.float32)
        if step % 3 == 2:
            rows = rng.integers(0, 8, size=5)
            on_mesh.apply_gradients([(nadam.IndexedSlices(jnp.asarray(g[:5]), rows), sharded)])
            on_one.apply_gradients([(nadam.IndexedSlices(jnp.asarray(g[:5]), rows), plain)])
        else:
            on_mesh.apply_gradients([(jax.device_put(jnp.asarray(g), sharding), sharded)])
            on_one.apply_gradients([(jnp.asarray(g), plain)])
    same = all(np.array_equal(a, b) for a, b in zip(on_mesh.get_weights(), on_one.get_weights()))
    print(json.dumps({
        "equal": bool(np.array_equal(sharded.numpy(), plain.numpy())) and same,
        "devices": [len(sharded.value.devices()),
                    len(on_mesh.get_slot(sharded, "v").value.devices())],
        "kept": sharded.value.sharding == sharding,
    }))
"""


def test_a_sharded_variable_steps_as_an_unsharded_one_and_stays_sharded():
    # Own process: the two CPU devices need XLA_FLAGS before JAX starts.
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SHARDED)], capture_output=True,
                          text=True, timeout=180, env={"PYTHONPATH": str(SRC), "PATH": ""},
                          check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"equal": True, "devices": [2, 2], "kept": True}


def test_the_readme_example_runs_as_printed():
    readme = (SRC.parent / "README.md").read_text()
    section = readme.split("### The Keras face on JAX arrays", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    opt, w = namespace["opt"], namespace["w"]
    assert int(opt.iterations.numpy()) == 2 and isinstance(w.value, jax.Array)
    assert float(w.numpy().min()) > 0  # both steps moved every weight towards y


def test_a_slot_array_passed_back_in_is_not_donated_away():
    # The slots' old buffers are donated to the step; a slot's array that the caller also
    # passes as a gradient and as another variable's value must survive it, and the step must
    # equal the same step on copies.
    arrays = {}
    for copies in (False, True):
        w = Variable(jnp.ones(3))
        opt = Nadam()
        opt.apply_gradients([(jnp.ones(3), w)])
        m = opt.get_slot(w, "m").value
        other = Variable(jnp.array(m, copy=True) if copies else m)
        grad = jnp.array(m, copy=True) if copies else m
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.apply_gradients([(grad, w), (jnp.ones(3), other)])
        arrays[copies] = [w.numpy(), other.numpy(), np.asarray(grad), *opt.get_weights()]
    for a, b in zip(arrays[False], arrays[True], strict=True):
        np.testing.assert_array_equal(a, b, strict=True)


def test_the_benchmark_row_steps_as_the_numpy_face_does():
    # `nadam.bench`'s nadam-jax row: mid-training (cache underflowed), and each of its steps
    # gives the NumPy face's state bit for bit on the same arrays.
    from nadam import bench

    case = bench.Case("tiny", [(300,), (7, 5)], warmup=1, steps=3)
    on_jax, on_numpy = bench.setup_nadam_jax(case), bench.setup_nadam(case)
    for _ in range(3):
        on_jax()
        on_numpy()
    opt = on_jax.optimizer
    assert int(opt.iterations.numpy()) == bench.MID_TRAINING_STEP + 3
    assert float(opt.momentum_cache.numpy()) == 0.0
    assert all(isinstance(slot.value, jax.Array) for slot in opt.weights[2:])
    for a, b in zip(opt.get_weights(), on_numpy.optimizer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b, strict=True)
