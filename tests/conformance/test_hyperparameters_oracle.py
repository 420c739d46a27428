"""Hyperparameters that are not plain numbers, against the live Keras 2 oracle, bit for bit.

Keras turns a number (or NumPy array) given to the constructor or assigned later into a float32
variable, and casts what a callable returns with `tf.cast` (a Python float goes through
float32, a NumPy float64 does not). SPEC section 2 asks for exactly that rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nadam import Nadam

from .oracle import DTYPES, PATHS, KerasNadam, Twin, random_array, seeds, tf

SHAPES = [(), (3, 2, 2), (4,)]

# How a callable hands back its value: a Python float, or a NumPy scalar of either width.
RETURN_KINDS = {
    "python": float,
    "float32": np.float32,
    "float64": np.float64,
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=3, deadline=None)
@given(kind=st.sampled_from(sorted(RETURN_KINDS)), seed=seeds)
def test_callable_learning_rate_and_betas_changing_between_steps(dtype, path, kind, seed):
    rng = np.random.default_rng(seed)
    convert = RETURN_KINDS[kind]
    current: dict[str, float] = {}

    def hyper(name):
        # Both optimizers call the same function; it reads the value set for this step, so
        # calling it more or fewer times per step changes nothing.
        return lambda: convert(current[name])

    kwargs = {name: hyper(name) for name in ("learning_rate", "beta_1", "beta_2")}
    twin = Twin([random_array(rng, s, dtype) for s in SHAPES], path, **kwargs)
    for step in range(25):
        current.update(
            learning_rate=10 ** rng.uniform(-4, -1),
            beta_1=rng.uniform(0.5, 0.95),
            beta_2=rng.uniform(0.9, 0.9999),
        )
        twin.step([random_array(rng, s, dtype) for s in SHAPES])
        if step in (0, 24):
            twin.check()


# How a hyperparameter is given: Keras makes a float32 variable of a Python float and a variable
# of the NumPy value's own dtype otherwise (a float64 one keeps full precision).
GIVEN_KINDS = {
    "python": float,
    "np.float64": np.float64,
    "0-d float32": lambda value: np.array(value, np.float32),
    "0-d float64": lambda value: np.array(value, np.float64),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=4, deadline=None)
@given(
    kind=st.sampled_from(sorted(GIVEN_KINDS)),
    lr=st.floats(1e-4, 0.3),
    beta_1=st.floats(0.5, 0.99),
    later_lr=st.floats(1e-4, 0.3),
    later_beta_2=st.floats(0.5, 0.9999),
    seed=seeds,
)
def test_number_and_zero_d_array_hyperparameters_and_assignment(
    dtype, path, kind, lr, beta_1, later_lr, later_beta_2, seed
):
    # Given at construction, then new values of the same kind assigned as attributes mid-run.
    # (Keras keeps the dtype of the variable it made first; we take each value's own, so the
    # two agree whenever the kinds agree, which is what this test holds fixed.)
    rng = np.random.default_rng(seed)
    convert = GIVEN_KINDS[kind]
    kwargs = {"learning_rate": convert(lr), "beta_1": convert(beta_1), "beta_2": convert(0.999)}
    twin = Twin([random_array(rng, s, dtype) for s in SHAPES], path, **kwargs)
    for step in range(20):
        if step == 10:
            for optimizer in (twin.ours, twin.keras):
                optimizer.learning_rate = convert(later_lr)
                optimizer.beta_2 = convert(later_beta_2)
        twin.step([random_array(rng, s, dtype) for s in SHAPES])
        if step in (0, 9, 19):
            twin.check()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=2, deadline=None)
@given(lr=st.floats(1e-3, 0.3), decay=st.floats(0.01, 2.0), seed=seeds)
def test_learning_rate_decay_equals_keras_with_the_documented_formula(dtype, path, lr, decay,
                                                                      seed):
    # SPEC 4.1: our `decay` is lr / (1 + decay * iterations) (Keras 2's Nadam ignored it).
    # Keras, given that formula as a callable computed in the variables' dtype from float32
    # hyperparameters, must follow the same trajectory bit for bit.
    rng = np.random.default_rng(seed)
    lr_t, decay_t = tf.constant(np.float32(lr), dtype), tf.constant(np.float32(decay), dtype)
    keras = KerasNadam(
        learning_rate=lambda: lr_t / (1 + decay_t * tf.cast(keras.iterations, dtype))
    )
    ours = Nadam(learning_rate=lr, decay=decay)
    twin = Twin([random_array(rng, s, dtype) for s in SHAPES], path, ours=ours, keras=keras)
    for _ in range(15):
        twin.step([random_array(rng, s, dtype) for s in SHAPES])
    twin.check()
    assert twin.ours.get_config()["decay"] == decay
