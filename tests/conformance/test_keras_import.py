"""`nadam.interop.load_keras_optimizer`: files written by the real libraries, imported here.

- Keras 2 `.h5` (tf_keras, legacy Nadam): read exactly, restored into `nadam.Nadam` on NumPy
  Variables, then 20 more steps with the same gradients: bit-identical to tf_keras continuing.
- The newer tf_keras Nadam's `.h5`: slots and iterations exact, the momentum product (which the
  file lacks) recomputed exactly as an eager tf_keras run has it.
- TensorFlow checkpoint and SavedModel: read exactly (checkpoint: by prefix, `.index` file and
  directory), and a checkpoint's state continues bit-identically.
- Keras 3 `.keras` (in one subprocess with KERAS_BACKEND set): read exactly; continued here with
  `schedule_decay=1.0`, within float32 rounding of Keras 3 continuing, not bit for bit: Keras 3
  orders the update's operations differently (`m += (g - m) * (1 - beta_1)`, the momentum
  product as `(u * beta_1) * (1 - 0.5 * 0.96 ** t)`) and XLA fuses them. Measured after 20
  steps on the JAX backend: weights within 3e-8 (12 ulp), v within 4 ulp, m within 7e-6
  relative (up to 88 ulp on small entries), the momentum product 4 ulp.
- Errors: names, shapes, state already there, files that are not a Keras Nadam state, missing
  libraries. After every error the optimizer is as it was.

The PyTorch side (Keras 2 -> `nadam.torch.Nadam`) is tests/torch/test_keras_to_torch.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import nadam  # noqa: E402
from nadam.interop import KerasOptimizerState, Slots, load_keras_optimizer  # noqa: E402

STEPS = 20
NAMES = ["dense/kernel:0", "dense/bias:0", "dense_1/kernel:0", "dense_1/bias:0"]


def _bits(array):
    array = np.asarray(array)
    return array.dtype, array.shape, array.tobytes()


def _assert_bit_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert _bits(a) == _bits(b), (index, np.asarray(a), np.asarray(b))


def _mlp(seed=0):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([
        tf_keras.Input(shape=(8,)),
        tf_keras.layers.Dense(16, activation="tanh", name="dense"),  # names fixed: Keras 2
        tf_keras.layers.Dense(3, name="dense_1"),  # numbers layers per process otherwise
    ])


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((64, 8)).astype(np.float32),
            rng.standard_normal((64, 3)).astype(np.float32))


def _continue_in_keras(model, optimizer, steps=STEPS):
    """Continue with gradients of the model's loss (eager); returns the gradients applied."""
    x, y = _data(1)
    applied = []
    for step in range(steps):
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[batch]) - y[batch]))
        grads = tape.gradient(loss, model.trainable_variables)
        applied.append([g.numpy() for g in grads])
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return applied


def _compile_and_fit(model, optimizer):
    model.compile(optimizer=optimizer, loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 steps


@pytest.fixture(scope="module")
def keras2_h5(tmp_path_factory):
    """A tf_keras model trained 4 steps with the legacy Nadam, saved to .h5, then continued."""
    path = tmp_path_factory.mktemp("keras2") / "m.h5"
    model = _mlp()
    optimizer = tf_keras.optimizers.legacy.Nadam(learning_rate=0.01)
    _compile_and_fit(model, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is a legacy format"
        model.save(path)
    saved = (model.get_weights(), optimizer.get_weights())
    grads = _continue_in_keras(model, optimizer)
    return path, saved, grads, (model.get_weights(), optimizer.get_weights())


def _numpy_restore(state, weights):
    variables = [nadam.Variable(np.array(w)) for w in weights]
    opt = nadam.Nadam.from_config(state.to_optimizer_config())
    state.restore(opt, dict(zip(state.names, variables, strict=True)))
    return opt, variables


# --- Keras 2 .h5 ---------------------------------------------------------------------------------
def test_keras2_h5_reads_exactly(keras2_h5):
    path, (weights, keras_state), _, _ = keras2_h5
    state = load_keras_optimizer(path)
    assert state.source == "keras2-h5"
    assert state.names == NAMES
    assert state.iterations == 4 == keras_state[0]
    _assert_bit_equal([state.momentum_cache], [keras_state[1]])
    _assert_bit_equal([s.m for s in state.slots.values()], keras_state[2:6])
    _assert_bit_equal([s.v for s in state.slots.values()], keras_state[6:])
    _assert_bit_equal(list(state.model_weights.values()), weights)
    assert list(state.model_weights) == NAMES
    assert state.config == {
        "name": "Nadam", "learning_rate": 0.01, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999,
        "epsilon": 1e-07, "schedule_decay": 0.004,
    }
    assert nadam.Nadam.from_config(state.to_optimizer_config()).get_config() == state.config


def test_keras2_h5_to_numpy_continues_bit_identically(keras2_h5):
    path, (weights, keras_state), grads, (final_weights, final_state) = keras2_h5
    state = load_keras_optimizer(path)
    opt, variables = _numpy_restore(state, weights)
    _assert_bit_equal(opt.get_weights(), keras_state)  # Keras's layout and order
    for step_grads in grads:
        opt.apply_gradients(zip(step_grads, variables, strict=True))
    _assert_bit_equal([v.numpy() for v in variables], final_weights)
    _assert_bit_equal(opt.get_weights(), final_state)


def test_restore_into_optimizer_with_state_for_the_same_variables(keras2_h5):
    path, (weights, keras_state), _, _ = keras2_h5
    state = load_keras_optimizer(path)
    variables = [nadam.Variable(np.array(w)) for w in weights]
    opt = nadam.Nadam(learning_rate=0.01)
    opt.apply_gradients([(np.ones_like(w), v) for w, v in zip(weights, variables, strict=True)])
    state.restore(opt, dict(zip(state.names, variables, strict=True)))
    _assert_bit_equal(opt.get_weights(), keras_state)


def test_tf_keras_new_optimizer_h5(tmp_path):
    """`tf_keras.optimizers.Nadam` (not legacy): Keras 3's schedule, no u_product in the file."""
    model = _mlp()
    optimizer = tf_keras.optimizers.Nadam(learning_rate=0.01)
    model.compile(optimizer=optimizer, loss="mse")
    model.build((None, 8))
    _continue_in_keras(model, optimizer, steps=6)  # eager steps: u_product advances once each
    path = tmp_path / "new.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    with pytest.warns(UserWarning, match=r"schedule_decay=1\.0.*recomputed"):
        state = load_keras_optimizer(path)
    assert state.source == "tf_keras-h5"
    assert state.names == NAMES
    assert state.iterations == 6
    assert state.config["schedule_decay"] == 1.0
    _assert_bit_equal([state.momentum_cache], [optimizer._u_product.numpy()])
    by_name = {v.name: v.numpy() for v in optimizer.variables}
    for name, (m, v) in state.slots.items():
        _assert_bit_equal([m, v], [by_name[f"Nadam/m/{name}"], by_name[f"Nadam/v/{name}"]])


# --- TensorFlow checkpoint and SavedModel ---------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    model = _mlp()
    optimizer = tf_keras.optimizers.legacy.Nadam(learning_rate=0.02, beta_2=0.99)
    _compile_and_fit(model, optimizer)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(directory / "c"))
    saved = (model.get_weights(), optimizer.get_weights())
    grads = _continue_in_keras(model, optimizer, steps=5)
    return directory, prefix, saved, grads, (model.get_weights(), optimizer.get_weights())


@pytest.mark.parametrize("form", ["prefix", "index", "directory"])
def test_checkpoint_reads_slots_and_iterations(checkpoint_run, form):
    directory, prefix, (weights, keras_state), _, _ = checkpoint_run
    where = {"prefix": prefix, "index": prefix + ".index", "directory": directory}[form]
    with pytest.warns(UserWarning, match="does not store epsilon"):
        state = load_keras_optimizer(where)
    assert state.source == "tf-checkpoint"
    assert state.names == NAMES
    assert state.iterations == 4
    _assert_bit_equal(
        [state.momentum_cache]
        + [s.m for s in state.slots.values()] + [s.v for s in state.slots.values()],
        keras_state[1:],
    )
    _assert_bit_equal(list(state.model_weights.values()), weights)
    assert state.config["learning_rate"] == 0.02 and state.config["beta_2"] == 0.99
    assert state.config["schedule_decay"] == 0.004 and state.config["decay"] == 0.0


def test_checkpoint_continues_bit_identically(checkpoint_run):
    _, prefix, (weights, _), grads, (final_weights, final_state) = checkpoint_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_keras_optimizer(prefix)
    opt, variables = _numpy_restore(state, weights)
    for step_grads in grads:
        opt.apply_gradients(zip(step_grads, variables, strict=True))
    _assert_bit_equal([v.numpy() for v in variables], final_weights)
    _assert_bit_equal(opt.get_weights(), final_state)


def test_savedmodel_reads_state_and_full_config(tmp_path):
    model = _mlp()
    optimizer = tf_keras.optimizers.legacy.Nadam(learning_rate=0.01, epsilon=1e-5, clipnorm=1.0)
    _compile_and_fit(model, optimizer)
    keras_state = optimizer.get_weights()
    model.save(tmp_path / "sm", save_format="tf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config is complete: no warning
        state = load_keras_optimizer(tmp_path / "sm")
    assert state.source == "tf-savedmodel"
    assert state.names == NAMES
    assert state.iterations == 4
    _assert_bit_equal(
        [state.momentum_cache]
        + [s.m for s in state.slots.values()] + [s.v for s in state.slots.values()],
        keras_state[1:],
    )
    assert state.config["epsilon"] == 1e-5 and state.config["clipnorm"] == 1.0


# --- Keras 3 .keras ------------------------------------------------------------------------------
def _keras3_backend():
    if importlib.util.find_spec("keras") is None:
        return None
    if int(importlib.metadata.version("keras").split(".")[0]) < 3:
        return None
    return "jax" if importlib.util.find_spec("jax") is not None else "tensorflow"


@pytest.fixture(scope="module")
def keras3_run(tmp_path_factory):
    backend = _keras3_backend()
    if backend is None:
        pytest.skip("Keras 3 is not installed")
    out = tmp_path_factory.mktemp("keras3")
    worker = Path(__file__).with_name("keras3_worker.py")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    done = subprocess.run(
        [sys.executable, str(worker), str(out)], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    record = dict(np.load(out / "out.npz"))
    names = json.loads((out / "names.json").read_text())
    return out / "m.keras", record, names


def _keras3_lists(record, prefix):
    count = sum(1 for key in record if key.startswith(prefix))
    return [record[f"{prefix}{i}"] for i in range(count)]


def test_keras3_variable_names_come_from_the_rebuilt_model(keras3_run):
    _, _, names = keras3_run
    assert names["found"] == names["reloaded_paths"] == [
        "dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias",
    ]


def test_keras3_reads_exactly_and_warns_about_the_schedule(keras3_run):
    path, record, names = keras3_run
    saved = _keras3_lists(record, "saved_opt_")  # iteration, learning_rate, (m, v)*4, u_product
    assert len(saved) == 11
    with pytest.warns(UserWarning, match=r"schedule_decay=1\.0"):
        state = load_keras_optimizer(path, variable_names=names["found"])
    assert state.source == "keras3"
    assert state.iterations == int(saved[0]) == 4
    _assert_bit_equal([state.momentum_cache], [saved[-1]])
    _assert_bit_equal(
        [array for slots in state.slots.values() for array in slots], saved[2:-1]
    )
    assert state.config == {
        "name": "nadam", "learning_rate": 0.01, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999,
        "epsilon": 1e-07, "schedule_decay": 1.0,
    }


def test_keras3_to_numpy_continues_within_float32_rounding(keras3_run):
    path, record, names = keras3_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_keras_optimizer(path, variable_names=names["found"])
    opt, variables = _numpy_restore(state, _keras3_lists(record, "saved_weight_"))
    assert opt.get_config()["schedule_decay"] == 1.0
    for step in range(STEPS):
        grads = [record[f"grad_{step}_{i}"] for i in range(len(variables))]
        opt.apply_gradients(zip(grads, variables, strict=True))
    final = _keras3_lists(record, "final_opt_")
    theirs = _keras3_lists(record, "final_weight_")
    assert int(opt.iterations.numpy()) == int(final[0]) == 24
    # The momentum product: the same factors, multiplied in another order.
    np.testing.assert_allclose(opt.momentum_cache.numpy(), final[-1], rtol=1e-6)
    for ours, keras3 in zip([v.numpy() for v in variables], theirs, strict=True):
        np.testing.assert_allclose(ours, keras3, rtol=0, atol=1e-6)
    ours_state = opt.get_weights()
    n = len(variables)
    for i in range(n):  # Keras 3 interleaves m and v per variable; ours lists m's, then v's
        np.testing.assert_allclose(ours_state[2 + i], final[2 + 2 * i], rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(ours_state[2 + n + i], final[3 + 2 * i], rtol=1e-5, atol=1e-12)


def test_keras3_without_keras_needs_variable_names(keras3_run, monkeypatch):
    path, _, _ = keras3_run
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(ImportError, match="variable_names"):
        load_keras_optimizer(path)


def test_keras3_wrong_number_of_variable_names(keras3_run):
    path, _, _ = keras3_run
    with pytest.raises(ValueError, match="slots for 4 variables, but 2"):
        load_keras_optimizer(path, variable_names=["a", "b"])


def test_keras3_state_into_a_keras2_schedule_optimizer_warns(keras3_run):
    path, record, names = keras3_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_keras_optimizer(path, variable_names=names["found"])
    variables = [nadam.Variable(w) for w in _keras3_lists(record, "saved_weight_")]
    with pytest.warns(UserWarning, match=r"schedule_decay=0\.004 \(the Keras run: 1\.0\)"):
        state.restore(nadam.Nadam(learning_rate=0.01), dict(zip(state.names, variables,
                                                                strict=True)))


# --- errors --------------------------------------------------------------------------------------
def _small_state():
    return KerasOptimizerState(
        config=nadam.Nadam().get_config(), iterations=3, momentum_cache=np.float32(0.1),
        slots={
            "dense/kernel:0": Slots(np.full((2, 3), 0.5, np.float32), np.full((2, 3), 0.25,
                                                                                 np.float32)),
            "dense/bias:0": Slots(np.ones(3, np.float32), np.ones(3, np.float32)),
        },
    )


def _variables():
    return nadam.Variable(np.zeros((2, 3), np.float32)), nadam.Variable(np.zeros(3, np.float32))


@pytest.mark.parametrize(
    ("mapping", "error", "match"),
    [
        (lambda k, b: {"dense/kernel:0": k, "dense/bias:0": b, "dense/kernal:0": k}, ValueError,
         r"does not have: 'dense/kernal:0' \(did you mean 'dense/kernel:0'\?\)"),
        (lambda k, b: {"dense/kernel:0": k}, ValueError, r"leaves out: \['dense/bias:0'\]"),
        (lambda k, b: {"dense/kernel:0": (k, "transpose"), "dense/bias:0": b}, ValueError,
         r"shape \(2, 3\), \(3, 2\) after 'transpose', but its variable has shape \(2, 3\)"),
        (lambda k, b: {"dense/kernel:0": k, "dense/bias:0": k}, ValueError,
         "same variable for 'dense/kernel:0' and 'dense/bias:0'"),
        (lambda k, b: {"dense/kernel:0": (k, "flip"), "dense/bias:0": b}, ValueError,
         "unknown layout 'flip'"),
        (lambda k, b: {"dense/kernel:0": (k, (0, 0)), "dense/bias:0": b}, ValueError,
         "not a permutation"),
        (lambda k, b: {"dense/kernel:0": "k", "dense/bias:0": b}, TypeError,
         "must be a variable"),
    ],
    ids=["unknown", "unmapped", "shape-after-transpose", "twice", "layout", "axes", "type"],
)
def test_restore_errors_change_nothing(mapping, error, match):
    kernel, bias = _variables()
    opt = nadam.Nadam()
    with pytest.raises(error, match=match):
        _small_state().restore(opt, mapping(kernel, bias))
    assert opt.weights == [] and int(opt.iterations.numpy()) == 0


def test_shape_mismatch_suggests_transpose():
    bias = nadam.Variable(np.zeros(3, np.float32))
    kernel = nadam.Variable(np.zeros((3, 2), np.float32))
    opt = nadam.Nadam()
    hint = r"map it as \('dense/kernel:0': \(variable, 'transpose'\)\)"
    with pytest.raises(ValueError, match=hint):
        _small_state().restore(opt, {"dense/kernel:0": kernel, "dense/bias:0": bias})
    assert opt.weights == []
    _small_state().restore(opt, {"dense/kernel:0": (kernel, "transpose"), "dense/bias:0": bias})
    np.testing.assert_array_equal(opt.get_slot(kernel, "m").numpy(), np.full((3, 2), 0.5))


def test_restore_refuses_an_optimizer_with_other_state():
    kernel, bias = _variables()
    other = nadam.Variable(np.zeros(4, np.float32))
    opt = nadam.Nadam()
    opt.apply_gradients([(np.ones(4, np.float32), other)])
    before = opt.get_weights()
    with pytest.raises(ValueError, match="already has state"):
        _small_state().restore(opt, {"dense/kernel:0": kernel, "dense/bias:0": bias})
    _assert_bit_equal(opt.get_weights(), before)
    assert not np.any(kernel.numpy())


def test_restore_takes_only_our_optimizers():
    kernel, bias = _variables()
    with pytest.raises(TypeError, match="nadam.Nadam or a nadam.torch.Nadam"):
        _small_state().restore(tf_keras.optimizers.legacy.Nadam(),
                               {"dense/kernel:0": kernel, "dense/bias:0": bias})


def test_restore_into_plain_arrays_with_axes():
    state = _small_state()
    kernel = np.zeros((3, 2), np.float32)
    bias = np.zeros(3, np.float32)
    opt = nadam.Nadam()
    state.restore(opt, {"dense/kernel:0": (kernel, (1, 0)), "dense/bias:0": bias})
    weights = opt.get_weights()
    assert int(weights[0]) == 3 and weights[1] == np.float32(0.1)
    np.testing.assert_array_equal(weights[2], np.full((3, 2), 0.5))
    np.testing.assert_array_equal(weights[4], np.full((3, 2), 0.25))


def test_files_without_a_keras_nadam_state(tmp_path):
    model = _mlp()
    model.compile(optimizer=tf_keras.optimizers.legacy.Adam(), loss="mse")
    x, y = _data()
    model.fit(x[:16], y[:16], verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "adam.h5")
        model.save(tmp_path / "bare.h5", include_optimizer=False)
    with pytest.raises(ValueError, match="is 'Adam', not Nadam"):
        load_keras_optimizer(tmp_path / "adam.h5")
    with pytest.raises(ValueError, match="no optimizer state"):
        load_keras_optimizer(tmp_path / "bare.h5")
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt" / "c"))
    with pytest.raises(ValueError, match="no Keras 2 \\(legacy\\) Nadam"):
        load_keras_optimizer(prefix)
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a Keras .h5 file"):
        load_keras_optimizer(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError):
        load_keras_optimizer(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint and no SavedModel"):
        load_keras_optimizer(tmp_path / "empty")


def test_missing_libraries_are_named(keras2_h5, checkpoint_run, monkeypatch):
    path = keras2_h5[0]
    prefix = checkpoint_run[1]
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="TensorFlow checkpoint or SavedModel needs tensorflow"):
        load_keras_optimizer(prefix)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"needs h5py.*pip install h5py"):
        load_keras_optimizer(path)


def test_torch_kwargs_refuse_a_schedule():
    schedule = nadam.schedules.ExponentialDecay(0.1, 10, 0.5)
    state = _small_state()
    state.config = nadam.Nadam(learning_rate=schedule).get_config()
    with pytest.raises(ValueError, match="schedule"):
        state.to_torch_kwargs()
    assert isinstance(
        nadam.Nadam.from_config(state.to_optimizer_config()).learning_rate,
        nadam.schedules.ExponentialDecay,
    )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("iterations", -1, "non-negative"), ("momentum_cache", np.float32(1.5), r"in \[0, 1\]"),
     ("momentum_cache", np.float32(np.nan), r"in \[0, 1\]")],
)
def test_restore_refuses_state_no_run_writes(field, value, match):
    state = _small_state()
    setattr(state, field, value)
    state.momentum_cache = np.asarray(state.momentum_cache)
    kernel, bias = _variables()
    opt = nadam.Nadam()
    with pytest.raises(ValueError, match=match):
        state.restore(opt, {"dense/kernel:0": kernel, "dense/bias:0": bias})
    assert opt.weights == []


def test_float64_state_into_float32_variables_warns_that_it_rounds():
    state = _small_state()
    state.slots = {name: Slots(m.astype(np.float64), v.astype(np.float64))
                   for name, (m, v) in state.slots.items()}
    kernel, bias = _variables()
    opt = nadam.Nadam()
    with pytest.warns(UserWarning, match="float64 -> float32"):
        state.restore(opt, {"dense/kernel:0": kernel, "dense/bias:0": bias})
    assert opt.get_weights()[2].dtype == np.float32
