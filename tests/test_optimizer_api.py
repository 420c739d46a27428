"""The Keras OptimizerV2 API of `Nadam` (SPEC sections 3 and 4): state, hyperparameters, config."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import nadam
from nadam import Nadam, Variable
from nadam.schedules import ExponentialDecay, LearningRateSchedule

G3 = np.array([0.1, -0.5, 2.0], np.float32)


def _x(dtype=np.float32, name="x"):
    return Variable(np.array([1.0, -2.0, 3.0], dtype), name=name)


def _run_spec(spec_step, x0, grads, lrs, **hypers):
    """Apply the SPEC formula for consecutive steps with per-step learning rates."""
    x, m, v, cache = np.asarray(x0, np.float64), 0.0 * x0, 0.0 * x0, 1.0
    for it, (g, lr) in enumerate(zip(grads, lrs, strict=True)):
        x, m, v, cache = spec_step(x, g, m, v, cache, it, lr=lr, **hypers)
    return x, m, v, cache


# --- weights and slots ---------------------------------------------------------------------


def test_weights_are_empty_before_build():
    opt = Nadam()
    assert opt.weights == []
    assert opt.variables() == []
    assert opt.get_weights() == []
    assert opt.momentum_cache is None


def test_weights_order_iterations_cache_all_m_then_all_v():
    x1 = _x(name="x1")
    x2 = Variable(np.ones((2, 2), np.float32), name="x2")
    opt = Nadam()
    opt.apply_gradients([(G3, x1), (np.ones((2, 2), np.float32), x2)])
    expected = [
        opt.iterations,
        opt.momentum_cache,
        opt.get_slot(x1, "m"),
        opt.get_slot(x2, "m"),
        opt.get_slot(x1, "v"),
        opt.get_slot(x2, "v"),
    ]
    assert [id(w) for w in opt.weights] == [id(w) for w in expected]
    assert [id(w) for w in opt.variables()] == [id(w) for w in expected]
    assert [w.name for w in opt.weights[2:]] == ["x1/m", "x2/m", "x1/v", "x2/v"]
    shapes = [w.shape for w in opt.get_weights()]
    assert shapes == [(), (), (3,), (2, 2), (3,), (2, 2)]

    # A variable first seen in a later call appends its m, then its v.
    x3 = Variable(np.zeros(4, np.float32), name="x3")
    opt.apply_gradients([(np.ones(4, np.float32), x3), (G3, x1)])
    assert [id(w) for w in opt.weights] == [id(w) for w in expected] + [
        id(opt.get_slot(x3, "m")),
        id(opt.get_slot(x3, "v")),
    ]


def test_spec_reference_run_weights_and_trajectory():
    # SPEC section 2: printed by the Keras 2 oracle, float32, defaults, five identical steps.
    x = _x()
    opt = Nadam()
    opt.apply_gradients([(G3, x)])
    np.testing.assert_array_equal(x.numpy(), np.float32([0.99894357, -1.9989436, 2.9989436]))
    for _ in range(4):
        opt.apply_gradients([(G3, x)])
    np.testing.assert_array_equal(x.numpy(), np.float32([0.9959506, -1.9959507, 2.9959507]))
    it, cache, m, v = opt.get_weights()
    assert it.dtype == np.int64 and it.shape == () and it == 5
    assert cache.dtype == np.float32 and cache.shape == ()
    assert cache == np.float32(0.018498035)
    np.testing.assert_array_equal(m, np.float32([0.04095101, -0.20475505, 0.8190202]))
    np.testing.assert_array_equal(v, np.float32([4.9899463e-05, 1.2474864e-03, 1.9959783e-02]))


def test_build_then_set_weights_resumes_an_uninterrupted_run():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(3).astype(np.float32) for _ in range(6)]
    x = _x()
    reference = Nadam(learning_rate=0.01)
    for g in grads[:3]:
        reference.apply_gradients([(g, x)])
    saved_state, saved_x = reference.get_weights(), x.numpy()
    for g in grads[3:]:
        reference.apply_gradients([(g, x)])

    y = Variable(saved_x, name="y")
    resumed = Nadam(learning_rate=0.01)
    resumed.build([y])
    assert len(resumed.weights) == 4
    assert int(resumed.iterations.value) == 0
    resumed.set_weights(saved_state)
    assert int(resumed.iterations.value) == 3
    for g in grads[3:]:
        resumed.apply_gradients([(g, y)])
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    for got, want in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_build_creates_state_without_a_step():
    x = _x()
    opt = Nadam()
    opt.build([x])
    np.testing.assert_array_equal(x.numpy(), _x().numpy())
    it, cache, m, v = opt.get_weights()
    assert it == 0 and cache == 1.0
    np.testing.assert_array_equal(m, np.zeros(3))
    np.testing.assert_array_equal(v, np.zeros(3))
    opt.build([x])  # building again adds nothing
    assert len(opt.weights) == 4


def test_get_weights_returns_copies():
    x = _x()
    opt = Nadam()
    opt.apply_gradients([(G3, x)])
    weights = opt.get_weights()
    before = [w.copy() for w in weights]
    for w in weights:
        w[...] = 123
    for got, want in zip(opt.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_slot_api():
    x = _x()
    opt = Nadam()
    opt.apply_gradients([(G3, x)])
    m = opt.get_slot(x, "m")
    assert opt.add_slot(x, "m") is m
    assert opt.get_slot_names() == ["m", "v"]
    # First step from zero slots: m = (1 - beta_1) g, v = (1 - beta_2) g^2, in float32.
    np.testing.assert_allclose(m.numpy(), (1 - np.float32(0.9)) * G3, rtol=1e-7)
    np.testing.assert_allclose(opt.get_slot(x, "v").numpy(), (1 - np.float32(0.999)) * G3 * G3,
                               rtol=1e-7)
    extra = opt.add_slot(x, "extra", initializer="ones")
    assert extra.dtype == np.float32 and extra.shape == (3,)
    np.testing.assert_array_equal(extra.numpy(), np.ones(3))
    assert opt.weights[-1] is extra
    assert opt.get_slot_names() == ["m", "v", "extra"]
    custom = opt.add_slot(x, "c", initializer=lambda shape, dtype: np.full(shape, 2.0, dtype))
    np.testing.assert_array_equal(custom.numpy(), [2.0, 2.0, 2.0])


def test_add_weight():
    opt = Nadam()
    w = opt.add_weight("counter", shape=(2,), dtype="float64", initializer="ones")
    assert isinstance(w, Variable)
    assert w.dtype == np.float64 and w.shape == (2,)
    np.testing.assert_array_equal(w.numpy(), [1.0, 1.0])
    assert opt.weights == [opt.iterations, w]
    scalar = opt.add_weight("s")
    assert scalar.dtype == np.float32 and scalar.shape == () and scalar.numpy() == 0
    assert opt.weights[-1] is scalar
    with pytest.raises(ValueError, match="glorot"):
        opt.add_weight("bad", initializer="glorot")


# --- hyperparameters -----------------------------------------------------------------------


def test_hyperparameters_are_attributes():
    opt = Nadam(learning_rate=0.01, beta_1=0.8, beta_2=0.99)
    assert opt.learning_rate == 0.01
    assert opt.lr == 0.01
    assert opt.beta_1 == 0.8 and opt.beta_2 == 0.99
    assert opt.decay == 0.0
    assert opt.epsilon == 1e-7 and opt.schedule_decay == 0.004
    assert "lr" in dir(opt) and "beta_1" in dir(opt)
    opt.lr = 0.5
    assert opt.learning_rate == 0.5
    opt.learning_rate = 0.25
    assert opt.lr == 0.25
    opt.beta_1 = 0.5
    assert opt.beta_1 == 0.5
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = opt.no_such_thing


def test_lr_kwarg_wins_with_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="lr"):
        opt = Nadam(learning_rate=0.1, lr=0.5)
    assert opt.learning_rate == 0.5


def test_assigned_learning_rate_is_used_by_the_next_step(spec_step):
    x = _x(np.float64)
    opt = Nadam(learning_rate=0.1)
    opt.apply_gradients([(G3.astype(np.float64), x)])
    opt.learning_rate = 0.3
    opt.apply_gradients([(G3.astype(np.float64), x)])
    want = _run_spec(spec_step, _x(np.float64).numpy(), [G3, G3], [0.1, 0.3])[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-13)


@pytest.mark.parametrize(
    "lr", [0.05, np.float32(0.05), np.array(0.05), np.array(0.05, np.float32)],
    ids=["float", "np.float32", "0-d float64", "0-d float32"],
)
def test_number_and_zero_d_array_learning_rates(spec_step, lr):
    x = _x()
    Nadam(learning_rate=lr).apply_gradients([(G3, x)])
    want = _run_spec(spec_step, _x().numpy(), [G3], [0.05])[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-6)
    assert Nadam(learning_rate=lr).get_config()["learning_rate"] == pytest.approx(0.05)


def test_callable_learning_rate_is_called_once_per_step(spec_step):
    values = iter([0.1, 0.02, 0.3])
    calls = []

    def lr():
        calls.append(1)
        return next(values)

    x = _x(np.float64)
    opt = Nadam(learning_rate=lr)
    g = G3.astype(np.float64)
    for expected_calls in (1, 2, 3):
        opt.apply_gradients([(g, x)])
        assert len(calls) == expected_calls
    want = _run_spec(spec_step, _x(np.float64).numpy(), [g, g, g], [0.1, 0.02, 0.3])[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-13)


def test_callable_betas(spec_step):
    x = _x(np.float64)
    opt = Nadam(learning_rate=0.1, beta_1=lambda: 0.8, beta_2=lambda: 0.99)
    g = G3.astype(np.float64)
    opt.apply_gradients([(g, x)])
    opt.apply_gradients([(g, x)])
    want = _run_spec(spec_step, _x(np.float64).numpy(), [g, g], [0.1, 0.1], beta_1=0.8,
                     beta_2=0.99)
    np.testing.assert_allclose(x.numpy(), want[0], rtol=1e-13)
    np.testing.assert_allclose(opt.get_slot(x, "m").numpy(), want[1], rtol=1e-13)
    np.testing.assert_allclose(opt.momentum_cache.numpy(), want[3], rtol=1e-13)


def test_schedule_is_called_with_iterations_before_the_increment():
    seen = []

    class Recording(LearningRateSchedule):
        def __call__(self, step):
            seen.append(int(step))
            return 0.01

        def get_config(self):
            return {}

    x = _x()
    opt = Nadam(learning_rate=Recording())
    for _ in range(3):
        opt.apply_gradients([(G3, x)])
    assert seen == [0, 1, 2]


def test_exponential_decay_schedule_drives_the_steps(spec_step):
    schedule = ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    x = _x(np.float64)
    opt = Nadam(learning_rate=schedule)
    g = G3.astype(np.float64)
    for _ in range(3):
        opt.apply_gradients([(g, x)])
    lrs = [np.float64(schedule(step)) for step in range(3)]
    np.testing.assert_allclose(lrs, [0.1, 0.05, 0.025], rtol=1e-6)
    want = _run_spec(spec_step, _x(np.float64).numpy(), [g, g, g], lrs)[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-13)


def test_decay_is_time_inverse_learning_rate_decay(spec_step):
    # SPEC 4.1: lr_t = lr / (1 + decay * iterations), iterations before the increment.
    # Like the rate, decay goes through float32 first: Keras's `tf.cast(0.1, float64)` makes a
    # float32 constant of the Python float before the cast (checked against the oracle in
    # test_custom_optimizer.py).
    x = _x(np.float64)
    opt = Nadam(learning_rate=0.1, decay=0.1)
    g = G3.astype(np.float64)
    lr32 = np.float64(np.float32(0.1))  # np.float64: the spec step must not round it again
    for _ in range(4):
        opt.apply_gradients([(g, x)])
    decay32 = float(np.float32(0.1))
    hand_lrs = [lr32 / (1 + decay32 * it) for it in range(4)]  # 0.1, 0.0909, 0.0833, 0.0769
    want = _run_spec(spec_step, _x(np.float64).numpy(), [g] * 4, hand_lrs)[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-14)

    # The first step is undecayed; the second uses exactly two thirds of the rate.
    plain, decayed = _x(np.float64), _x(np.float64)
    no_decay, with_decay = Nadam(learning_rate=0.1), Nadam(learning_rate=0.1, decay=0.5)
    no_decay.apply_gradients([(g, plain)])
    with_decay.apply_gradients([(g, decayed)])
    np.testing.assert_array_equal(plain.numpy(), decayed.numpy())
    start = plain.numpy()
    no_decay.apply_gradients([(g, plain)])
    with_decay.apply_gradients([(g, decayed)])
    np.testing.assert_allclose(decayed.numpy() - start, (plain.numpy() - start) / 1.5,
                               rtol=1e-12)


def test_schedule_decay_changes_the_momentum_schedule(spec_step):
    x_default, x_keras3 = _x(), _x()
    default, keras3 = Nadam(), Nadam(schedule_decay=1.0)
    default.apply_gradients([(G3, x_default)])
    keras3.apply_gradients([(G3, x_keras3)])
    # mu_1 = 0.9 * (1 - 0.5 * 0.96 ** (schedule_decay * 1)) = 0.450073473..., in float32
    np.testing.assert_allclose(default.momentum_cache.numpy(), 0.45007347359, rtol=1e-7)
    np.testing.assert_allclose(keras3.momentum_cache.numpy(), 0.9 * (1 - 0.5 * 0.96), rtol=1e-6)
    assert not np.array_equal(x_default.numpy(), x_keras3.numpy())
    want = spec_step(_x().numpy(), G3, 0, 0, 1.0, 0, schedule_decay=1.0)[0]
    np.testing.assert_allclose(x_keras3.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("epsilon", [None, 0, 0.0])
def test_epsilon_none_or_zero_means_1e7(epsilon):
    opt = Nadam(epsilon=epsilon)
    assert opt.epsilon == 1e-7
    assert opt.get_config()["epsilon"] == 1e-7


def test_epsilon_is_added_outside_the_root():
    # With a tiny gradient the denominator is |g| + epsilon (first step, bias-corrected v).
    x = Variable(np.zeros(1), name="x")
    g = np.array([1e-7])
    opt = Nadam(learning_rate=1.0, epsilon=1e-7)
    opt.apply_gradients([(g, x)])
    mu1, mu2 = (float(np.float32(0.9)) * (1 - 0.5 * float(np.float32(0.96)) ** (0.004 * t))
                for t in (1, 2))
    m_bar = g + mu2 * 0.1 * g / (1 - mu1 * mu2)
    np.testing.assert_allclose(x.numpy(), -m_bar / (1e-7 + 1e-7), rtol=1e-6)


# --- iterations and the momentum cache ----------------------------------------------------


def test_iterations_count_and_dtype():
    x = _x()
    opt = Nadam()
    assert opt.iterations.dtype == np.int64 and opt.iterations.shape == ()
    assert [opt.apply_gradients([(G3, x)]) for _ in range(3)] == [1, 2, 3]
    assert opt.iterations.numpy() == 3 and opt.iterations.dtype == np.int64
    assert isinstance(opt.apply_gradients([(G3, x)]), int)


def test_iterations_settable_before_weights_exist(spec_step):
    opt = Nadam()
    opt.iterations = 5
    assert opt.iterations.dtype == np.int64 and int(opt.iterations.value) == 5
    x = _x(np.float64)
    assert opt.apply_gradients([(G3.astype(np.float64), x)]) == 6
    want = spec_step(_x(np.float64).numpy(), G3, 0, 0, 1.0, 5)
    np.testing.assert_allclose(x.numpy(), want[0], rtol=1e-13)
    np.testing.assert_allclose(opt.momentum_cache.numpy(), want[3], rtol=1e-13)

    counter = Variable(np.int64(2), name="shared_iter")
    other = Nadam()
    other.iterations = counter
    assert other.iterations is counter
    with pytest.raises(RuntimeError, match="iterations"):
        opt.iterations = 0
    assert int(opt.iterations.value) == 6


def test_momentum_cache_dtype_is_the_first_variables():
    a64 = Variable(np.ones(2, np.float64), name="a64")
    b32 = Variable(np.ones(2, np.float32), name="b32")
    opt = Nadam()
    opt.apply_gradients([(np.ones(2), a64), (np.ones(2, np.float32), b32)])
    assert opt.momentum_cache.dtype == np.float64
    opt = Nadam()
    opt.apply_gradients([(np.ones(2, np.float32), b32), (np.ones(2), a64)])
    assert opt.momentum_cache.dtype == np.float32


def test_momentum_cache_advances_once_per_call_with_mixed_dtypes(spec_step):
    a64 = Variable(np.array([1.0, -2.0]), name="a64")
    b32 = Variable(np.array([0.5, 4.0], np.float32), name="b32")
    g64, g32 = np.array([0.3, -0.1]), np.array([1.0, -2.0], np.float32)
    opt = Nadam(learning_rate=0.01)
    # Call 1: only the float64 variable. Call 2: only float32, which does not share the
    # cache's dtype; the cache must still advance once, and b32 use prod = mu_1 * mu_2.
    opt.apply_gradients([(g64, a64)])
    opt.apply_gradients([(g32, b32)])
    mu = [spec_step(np.zeros(1), np.zeros(1), 0, 0, 1.0, it)[3] for it in range(3)]
    np.testing.assert_allclose(opt.momentum_cache.numpy(), mu[0] * mu[1], rtol=1e-13)
    want_b = spec_step(np.array([0.5, 4.0]), g32, 0, 0, mu[0], 1, lr=0.01)[0]
    np.testing.assert_allclose(b32.numpy(), want_b, rtol=1e-6)
    # Call 3: both dtypes in one call advance the cache once, not twice.
    opt.apply_gradients([(g32, b32), (g64, a64)])
    np.testing.assert_allclose(opt.momentum_cache.numpy(), mu[0] * mu[1] * mu[2], rtol=1e-13)
    assert int(opt.iterations.value) == 3


def test_apply_gradients_accepts_generators_and_plain_arrays(spec_step):
    raw = np.array([1.0, -2.0, 3.0])
    opt = Nadam()
    opt.apply_gradients((g, v) for g, v in [(G3.astype(np.float64), raw)])
    want = spec_step(np.array([1.0, -2.0, 3.0]), G3, 0, 0, 1.0, 0)[0]
    np.testing.assert_allclose(raw, want, rtol=1e-13)
    assert opt.get_slot(raw, "m").shape == (3,)


def test_python_list_gradient_takes_the_variable_dtype():
    x = _x()
    opt = Nadam()
    opt.apply_gradients([([0.1, -0.5, 2.0], x)])
    np.testing.assert_array_equal(x.numpy(), np.float32([0.99894357, -1.9989436, 2.9989436]))


# --- config --------------------------------------------------------------------------------


def test_default_config_has_keras_keys_plus_schedule_decay():
    assert Nadam().get_config() == {
        "name": "Nadam",
        "learning_rate": 0.001,
        "decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
        "schedule_decay": 0.004,
    }


def _trains_identically(a: Nadam, b: Nadam) -> None:
    xa, xb = _x(), _x()
    for _ in range(3):
        a.apply_gradients([(G3, xa)])
        b.apply_gradients([(G3, xb)])
    np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def test_config_round_trip_is_lossless_and_json():
    opt = Nadam(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6, name="mine",
                decay=0.1, schedule_decay=0.01, clipnorm=1.5, clipvalue=0.25)
    config = opt.get_config()
    assert config == {
        "name": "mine", "learning_rate": 0.02, "decay": 0.1, "beta_1": 0.8, "beta_2": 0.99,
        "epsilon": 1e-6, "schedule_decay": 0.01, "clipnorm": 1.5, "clipvalue": 0.25,
    }
    restored = Nadam.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    assert restored.name == "mine" and restored.clipnorm == 1.5 and restored.clipvalue == 0.25
    _trains_identically(opt, restored)


def test_config_round_trip_with_schedule_and_global_clipnorm():
    schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    opt = Nadam(learning_rate=schedule, global_clipnorm=2.0)
    config = opt.get_config()
    json.dumps(config)
    assert config["global_clipnorm"] == 2.0
    assert config["learning_rate"]["class_name"] == "ExponentialDecay"
    assert config["learning_rate"]["config"]["initial_learning_rate"] == 0.1
    restored = Nadam.from_config(json.loads(json.dumps(config)))
    assert isinstance(restored.learning_rate, ExponentialDecay)
    assert restored.get_config() == config
    _trains_identically(opt, restored)


def test_config_of_array_and_callable_hyperparameters_is_plain():
    opt = Nadam(learning_rate=np.array(0.5), beta_1=lambda: 0.75)
    config = opt.get_config()
    assert type(config["learning_rate"]) is float and config["learning_rate"] == 0.5
    assert config["beta_1"] == 0.75
    json.dumps(config)


def test_from_keras2_config_maps_decay_to_schedule_decay():
    keras2 = {"name": "Nadam", "learning_rate": 0.001, "decay": 0.004, "beta_1": 0.9,
              "beta_2": 0.999, "epsilon": 1e-07}
    opt = Nadam.from_config(keras2)
    assert opt.schedule_decay == 0.004 and opt.decay == 0.0
    old = Nadam.from_config({**keras2, "decay": 0.02, "is_legacy_optimizer": True})
    assert old.schedule_decay == 0.02 and old.decay == 0.0
    _trains_identically(opt, Nadam())


def test_from_config_accepts_lr_and_is_legacy_optimizer():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = Nadam.from_config({"lr": 0.05, "is_legacy_optimizer": False,
                                 "schedule_decay": 0.004})
    assert opt.learning_rate == 0.05
    assert "is_legacy_optimizer" not in opt.get_config()


def test_public_names():
    assert set(nadam.__all__) >= {"Nadam", "Optimizer", "Variable", "IndexedSlices"}
    assert issubclass(nadam.Nadam, nadam.Optimizer)
    assert repr(Nadam()) == "<Nadam 'Nadam' iterations=0>"


def test_float16_variables(spec_step):
    x = Variable(np.array([1.0, -2.0, 3.0], np.float16), name="half")
    opt = Nadam(learning_rate=0.01)
    g = np.array([0.1, -0.5, 2.0], np.float16)
    for _ in range(3):
        opt.apply_gradients([(g, x)])
    assert [w.dtype for w in opt.get_weights()] == [np.int64] + [np.float16] * 3
    want = _run_spec(spec_step, np.array([1.0, -2.0, 3.0]), [g] * 3, [0.01] * 3)[0]
    np.testing.assert_allclose(x.numpy(), want, rtol=2e-3)
