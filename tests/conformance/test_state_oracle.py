"""Optimizer state and configuration against the live Keras 2 oracle.

`set_weights` in both directions and `from_config` of a Keras config must lead to the same
trajectories bit for bit; `get_config` has Keras's keys plus `schedule_decay` (SPEC 4.1); and
where Keras raises on bad state input we raise the same error with the same text.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nadam import Nadam, Variable

from .oracle import (
    DTYPES,
    PATHS,
    KerasNadam,
    Twin,
    hyperparameters,
    on_path,
    random_array,
    random_sparse,
    row_shapes,
    seeds,
    tf,
    to_tf_gradient,
)

DENSE_SHAPES = [(), (2, 3, 2)]


def _gradients(rng, dense_shapes, sparse_shape, dtype):
    return [random_array(rng, s, dtype) for s in dense_shapes] + [
        random_sparse(rng, sparse_shape, dtype)
    ]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=2, deadline=None)
@given(hypers=hyperparameters(), sparse_shape=row_shapes, seed=seeds)
def test_set_weights_from_keras_then_identical_steps(dtype, path, hypers, sparse_shape, seed):
    rng = np.random.default_rng(seed)
    arrays = [random_array(rng, s, dtype) for s in [*DENSE_SHAPES, sparse_shape]]
    keras = KerasNadam(**hypers)
    tf_vars = [tf.Variable(a) for a in arrays]
    for _ in range(8):  # Keras trains alone first
        grads = _gradients(rng, DENSE_SHAPES, sparse_shape, dtype)
        keras.apply_gradients(zip([to_tf_gradient(g) for g in grads], tf_vars, strict=True))

    ours = Nadam(**hypers)
    our_vars = [Variable(v.numpy(), name=f"x{i}") for i, v in enumerate(tf_vars)]
    ours.build(our_vars)
    ours.set_weights(keras.get_weights())
    twin = Twin.of_variables(ours, keras, our_vars, tf_vars, path)
    twin.check()
    assert int(ours.iterations.numpy()) == 8
    for _ in range(10):
        twin.step(_gradients(rng, DENSE_SHAPES, sparse_shape, dtype))
    twin.check()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=2, deadline=None)
@given(hypers=hyperparameters(), sparse_shape=row_shapes, seed=seeds)
def test_keras_set_weights_from_ours_then_identical_steps(dtype, path, hypers, sparse_shape,
                                                          seed):
    rng = np.random.default_rng(seed)
    arrays = [random_array(rng, s, dtype) for s in [*DENSE_SHAPES, sparse_shape]]
    ours = Nadam(**hypers)
    our_vars = [Variable(a, name=f"x{i}") for i, a in enumerate(arrays)]
    with on_path(path):
        for _ in range(8):  # we train alone first
            grads = _gradients(rng, DENSE_SHAPES, sparse_shape, dtype)
            ours.apply_gradients(zip(grads, our_vars, strict=True))

    keras = KerasNadam(**hypers)
    tf_vars = [tf.Variable(v.numpy()) for v in our_vars]
    keras._create_all_weights(tf_vars)  # Keras 2 has no public `build`
    keras.set_weights(ours.get_weights())
    twin = Twin.of_variables(ours, keras, our_vars, tf_vars, path)
    twin.check()
    for _ in range(10):
        twin.step(_gradients(rng, DENSE_SHAPES, sparse_shape, dtype))
    twin.check()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=3, deadline=None)
@given(
    hypers=hyperparameters(),
    schedule_decay=st.one_of(st.just(0.004), st.floats(0.0, 0.5)),
    clipvalue=st.one_of(st.none(), st.floats(0.1, 2.0)),
    hypers_created=st.booleans(),
    seed=seeds,
)
def test_from_keras_config_trains_identically(dtype, path, hypers, schedule_decay, clipvalue,
                                              hypers_created, seed):
    # A Keras 2 config's `decay` is the momentum schedule constant: it must become our
    # `schedule_decay` (a non-default one included), and our `decay` stays 0.
    rng = np.random.default_rng(seed)
    shapes = [*DENSE_SHAPES, (4, 2)]
    if clipvalue is not None:
        hypers["clipvalue"] = clipvalue
    keras = KerasNadam(schedule_decay=schedule_decay, **hypers)
    if hypers_created:
        # Reading a hyperparameter makes Keras create its float32 hyper variables; from then
        # on its config holds np.float32 values instead of the Python floats given.
        assert isinstance(keras.learning_rate, tf.Variable)
    config = keras.get_config()
    ours = Nadam.from_config(config)
    assert ours.schedule_decay == config["decay"] == schedule_decay
    assert ours.decay == 0.0 and ours.get_config()["decay"] == 0.0
    twin = Twin([random_array(rng, s, dtype) for s in shapes], path, ours=ours, keras=keras)
    for step in range(15):
        grads = [random_array(rng, s, dtype) for s in DENSE_SHAPES]
        twin.step([*grads, random_sparse(rng, shapes[2], dtype)])
        if step in (0, 14):
            twin.check()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5, "name": "N"},
        {"epsilon": None, "clipnorm": 1.5},
        {"global_clipnorm": 2.0, "clipvalue": 0.5},
        {"clipvalue": 0.25, "clipnorm": 3.0, "schedule_decay": 0.01},
    ],
    ids=["defaults", "custom", "clipnorm", "global+value", "value+norm+schedule"],
)
@pytest.mark.parametrize("after_a_step", [False, True], ids=["fresh", "stepped"])
def test_get_config_has_keras_keys_plus_schedule_decay(kwargs, after_a_step):
    ours, keras = Nadam(**kwargs), KerasNadam(**kwargs)
    if after_a_step:
        ours.apply_gradients([(np.ones(2, np.float32), Variable(np.zeros(2, np.float32)))])
        keras.apply_gradients([(tf.ones(2), tf.Variable(np.zeros(2, np.float32)))])
    mine, theirs = ours.get_config(), keras.get_config()
    assert set(mine) == set(theirs) | {"schedule_decay"}
    assert mine["schedule_decay"] == theirs["decay"] == kwargs.get("schedule_decay", 0.004)
    assert mine["decay"] == 0.0  # SPEC 4.1: our decay is the learning-rate decay
    for key in set(theirs) - {"decay"}:
        # Keras reports float32 NumPy values once its hyper variables exist; ours are the
        # numbers as given, which round to exactly those.
        if isinstance(theirs[key], np.float32):
            assert np.float32(mine[key]) == theirs[key], key
        else:
            assert mine[key] == _plain(theirs[key]), key
    # Ours survives its own round trip losslessly, schedule_decay included.
    assert Nadam.from_config(mine).get_config() == mine


# --- errors both raise ---------------------------------------------------------------------
def _normalized(message):
    # Keras's length message has a double space ("with a  weight list") and its shape message
    # ends with a period; ours follow SPEC section 3's quotation. Same words otherwise.
    return " ".join(message.split()).rstrip(".")


def _built_pair(dtype=np.float32, name="Nadam"):
    rng = np.random.default_rng(5)
    arrays = [random_array(rng, s, dtype) for s in [(3,), (2, 2)]]
    twin = Twin(arrays, "default", name=name)
    twin.step([random_array(rng, s, dtype) for s in [(3,), (2, 2)]])
    return twin


def _error(callable_, *args):
    with pytest.raises(ValueError) as info:
        callable_(*args)
    return str(info.value)


@pytest.mark.parametrize("name", ["Nadam", "my_opt"])
def test_set_weights_length_mismatch_raises_keras_text(name):
    twin = _built_pair(name=name)
    before = twin.ours.get_weights()
    for weights in (twin.keras.get_weights()[:3], [*twin.keras.get_weights(), np.zeros(3)]):
        mine = _error(twin.ours.set_weights, weights)
        theirs = _error(twin.keras.set_weights, weights)
        assert _normalized(mine) == _normalized(theirs)
        assert f"optimizer {name} with a" in mine
    for old, new in zip(before, twin.ours.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old, strict=True)


@pytest.mark.parametrize("position", [2, 5])
def test_set_weights_shape_mismatch_raises_keras_text_and_writes_nothing(position):
    twin = _built_pair()
    weights = twin.keras.get_weights()
    weights = [np.asarray(w) + 1 for w in weights]  # a real change, if anything were written
    weights[position] = np.zeros(np.asarray(weights[position]).size + 1, np.float32)
    before, keras_before = twin.ours.get_weights(), twin.keras.get_weights()
    mine = _error(twin.ours.set_weights, weights)
    theirs = _error(twin.keras.set_weights, weights)
    assert _normalized(mine) == _normalized(theirs)
    assert "not compatible with provided weight shape" in mine
    for old, new in zip(before, twin.ours.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old, strict=True)
    for old, new in zip(keras_before, twin.keras.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old)  # Keras, too, checks every shape first


def test_no_gradients_for_any_variable_raises_in_both():
    twin = _built_pair()
    before = twin.ours.get_weights()
    mine = _error(twin.ours.apply_gradients, [(None, v) for v in twin.our_vars])
    theirs = _error(twin.keras.apply_gradients, [(None, v) for v in twin.tf_vars])
    prefix = "No gradients provided for any variable"
    assert mine.startswith(prefix) and theirs.startswith(prefix)
    for name in ("x0", "x1"):
        assert name in mine and name in theirs
    for old, new in zip(before, twin.ours.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old, strict=True)
    twin.check()
