"""Late steps: the scalar powers must match Keras's C-library `powf` at large step counts.

A float32 power rounded from float64 differs from TensorFlow's in the last bit on a few percent
of steps; on a handful of them the difference survives into the step's scalars and so into the
trajectory. These tests start right before such steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from nadam import Nadam, Variable
from tests.conformance.oracle import KerasNadam, tf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# Each window holds a step whose float32 scalars differ when the powers are rounded from float64
# instead of taken from the C library's powf: v_correction at iterations 2957 and 3605, the
# momentum schedule at 9204-9205 and 13512-13513 (the only six such steps below 200000).
@pytest.mark.parametrize("start", [2_950, 3_600, 9_200, 13_505])
def test_trajectory_from_a_late_iteration_matches_keras(dtype: type, start: int) -> None:
    rng = np.random.default_rng(start)
    init = rng.normal(size=(4, 3)).astype(dtype)
    ours_var, keras_var = Variable(init), tf.Variable(init)
    ours = Nadam(learning_rate=0.01)
    keras = KerasNadam(learning_rate=0.01)
    ours.iterations = start
    keras.iterations.assign(start)
    for _ in range(12):
        grad = rng.normal(size=(4, 3)).astype(dtype)
        ours.apply_gradients([(grad, ours_var)])
        keras.apply_gradients([(tf.constant(grad), keras_var)])
    np.testing.assert_array_equal(ours_var.numpy(), keras_var.numpy())
    for ours_weight, keras_weight in zip(ours.get_weights(), keras.get_weights(), strict=True):
        np.testing.assert_array_equal(ours_weight, np.asarray(keras_weight))
