"""Bad inputs to `nadam.keras.Nadam` raise clear errors, and change nothing.

Runs in this process, on whichever Keras 3 backend it has (TensorFlow by default; the checks
are the face's own, before any backend code), plus one worker on Keras's NumPy backend.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from nadam.keras import Nadam


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learning_rate": -0.1}, ValueError, "Expected learning_rate >= 0, received: -0.1"),
        ({"learning_rate": "fast"}, TypeError, "learning_rate must be a real number"),
        ({"learning_rate": True}, TypeError, "learning_rate must be a real number"),
        ({"beta_1": 1.0}, ValueError, "Expected beta_1 in [0, 1), received: 1.0"),
        ({"beta_2": -0.5}, ValueError, "Expected beta_2 in [0, 1), received: -0.5"),
        ({"beta_1": np.array([0.9, 0.8])}, ValueError, "beta_1 must be a scalar"),
        ({"epsilon": -1e-7}, ValueError, "Expected epsilon >= 0, received: -1e-07"),
        ({"epsilon": "tiny"}, TypeError, "epsilon must be a number"),
        ({"schedule_decay": -0.004}, ValueError, "Expected schedule_decay >= 0"),
        ({"schedule_decay": math.inf}, ValueError, "Expected schedule_decay to be finite"),
        ({"decay": -1.0}, ValueError, "Expected decay >= 0 and finite, received: -1.0"),
        ({"decay": math.nan}, ValueError, "Expected decay >= 0 and finite, received: nan"),
        ({"clipnorm": -1.0}, ValueError, "Expected clipnorm >= 0, received: -1.0"),
        ({"clipvalue": "big"}, TypeError, "clipvalue must be a number or None"),
        ({"global_clipnorm": math.inf}, ValueError, "Expected global_clipnorm to be finite"),
        ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "Only one of `clipnorm`"),
        ({"weight_decay": -0.1}, ValueError, "Expected weight_decay >= 0, received: -0.1"),
        ({"loss_scale_factor": 0.0}, ValueError, "Expected loss_scale_factor > 0"),
        ({"name": ""}, ValueError, "Expected name to be a non-empty string"),
        ({"gradient_accumulation_steps": 1}, ValueError, "gradient_accumulation_steps"),
        ({"momentum": 0.9}, ValueError, "Argument(s) not recognized"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, error, message) -> None:
    with pytest.raises(error) as caught:
        Nadam(**kwargs)
    assert message in str(caught.value)


def test_valid_edge_values() -> None:
    opt = Nadam(learning_rate=0, beta_1=0.0, epsilon=None, schedule_decay=0, decay=0)
    assert (opt.beta_1, opt.epsilon, opt.schedule_decay) == (0.0, 1e-7, 0.0)
    assert Nadam(learning_rate=np.float64(0.5)).get_config()["learning_rate"] == 0.5


def _state(opt: Nadam, xs: list) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in [*xs, *opt.variables]]


@pytest.mark.parametrize("weight_decay", [None, 0.1])
@pytest.mark.parametrize(
    ("grad", "message"),
    [
        (np.ones(3, np.float64), "has dtype float64, but the variable has dtype float32"),
        (np.ones(4, np.float32), "has shape (4,), but the variable has shape (3,)"),
    ],
)
def test_bad_gradients_change_nothing(grad, message, weight_decay) -> None:
    xs = [keras.Variable(np.array([1.0, -2.0, 3.0], np.float32), name="w"),
          keras.Variable(np.ones(2, np.float32), name="b")]
    opt = Nadam(weight_decay=weight_decay)
    opt.apply([np.ones(3, np.float32), np.ones(2, np.float32)], xs)
    before = _state(opt, xs)
    with pytest.raises(ValueError) as caught:
        opt.apply([keras.ops.convert_to_tensor(grad), np.ones(2, np.float32)], xs)
    assert message in str(caught.value) and "w" in str(caught.value)
    for a, b in zip(_state(opt, xs), before, strict=True):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="Got 1 gradients for 2 variables"):
        opt.apply([np.ones(3, np.float32)])


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda w: w[:-1], ValueError, "with a weight list of length 4, but the optimizer was "
                                       "expecting 5 weights"),
        (lambda w: [*w[:3], np.ones(4, np.float32), *w[4:]], ValueError,
         "Optimizer weight shape (3,) not compatible with provided weight shape (4,)"),
        (lambda w: [np.asarray(-1), *w[1:]], ValueError, "Expected iterations in [0, 2**63"),
        (lambda w: [np.asarray(2.5), *w[1:]], ValueError, "Expected iterations to be a whole"),
        (lambda w: [*w[:-1], np.asarray(1.5, np.float32)], ValueError,
         "Expected momentum_cache in [0, 1]"),
        (lambda w: [*w[:-1], np.asarray("x")], TypeError, "expected numbers"),
    ],
)
def test_bad_set_weights_change_nothing(change, error, message) -> None:
    x = keras.Variable(np.array([1.0, -2.0, 3.0], np.float32))
    opt = Nadam()
    opt.apply([np.ones(3, np.float32)], [x])
    before = _state(opt, [x])
    weights = [keras.ops.convert_to_numpy(v) for v in opt.variables]
    assert len(weights) == 5  # iteration, learning_rate, momentum, velocity, momentum_cache
    with pytest.raises(error) as caught:
        opt.set_weights(change(weights))
    assert message in str(caught.value)
    for a, b in zip(_state(opt, [x]), before, strict=True):
        assert a.tobytes() == b.tobytes()
    # A good list still loads: the state round-trips.
    opt.set_weights(weights)
    assert [a.tobytes() for a in _state(opt, [x])] == [b.tobytes() for b in before]


def test_integer_variable_is_refused_before_building() -> None:
    opt = Nadam()
    with pytest.raises(TypeError, match="has dtype int32; nadam.keras.Nadam trains float16"):
        opt.apply([np.ones(3, np.int32)], [keras.Variable(np.ones(3, np.int32))])
    assert not opt.built and len(opt.variables) == 2  # iteration, learning_rate


def test_beta_that_rounds_to_one_in_float16_is_refused_before_building() -> None:
    opt = Nadam(beta_2=0.9999)
    with pytest.raises(ValueError, match=r"Expected beta_2 in \[0, 1\), received: .*0.9999.*"
                                         "1.0 in the variables' dtype float16"):
        opt.apply([np.ones(3, np.float16)], [keras.Variable(np.ones(3, np.float16))])
    assert not opt.built and len(opt.variables) == 2


def test_update_step_outside_a_step() -> None:
    x = keras.Variable(np.ones(2, np.float32))
    opt = Nadam()
    opt.build([x])
    with pytest.raises(RuntimeError, match="runs inside a step"):
        opt.update_step(np.ones(2, np.float32), x, 0.001)


def test_config_round_trip_is_lossless() -> None:
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.5)
    for opt in (Nadam(0.002, 0.8, 0.99, 1e-6, schedule_decay=0.01, decay=0.001, clipnorm=1.0,
                      use_ema=True, gradient_accumulation_steps=3, name="mine"),
                Nadam(learning_rate=schedule, weight_decay=0.01, loss_scale_factor=128.0)):
        config = opt.get_config()
        again = Nadam.from_config(dict(config))
        assert again.get_config() == config
        restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(restored) is Nadam and restored.get_config() == config
    assert config["schedule_decay"] == 0.004 and config["decay"] == 0.0


def test_from_keras_nadam_checks_its_argument() -> None:
    with pytest.raises(TypeError, match="takes a keras.optimizers.Nadam, got .*Adam"):
        Nadam.from_keras_nadam(keras.optimizers.Adam())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to carry over: no warning
        ours = Nadam.from_keras_nadam(keras.optimizers.Nadam(0.01, beta_1=0.8), decay=0.1)
    assert (ours.beta_1, ours.decay, ours.built) == (0.8, 0.1, False)
    with pytest.raises(ValueError, match="Expected steps in"):
        ours.momentum_cache_after(-1)


def test_other_keras_backends_are_refused() -> None:
    env = dict(os.environ, KERAS_BACKEND="numpy")
    code = ("from nadam.keras import Nadam\n"
            "try:\n    Nadam()\nexcept ValueError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "runs on Keras 3's jax, tensorflow, torch backends" in done.stdout, done.stderr


def test_xla_on_tensorflow_warns_that_bits_change() -> None:
    code = """
import warnings, numpy as np, keras, tensorflow as tf
from nadam.keras import Nadam
x = keras.Variable(np.ones(3, np.float32))
opt = Nadam()
opt.build([x])
for jit in (False, True):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tf.function(lambda: opt.apply([tf.ones(3)], [x]), jit_compile=jit)()
    print(jit, sum("compiled with XLA" in str(w.message) for w in caught))
"""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.split("\n")[-3:-1] == ["False 0", "True 1"], done.stderr[-2000:]
