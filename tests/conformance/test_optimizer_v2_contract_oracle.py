"""The rest of TF 2.3's OptimizerV2 contract, against the live Keras 2 oracle: constraints,
live hyperparameters, subclass hooks, CosineDecay's warmup, and strict inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import nadam
from nadam import IndexedSlices, Nadam, Variable
from nadam.schedules import CosineDecay

from .oracle import PATHS, KerasNadam, Twin, on_path, to_tf_gradient


# --- constraints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_constraints_as_keras_applies_them(path):
    # Keras's own case: loss 5 * x0 + 3 * x1, x0 clipped to [-0.1, 0], x1 to [0, 1].
    def ours_01(x):
        return np.clip(x.numpy(), -0.1, 0.0)

    def ours_0(x):
        return np.clip(x.numpy(), 0.0, 1.0)

    x0 = Variable(np.array([1.0, 2.0], np.float32), constraint=ours_01)
    x1 = Variable(np.array([3.0, 4.0], np.float32), constraint=ours_0)
    t0 = tf.Variable([1.0, 2.0], constraint=lambda x: tf.clip_by_value(x, -0.1, 0.0))
    t1 = tf.Variable([3.0, 4.0], constraint=lambda x: tf.clip_by_value(x, 0.0, 1.0))
    opt, keras = Nadam(learning_rate=3.0), KerasNadam(learning_rate=3.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g0, g1 = (rng.standard_normal(2).astype(np.float32) for _ in range(2))
        with on_path(path):
            opt.apply_gradients([(g0, x0), (g1, x1)])
        keras.apply_gradients([(tf.constant(g0), t0), (tf.constant(g1), t1)])
        assert x0.numpy().tobytes() == t0.numpy().tobytes()
        assert x1.numpy().tobytes() == t1.numpy().tobytes()
    assert (x0.numpy() <= 0).all() and (x0.numpy() >= -0.1).all()


def test_a_constraint_with_a_sparse_gradient_is_refused_as_keras_does():
    # TF 2.3 and tf_keras both raise: a constraint re-assigns the whole variable, which a
    # sparse (embedding) update is meant to avoid. Ours raises before anything changes.
    start = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    theirs = tf.Variable(start, constraint=lambda x: tf.clip_by_value(x, -0.5, 0.5))
    grad = IndexedSlices(np.ones((2, 3), np.float32), np.array([1, 3]), (4, 3))
    with pytest.raises(RuntimeError, match="constraint function on a sparse variable"):
        KerasNadam().apply_gradients([(to_tf_gradient(grad), theirs)])
    ours = Variable(start, name="emb", constraint=lambda x: np.clip(x.numpy(), -0.5, 0.5))
    opt = Nadam()
    with pytest.raises(RuntimeError, match="constraint function on a sparse variable.*'emb'"):
        opt.apply_gradients([(grad, ours)])
    assert opt.weights == [] and ours.numpy().tobytes() == start.tobytes()


def test_a_failing_constraint_leaves_the_step_undone():
    w = Variable(np.ones(3, np.float32), name="w")
    u = Variable(np.ones(2, np.float32), name="u", constraint=lambda x: np.ones(5))
    opt = Nadam()
    opt.apply_gradients([(np.ones(3, np.float32), w)])
    before = (w.numpy(), u.numpy(), opt.get_weights())
    with pytest.raises(ValueError, match="constraint of variable 'u'.*shape"):
        opt.apply_gradients([(np.ones(3, np.float32), w), (np.ones(2, np.float32), u)])
    assert w.numpy().tobytes() == before[0].tobytes() and u.numpy().tobytes() == before[1].tobytes()
    after = opt.get_weights()
    assert int(after[0]) == 1
    for got, want in zip(after[:3], before[2][:3], strict=True):  # iterations, cache, w's m
        assert got.tobytes() == want.tobytes()


# --- live hyperparameters ---------------------------------------------------------------------
def test_assigning_through_the_hyper_variable_as_keras():
    twin = Twin([np.linspace(-1, 1, 6).astype(np.float32)], "default", learning_rate=0.01)
    rng = np.random.default_rng(1)
    for step in range(6):
        if step == 2:
            twin.ours.lr.assign(0.5)
            twin.keras.lr.assign(0.5)
        if step == 4:
            twin.ours.beta_2.assign(0.9)
            twin.keras.beta_2.assign(0.9)
        twin.step([rng.standard_normal(6).astype(np.float32)])
        twin.check()
    assert float(twin.ours.lr) == float(twin.keras.lr.numpy())


def test_a_variable_learning_rate_stays_live_as_keras():
    ours_lr, keras_lr = Variable(0.01), tf.Variable(0.01)
    twin = Twin([np.ones(4, np.float32)], "default", ours=Nadam(learning_rate=ours_lr),
                keras=KerasNadam(learning_rate=keras_lr))
    assert twin.ours.learning_rate is ours_lr
    rng = np.random.default_rng(2)
    for step in range(4):
        if step == 2:
            ours_lr.assign(0.0)
            keras_lr.assign(0.0)
        twin.step([rng.standard_normal(4).astype(np.float32)])
        twin.check()


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_a_zero_d_array_hyperparameter_is_checked_at_every_step(bad):
    lr = np.array(0.01)
    w = Variable(np.ones(3, np.float32))
    opt = Nadam(learning_rate=lr)
    opt.apply_gradients([(np.ones(3, np.float32), w)])
    lr[()] = bad
    before = (w.numpy(), opt.get_weights())
    with pytest.raises(ValueError, match="learning_rate"):
        opt.apply_gradients([(np.ones(3, np.float32), w)])
    assert w.numpy().tobytes() == before[0].tobytes()
    for got, want in zip(opt.get_weights(), before[1], strict=True):
        assert got.tobytes() == want.tobytes()


# --- subclass hooks ---------------------------------------------------------------------------
def test_overridden_dense_hook_is_called_and_can_defer_to_nadam():
    calls = []

    class Counting(Nadam):
        def _resource_apply_dense(self, grad, var, apply_state):
            calls.append(var.name)
            return super()._resource_apply_dense(grad, var, apply_state)

    twin = Twin([np.ones(3, np.float32), np.zeros(2, np.float32)], "default",
                ours=Counting(learning_rate=0.1), keras=KerasNadam(learning_rate=0.1))
    twin.step([np.full(3, 0.5, np.float32), np.full(2, -1.0, np.float32)])
    twin.check()
    assert calls == ["x0", "x1"]


def test_overridden_sparse_hook_can_defer_to_nadam():
    calls = []

    class Counting(Nadam):
        def _resource_apply_sparse(self, grad, var, indices, apply_state):
            calls.append(sorted(np.asarray(indices).tolist()))
            return super()._resource_apply_sparse(grad, var, indices, apply_state)

    twin = Twin([np.linspace(-1, 1, 12).astype(np.float32).reshape(4, 3)], "default",
                ours=Counting(learning_rate=0.1), keras=KerasNadam(learning_rate=0.1))
    grad = IndexedSlices(np.arange(9, dtype=np.float32).reshape(3, 3), np.array([2, 0, 2]),
                         (4, 3))
    for _ in range(3):
        twin.step([grad])
        twin.check()
    assert calls == [[0, 2]] * 3


def test_hooks_written_without_apply_state():
    seen = []

    class Plain(Nadam):
        def _resource_apply_dense(self, grad, var):
            seen.append(("dense", var.name))
            var.assign_sub(0.5 * grad)

        def _resource_apply_sparse(self, grad, var, indices):
            seen.append(("sparse", var.name, list(indices)))
            var.value[indices] -= grad

    dense = Variable(np.ones(2, np.float32), name="d")
    sparse = Variable(np.zeros((3, 2), np.float32), name="s")
    opt = Plain()
    grad = IndexedSlices(np.ones((3, 2), np.float32), np.array([0, 2, 0]), (3, 2))
    opt.apply_gradients([(np.ones(2, np.float32), dense), (grad, sparse)])
    assert seen == [("dense", "d"), ("sparse", "s", [0, 2])]
    assert dense.numpy().tolist() == [0.5, 0.5]
    assert sparse.numpy().tolist() == [[-2.0, -2.0], [0.0, 0.0], [-1.0, -1.0]]


def test_overridden_aggregate_gradients_has_tf23s_signature():
    class Doubling(Nadam):
        def _aggregate_gradients(self, grads_and_vars):
            return [(2 * g, v) for g, v in grads_and_vars]

    class KerasDoubling(KerasNadam):
        def _aggregate_gradients(self, grads_and_vars):
            return [(2 * g, v) for g, v in grads_and_vars]

    twin = Twin([np.linspace(0, 1, 5).astype(np.float32)], "default",
                ours=Doubling(), keras=KerasDoubling())
    for _ in range(3):
        twin.step([np.full(5, 0.01, np.float32)])
        twin.check()


def test_an_aggregate_hook_returning_garbage_changes_nothing():
    class Broken(Nadam):
        def _aggregate_gradients(self, grads_and_vars):
            return [(np.ones(7, np.float32), v) for _, v in grads_and_vars]

    w = Variable(np.ones(3, np.float32), name="w")
    opt = Broken()
    with pytest.raises(ValueError, match="'w'"):
        opt.apply_gradients([(np.ones(3, np.float32), w)])
    assert opt.weights == [] and w.numpy().tolist() == [1.0, 1.0, 1.0]


# --- schedules -----------------------------------------------------------------------------------
def test_cosine_decay_with_a_warmup_only_as_keras():
    from tf_keras.optimizers.schedules import CosineDecay as KerasCosineDecay

    ours = CosineDecay(0.0, 0, warmup_target=10, warmup_steps=1500)
    theirs = KerasCosineDecay(0.0, 0, warmup_target=10, warmup_steps=1500)
    for step in (0, 1, 750, 1499):
        assert np.float32(ours(step)).tobytes() == theirs(step).numpy().tobytes()
    assert float(ours(750)) == 5.0


# --- strict inputs -----------------------------------------------------------------------------
def test_masked_arrays_are_refused():
    w = Variable(np.ones(3, np.float32), name="w")
    opt = Nadam()
    masked = np.ma.masked_array(np.ones(3, np.float32), mask=[0, 1, 0])
    with pytest.raises(TypeError, match="masked"):
        opt.apply_gradients([(masked, w)])
    with pytest.raises(TypeError, match="masked"):
        opt.apply_gradients([(np.ones(3, np.float32), masked)])
    assert opt.weights == []


@pytest.mark.parametrize("kwargs, error, word", [
    ({"learning_rate": True}, TypeError, "learning_rate"),
    ({"beta_1": False}, TypeError, "beta_1"),
    ({"clipnorm": float("inf")}, ValueError, "clipnorm"),
    ({"global_clipnorm": float("inf")}, ValueError, "global_clipnorm"),
    ({"decay": float("inf")}, ValueError, "decay"),
    ({"epsilon": float("inf")}, ValueError, "epsilon"),
])
def test_strict_hyperparameters(kwargs, error, word):
    with pytest.raises(error, match=word):
        Nadam(**kwargs)


@pytest.mark.parametrize("dtype, name, value", [
    (np.float32, "beta_2", 0.99999999),
    (np.float32, "beta_1", 0.999999999),
    (np.float16, "beta_2", 0.9999),
])
def test_a_beta_that_is_one_in_the_variables_dtype(dtype, name, value):
    w = Variable(np.ones(3, dtype), name="w")
    opt = Nadam(**{name: value})
    with pytest.raises(ValueError, match=f"{name}.*1.0"):
        opt.apply_gradients([(np.ones(3, dtype), w)])
    assert opt.weights == [] and w.numpy().tolist() == [1.0, 1.0, 1.0]
    # A Python number goes through float32 as in Keras, where it is 1.0 too (Keras gives NaN);
    # a NumPy float64 stays float64, which holds it below 1.
    if np.float32(value) == 1:
        with pytest.raises(ValueError, match=name):
            Nadam(**{name: value}).apply_gradients([(np.ones(3), Variable(np.ones(3)))])
    fine = Variable(np.ones(3, np.float64))
    Nadam(**{name: np.float64(value)}).apply_gradients([(np.ones(3), fine)])
    assert np.isfinite(fine.numpy()).all()


def test_indexed_slices_dense_shape_and_repr():
    with pytest.raises(TypeError, match="dense_shape"):
        IndexedSlices(np.ones((1, 3)), [0], dense_shape=(4.7, 3))
    with pytest.raises(ValueError, match="dense_shape"):
        IndexedSlices(np.ones((1, 3)), [0], dense_shape=(-1, 3))
    assert "indices=1" in repr(IndexedSlices(np.ones(3), 5, (6, 3)))
    assert IndexedSlices(np.ones((1, 3)), [0], np.array([4, 3])).dense_shape == (4, 3)


def test_hyper_views_behave_like_keras_hyper_variables():
    opt = nadam.Nadam(learning_rate=0.01, beta_1=0.8)
    keras = KerasNadam(learning_rate=0.01, beta_1=0.8)
    assert opt.lr.numpy().tobytes() == keras.lr.numpy().tobytes()
    assert opt.beta_1 == 0.8 and float(opt.beta_1) == float(keras.beta_1.numpy())
    opt.lr = 2.0
    assert float(opt.learning_rate) == 2.0
    with pytest.raises(ValueError, match="learning_rate"):
        opt.lr.assign(-1.0)
    assert float(opt.lr) == 2.0
