"""A user optimizer written the Keras 2 way, by subclassing `nadam.Optimizer` (SPEC section 3)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import nadam
from nadam import IndexedSlices, Variable


class MomentumSGD(nadam.Optimizer):
    """velocity = momentum * velocity - lr * g;  x += velocity (one slot per variable)."""

    def __init__(self, learning_rate=0.1, momentum=0.9, name="MomentumSGD", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)
        self._set_hyper("momentum", momentum)

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "velocity")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        apply_state[(var_device, var_dtype)]["momentum"] = self._get_hyper("momentum", var_dtype)

    def _coefficients(self, var, apply_state):
        dtype = var.dtype
        return apply_state[("cpu", dtype)]

    def _resource_apply_dense(self, grad, var, apply_state):
        c = self._coefficients(var, apply_state)
        velocity = self.get_slot(var, "velocity")
        velocity.assign(c["momentum"] * velocity.value - c["lr_t"] * grad)
        var.assign_add(velocity.value)

    def _resource_apply_sparse(self, grad, var, indices, apply_state):
        c = self._coefficients(var, apply_state)
        velocity = self.get_slot(var, "velocity")
        rows = c["momentum"] * velocity.value[indices] - c["lr_t"] * grad
        velocity.value[indices] = rows
        var.value[indices] += rows

    def get_config(self):
        config = super().get_config()
        config.update(
            learning_rate=self._serialize_hyperparameter("learning_rate"),
            momentum=self._serialize_hyperparameter("momentum"),
            decay=self._serialize_hyperparameter("decay"),
        )
        return config


def _hand_momentum(x, grads, lr=0.1, momentum=0.9):
    velocity = np.zeros_like(x)
    for g in grads:
        velocity = momentum * velocity - lr * g
        x = x + velocity
    return x, velocity


def test_dense_steps_and_weights():
    x = Variable(np.array([1.0, 2.0]), name="x")
    y = Variable(np.array([[0.0], [-1.0]]), name="y")
    opt = MomentumSGD(learning_rate=0.5, momentum=0.5)
    grads_x = [np.array([1.0, -1.0]), np.array([0.5, 0.5]), np.array([2.0, 0.0])]
    grads_y = [np.array([[1.0], [1.0]])] * 3
    for it, (gx, gy) in enumerate(zip(grads_x, grads_y, strict=True)):
        assert opt.apply_gradients([(gx, x), (gy, y)]) == it + 1
    want_x, vel_x = _hand_momentum(np.array([1.0, 2.0]), grads_x, 0.5, 0.5)
    want_y, vel_y = _hand_momentum(np.array([[0.0], [-1.0]]), grads_y, 0.5, 0.5)
    np.testing.assert_allclose(x.numpy(), want_x, rtol=1e-15)
    np.testing.assert_allclose(y.numpy(), want_y, rtol=1e-15)
    assert opt.weights == [opt.iterations, opt.get_slot(x, "velocity"),
                           opt.get_slot(y, "velocity")]
    assert [w.name for w in opt.weights[1:]] == ["x/velocity", "y/velocity"]
    iterations, got_vel_x, got_vel_y = opt.get_weights()
    assert iterations == 3
    np.testing.assert_allclose(got_vel_x, vel_x, rtol=1e-15)
    np.testing.assert_allclose(got_vel_y, vel_y, rtol=1e-15)
    assert opt.get_slot_names() == ["velocity"]


def test_first_step_by_hand_in_float32():
    x = Variable([1.0, 2.0], name="x")
    opt = MomentumSGD()
    opt.apply_gradients([(np.array([1.0, -2.0], np.float32), x)])
    # velocity = -0.1 * g (lr rounded to float32, as a Keras hyper variable)
    np.testing.assert_array_equal(x.numpy(), np.float32([1.0, 2.0]) - np.float32(0.1)
                                  * np.float32([1.0, -2.0]))
    assert x.dtype == np.float32


def test_sparse_path_sums_duplicates_and_touches_only_its_rows():
    emb = Variable(np.zeros((4, 2)), name="emb")
    opt = MomentumSGD(learning_rate=1.0, momentum=0.5)
    grad = IndexedSlices(np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 4.0]]), np.array([2, 2, 0]))
    opt.apply_gradients([(grad, emb)])
    np.testing.assert_allclose(emb.numpy(), [[0, -4], [0, 0], [-3, -1], [0, 0]], rtol=1e-15)
    opt.apply_gradients([(IndexedSlices(np.array([[1.0, 1.0]]), np.array([2])), emb)])
    # row 2: velocity 0.5 * [-3, -1] - [1, 1] = [-2.5, -1.5]; row 0 keeps its velocity
    np.testing.assert_allclose(emb.numpy(), [[0, -4], [0, 0], [-5.5, -2.5], [0, 0]],
                               rtol=1e-15)
    np.testing.assert_allclose(opt.get_slot(emb, "velocity").numpy(),
                               [[0, -4], [0, 0], [-2.5, -1.5], [0, 0]], rtol=1e-15)


def test_base_class_features_work_for_the_subclass():
    # decay (via lr_t), clipping, hyperparameter attributes, validation, config.
    x = Variable(np.array([0.0]), name="x")
    opt = MomentumSGD(learning_rate=1.0, momentum=0.0, decay=1.0, clipvalue=0.5)
    opt.apply_gradients([(np.array([3.0]), x)])  # lr 1, g clipped to 0.5
    opt.apply_gradients([(np.array([3.0]), x)])  # lr 1 / (1 + 1 * 1)
    np.testing.assert_allclose(x.numpy(), [-0.75], rtol=1e-15)
    assert opt.momentum == 0.0
    opt.momentum = 0.25
    assert opt.get_config()["momentum"] == 0.25
    restored = MomentumSGD.from_config(opt.get_config())
    assert restored.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    before = x.numpy()
    with pytest.raises(ValueError, match="'x'"):
        opt.apply_gradients([(np.ones(2), x)])
    np.testing.assert_array_equal(x.numpy(), before)
    assert int(opt.iterations.value) == 2


def test_build_and_set_weights():
    w = Variable(np.array([1.0, 1.0]), name="w")
    opt = MomentumSGD(learning_rate=0.5, momentum=1.0)
    opt.build([w])
    opt.set_weights([np.int64(7), np.array([0.25, -0.25])])
    opt.apply_gradients([(np.array([0.5, 0.5]), w)])
    # velocity = 1.0 * [0.25, -0.25] - 0.5 * 0.5
    np.testing.assert_allclose(w.numpy(), [1.0, 0.5], rtol=1e-15)
    assert int(opt.iterations.value) == 8


def test_missing_hooks_say_what_is_missing():
    class DenseOnly(nadam.Optimizer):
        def __init__(self):
            super().__init__("DenseOnly")

    x = Variable(np.ones(2), name="x")
    with pytest.raises(NotImplementedError, match="DenseOnly"):
        DenseOnly().apply_gradients([(np.ones(2), x)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decay_matches_keras_optimizer_v2(dtype):
    # The base contract's time-inverse decay, bit for bit against Keras 2's OptimizerV2 (SGD
    # without momentum: x -= lr / (1 + decay * iterations) * g).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    rng = np.random.default_rng(4)
    x0 = rng.standard_normal(5).astype(dtype)
    keras_var = tf.Variable(x0)
    keras_opt = tf_keras.optimizers.legacy.SGD(learning_rate=0.1, decay=0.3)
    ours = Variable(x0, name="x")
    opt = MomentumSGD(learning_rate=0.1, momentum=0.0, decay=0.3)
    for _ in range(5):
        g = rng.standard_normal(5).astype(dtype)
        keras_opt.apply_gradients([(tf.constant(g), keras_var)])
        opt.apply_gradients([(g, ours)])
    np.testing.assert_array_equal(ours.numpy(), keras_var.numpy())
