"""`minimize` with an autograd loss against Keras's `minimize` with a GradientTape loss.

A quadratic's gradient `a * x` is rounded once by both autodiffs, so those trajectories must be
bit-identical. A linear regression's gradient is a matrix product, which autograd (NumPy/BLAS)
and TensorFlow (Eigen) sum in different orders; there the comparison allows `REGRESSION_ULPS`
units of roundoff of each array's running magnitude (see `Twin.check_close`).
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nadam import Nadam

from .oracle import DTYPES, PATHS, KerasNadam, Twin, on_path, random_array, seeds, tf

# Measured worst case 5 ulp over 50 seeds x 20 steps (float32 and float64). Where a gradient
# component cancels (near the optimum, or a weight near 0) the differences grow to 1e4 ulp:
# the gradient's roundoff is then large relative to itself, and Nadam's m/sqrt(v) turns that
# relative error into a step-sized one. That is the two autodiffs disagreeing, not the
# optimizer, so the problem below keeps every gradient component far from cancelling.
REGRESSION_ULPS = 32


def _minimize_both(twin, our_loss, keras_loss, grad_loss=None, var_list_callable=False):
    our_vars = (lambda: twin.our_vars) if var_list_callable else twin.our_vars
    our_grad_loss = None if grad_loss is None else np.asarray(grad_loss)
    with on_path(twin.path):
        twin.ours.minimize(our_loss, our_vars, grad_loss=our_grad_loss)
    keras_grad_loss = None if grad_loss is None else tf.constant(grad_loss)
    twin.keras.minimize(keras_loss, twin.tf_vars, grad_loss=keras_grad_loss)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=3, deadline=None)
@given(
    seed=seeds,
    lr=st.floats(1e-3, 0.3),
    grad_loss=st.sampled_from([None, 0.5, 4.0]),
    var_list_callable=st.booleans(),
)
def test_minimize_quadratic_equals_keras(dtype, path, seed, lr, grad_loss, var_list_callable):
    rng = np.random.default_rng(seed)
    shapes = [(), (2, 3, 2), (4,)]
    curvatures = [np.abs(random_array(rng, s, dtype)) + dtype(0.1) for s in shapes]
    twin = Twin([random_array(rng, s, dtype) for s in shapes], path, learning_rate=lr)

    def our_loss():
        return sum(anp.sum(a * x.value**2 / 2) for a, x in zip(curvatures, twin.our_vars,
                                                                strict=True))

    def keras_loss():
        return tf.add_n(
            [tf.reduce_sum(a * x**2 / 2) for a, x in zip(curvatures, twin.tf_vars, strict=True)]
        )

    if grad_loss is not None:
        grad_loss = np.asarray(grad_loss, dtype)
    for step in range(30):
        _minimize_both(twin, our_loss, keras_loss, grad_loss, var_list_callable)
        if step in (0, 29):
            twin.check()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=2, deadline=None)
@given(seed=seeds)
def test_minimize_linear_regression_follows_keras(dtype, path, seed):
    rng = np.random.default_rng(seed)
    features, samples = 3, 16
    # Positive inputs and weights: every residual stays negative over these 20 steps, so no
    # gradient component cancels and the two autodiffs' summation orders differ by ulps only.
    inputs = rng.uniform(0.5, 1.5, (samples, features)).astype(dtype)
    true_w = rng.uniform(1.0, 2.0, features).astype(dtype)
    targets = (inputs @ true_w + dtype(0.5) + dtype(0.1) * rng.standard_normal(samples)).astype(
        dtype
    )
    twin = Twin([np.zeros(features, dtype), np.zeros((), dtype)], path, learning_rate=0.01)

    def our_loss():
        w, b = (x.value for x in twin.our_vars)
        return anp.mean((anp.dot(inputs, w) + b - targets) ** 2)

    def keras_loss():
        w, b = twin.tf_vars
        return tf.reduce_mean((tf.linalg.matvec(inputs, w) + b - targets) ** 2)

    first_loss = float(our_loss())
    for _ in range(20):
        _minimize_both(twin, our_loss, keras_loss)
        twin.check_close(REGRESSION_ULPS)
    assert float(our_loss()) < first_loss  # it did optimise


@pytest.mark.parametrize("path", PATHS)
def test_minimize_returns_iterations_like_keras(path):
    x, tf_x = Twin([np.float32(3.0)], path).our_vars[0], tf.Variable(np.float32(3.0))
    ours, keras = Nadam(), KerasNadam()
    for step in (1, 2):
        with on_path(path):
            assert ours.minimize(lambda: x.value**2, [x]) == step
        assert int(keras.minimize(lambda: tf_x**2, [tf_x]).numpy()) == step
    np.testing.assert_array_equal(x.numpy(), tf_x.numpy(), strict=True)
