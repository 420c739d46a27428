"""Every bad input raises a documented exception naming the culprit and changes nothing.

SPEC sections 3 and 4.4: each check runs before any variable, slot or counter changes. Each
failing call runs on a fresh optimizer (which must still have no weights) and on one that has
already taken a step; `_fails_cleanly` snapshots the whole state around the call.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import autograd.numpy as anp
import numpy as np
import pytest

from nadam import IndexedSlices, Nadam, Variable, optimizers
from nadam.schedules import LearningRateSchedule


def _state(opt: Nadam, variables: list[Any]) -> dict[str, Any]:
    return {
        "variables": [np.array(v, copy=True) for v in variables],
        "weight_ids": [id(w) for w in opt.weights],
        "weights": opt.get_weights(),
        "iterations": int(opt.iterations.value),
        "slot_names": opt.get_slot_names(),
        "hypers": {k: opt._hyper[k] for k in opt._hyper},
    }


def _assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["weight_ids"] == before["weight_ids"]
    assert after["iterations"] == before["iterations"]
    assert after["slot_names"] == before["slot_names"]
    assert after["hypers"] == before["hypers"]
    for key in ("variables", "weights"):
        assert len(after[key]) == len(before[key])
        for got, want in zip(after[key], before[key], strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def _fails_cleanly(
    opt: Nadam,
    variables: list[Any],
    call: Callable[[], Any],
    error: type[Exception],
    *names: str,
) -> None:
    """`call()` raises `error` whose message contains every `names`; the state is untouched."""
    fresh = not opt.weights
    before = _state(opt, variables)
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value.args[0]) if raised.value.args else str(raised.value)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    _assert_same_state(before, _state(opt, variables))
    if fresh:
        assert opt.weights == []


@pytest.fixture(params=["fresh", "stepped"])
def setup(request) -> tuple[Nadam, Variable, Variable]:
    """An optimizer with variables x (3,) and y (4, 2), float32; stepped once or not."""
    x = Variable(np.array([1.0, -2.0, 3.0], np.float32), name="x")
    y = Variable(np.arange(8, dtype=np.float32).reshape(4, 2), name="y")
    opt = Nadam(learning_rate=0.01)
    if request.param == "stepped":
        opt.apply_gradients([(np.full(3, 0.1, np.float32), x), (np.ones((4, 2), np.float32), y)])
    return opt, x, y


def _gx() -> np.ndarray:
    return np.array([0.5, -0.5, 1.0], np.float32)


def _gy() -> np.ndarray:
    return np.full((4, 2), 0.25, np.float32)


# --- construction and hyperparameter assignment --------------------------------------------


def test_unknown_kwarg():
    with pytest.raises(TypeError) as raised:
        Nadam(momentum=0.9)
    assert str(raised.value).startswith(
        "Unexpected keyword argument passed to optimizer: momentum. Allowed kwargs are "
    )
    for allowed in ("clipnorm", "clipvalue", "decay", "global_clipnorm", "lr", "schedule_decay"):
        assert allowed in str(raised.value)


@pytest.mark.parametrize(
    "key", ["clipnorm", "clipvalue", "global_clipnorm", "decay", "schedule_decay", "lr"]
)
def test_negative_kwarg(key):
    with pytest.raises(ValueError, match=re.escape(f"Expected {key} >= 0, received: -0.5")):
        Nadam(**{key: -0.5})


def test_clipnorm_with_global_clipnorm():
    with pytest.raises(ValueError, match="clipnorm.*global_clipnorm"):
        Nadam(clipnorm=1.0, global_clipnorm=1.0)


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": np.array(-1.0)}, "learning_rate"),
        ({"beta_1": 1.0}, "beta_1"),
        ({"beta_1": -0.1}, "beta_1"),
        ({"beta_2": 1.0}, "beta_2"),
        ({"beta_2": 1.5}, "beta_2"),
        ({"epsilon": -1e-8}, "epsilon"),
        ({"schedule_decay": float("nan")}, "schedule_decay"),
        ({"clipnorm": float("nan")}, "clipnorm"),
    ],
)
def test_out_of_range_hyperparameter_at_construction(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        Nadam(**kwargs)


@pytest.mark.parametrize("kwargs, culprit", [
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"beta_1": [0.9, 0.8]}, "beta_1"),
    ({"epsilon": "tiny"}, "epsilon"),
    ({"clipvalue": "1"}, "clipvalue"),
])
def test_non_numeric_hyperparameter_at_construction(kwargs, culprit):
    with pytest.raises((TypeError, ValueError), match=culprit):
        Nadam(**kwargs)


@pytest.mark.parametrize("name", [None, "", 3])
def test_bad_optimizer_name(name):
    with pytest.raises(ValueError, match="name"):
        Nadam(name=name)


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("learning_rate", -0.1),
        ("lr", -1.0),
        ("beta_1", 1.0),
        ("beta_2", -0.5),
        ("epsilon", -1.0),
        ("decay", -0.1),
        ("schedule_decay", -1.0),
        ("clipnorm", -1.0),
        ("clipvalue", -1.0),
        ("global_clipnorm", -1.0),
    ],
)
def test_bad_attribute_assignment_changes_nothing(setup, attribute, value):
    opt, x, y = setup
    culprit = "learning_rate" if attribute == "lr" else attribute
    config = opt.get_config()
    _fails_cleanly(opt, [x, y], lambda: setattr(opt, attribute, value), ValueError, culprit)
    assert opt.get_config() == config


def test_assigning_clipnorm_while_global_clipnorm_is_set():
    opt = Nadam(global_clipnorm=1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        opt.clipnorm = 1.0
    assert opt.clipnorm is None and opt.global_clipnorm == 1.0
    opt = Nadam(clipnorm=1.0)
    with pytest.raises(ValueError, match="global_clipnorm"):
        opt.global_clipnorm = 1.0
    assert opt.global_clipnorm is None and opt.clipnorm == 1.0


def test_name_is_read_only():
    opt = Nadam(name="first")
    with pytest.raises(AttributeError):
        opt.name = ""
    assert opt.name == "first"


# --- hyperparameters that go bad at step time ----------------------------------------------


@pytest.mark.parametrize(
    "make_opt, error, culprit",
    [
        (lambda: Nadam(learning_rate=lambda: -0.1), ValueError, "learning_rate"),
        (lambda: Nadam(learning_rate=lambda: np.ones(2)), ValueError, "learning_rate"),
        (lambda: Nadam(learning_rate=lambda: "x"), TypeError, "learning_rate"),
        (lambda: Nadam(beta_1=lambda: 1.0), ValueError, "beta_1"),
        (lambda: Nadam(beta_2=lambda: float("nan")), ValueError, "beta_2"),
    ],
    ids=["negative lr", "array lr", "string lr", "beta_1 = 1", "nan beta_2"],
)
def test_callable_hyperparameter_fails_at_step_time(make_opt, error, culprit):
    x = Variable(np.ones(3, np.float32), name="x")
    opt = make_opt()
    _fails_cleanly(opt, [x], lambda: opt.apply_gradients([(_gx(), x)]), error, culprit)


def test_callable_going_bad_after_steps_changes_nothing():
    values = iter([0.1, -0.1])
    x = Variable(np.ones(3, np.float32), name="x")
    opt = Nadam(learning_rate=lambda: next(values))
    opt.apply_gradients([(_gx(), x)])
    _fails_cleanly(opt, [x], lambda: opt.apply_gradients([(_gx(), x)]), ValueError,
                   "learning_rate", "-0.1")


def test_schedule_returning_negative_changes_nothing():
    class Negative(LearningRateSchedule):
        def __call__(self, step):
            return np.float32(-1.0)

        def get_config(self):
            return {}

    x = Variable(np.ones(3, np.float32), name="x")
    opt = Nadam(learning_rate=Negative())
    _fails_cleanly(opt, [x], lambda: opt.apply_gradients([(_gx(), x)]), ValueError,
                   "learning_rate")


# --- malformed grads_and_vars --------------------------------------------------------------


def test_empty_grads_and_vars(setup):
    opt, x, y = setup
    _fails_cleanly(opt, [x, y], lambda: opt.apply_gradients([]), ValueError, "empty")


def test_all_gradients_none(setup):
    opt, x, y = setup
    _fails_cleanly(
        opt, [x, y], lambda: opt.apply_gradients([(None, x), (None, y)]), ValueError,
        "No gradients provided for any variable: ['x', 'y']",
    )


def test_none_gradient_warns_and_applies_the_rest(setup):
    opt, x, y = setup
    had_y_slots = bool(opt.weights)
    y_before, iterations = y.numpy(), int(opt.iterations.value)
    expected = Variable(x.numpy())
    twin = Nadam(learning_rate=0.01)
    if had_y_slots:
        twin.build([expected])
        twin.set_weights(opt.get_weights()[:2] + [opt.get_weights()[2], opt.get_weights()[4]])
    twin.apply_gradients([(_gx(), expected)])
    with pytest.warns(UserWarning) as record:
        assert opt.apply_gradients([(_gx(), x), (None, y)]) == iterations + 1
    messages = [str(w.message) for w in record]
    assert "Gradients do not exist for variables ['y'] when minimizing the loss." in messages
    np.testing.assert_array_equal(y.numpy(), y_before)
    np.testing.assert_array_equal(x.numpy(), expected.numpy())
    if not had_y_slots:
        with pytest.raises(KeyError):
            opt.get_slot(y, "m")


@pytest.mark.parametrize(
    "make_pairs, culprit",
    [
        (lambda x, y: [x], "Item 0"),
        (lambda x, y: [(_gx(), x), (_gy(), y, 1)], "Item 1"),
        (lambda x, y: [(_gx(), x), (_gy(),)], "Item 1"),
        (lambda x, y: {x: _gx()}, "dict"),
        (lambda x, y: "gx", "str"),
        (lambda x, y: None, "NoneType"),
        (lambda x, y: [(_gx(), x), "gy"], "Item 1"),
        (lambda x, y: [(_gx(), x), (_gy(), [1.0, 2.0])], "list"),
        (lambda x, y: [(_gx(), x), (np.float32(1.0), 2.0)], "float"),
        (lambda x, y: [(object(), x)], "object"),
        (lambda x, y: [(IndexedSlices(np.ones((1, 2), np.float32), ["a"]), y)], "<U1"),
    ],
    ids=["not a pair", "3-tuple", "1-tuple", "dict", "string", "None", "string item",
         "list variable", "float variable", "object gradient", "string indices"],
)
def test_malformed_pairs(setup, make_pairs, culprit):
    opt, x, y = setup
    pairs = make_pairs(x, y)
    _fails_cleanly(opt, [x, y], lambda: opt.apply_gradients(pairs), TypeError, culprit)


def test_same_variable_twice(setup):
    opt, x, y = setup
    _fails_cleanly(
        opt, [x, y], lambda: opt.apply_gradients([(_gx(), x), (_gy(), y), (_gx(), x)]),
        ValueError, "'x'", "twice",
    )


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64, np.complex128, np.bool_])
def test_integer_complex_and_bool_variables(setup, dtype):
    opt, x, y = setup
    bad = Variable(np.ones(3, dtype=dtype), name="counts")
    _fails_cleanly(
        opt, [x, y, bad], lambda: opt.apply_gradients([(_gx(), x), (np.ones(3, dtype), bad)]),
        TypeError, "'counts'", np.dtype(dtype).name,
    )


def test_integer_ndarray_variable(setup):
    opt, x, y = setup
    raw = np.arange(3)
    _fails_cleanly(opt, [x, y, raw], lambda: opt.apply_gradients([(_gx(), x), (raw, raw)]),
                   TypeError, "int64")


def test_read_only_ndarray(setup):
    opt, x, y = setup
    frozen = np.ones(3, np.float32)
    frozen.flags.writeable = False
    _fails_cleanly(opt, [x, y, frozen],
                   lambda: opt.apply_gradients([(_gx(), x), (_gx(), frozen)]),
                   ValueError, "read-only")


def test_gradient_shape_mismatch(setup):
    opt, x, y = setup
    _fails_cleanly(
        opt, [x, y], lambda: opt.apply_gradients([(np.ones((4,), np.float32), x)]),
        ValueError, "'x'", "(4,)", "(3,)",
    )


def test_gradient_dtype_mismatch(setup):
    opt, x, y = setup
    _fails_cleanly(
        opt, [x, y], lambda: opt.apply_gradients([(_gx().astype(np.float64), x)]),
        ValueError, "'x'", "float64", "float32",
    )


@pytest.mark.parametrize(
    "bad_last",
    [
        lambda: np.ones((2, 4), np.float32),
        lambda: np.ones((4, 2), np.float16),
        lambda: IndexedSlices(np.ones((1, 2), np.float32), [4]),
    ],
    ids=["shape", "dtype", "sparse index"],
)
def test_bad_last_pair_leaves_earlier_variables_untouched(setup, bad_last):
    opt, x, y = setup
    z = Variable(np.zeros(2, np.float64), name="z")
    _fails_cleanly(
        opt, [x, y, z],
        lambda: opt.apply_gradients([(_gx(), x), (np.ones(2), z), (bad_last(), y)]),
        (ValueError, IndexError), "'y'",
    )
    if opt.weights:
        with pytest.raises(KeyError):  # no slot was created for z either
            opt.get_slot(z, "m")


# --- sparse gradients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_grad, error, culprits",
    [
        (lambda: IndexedSlices(np.ones((2, 2), np.float32), [0, -1]), IndexError, ["-1", "4"]),
        (lambda: IndexedSlices(np.ones((2, 2), np.float32), [1, 4]), IndexError, ["4 is out"]),
        (lambda: IndexedSlices(np.ones((1, 2), np.float32), [0.0]), TypeError, ["float64"]),
        (lambda: IndexedSlices(np.ones((2, 2), np.float32), [[0], [1]]), ValueError, ["1-D"]),
        (lambda: IndexedSlices(np.ones((2, 3), np.float32), [0, 1]), ValueError, ["(2, 3)",
                                                                                   "(2, 2)"]),
        (lambda: IndexedSlices(np.ones((2,), np.float32), [0, 1]), ValueError, ["(2,)"]),
        (lambda: IndexedSlices(np.ones((2, 2), np.float64), [0, 1]), ValueError, ["float64"]),
        (lambda: IndexedSlices(np.ones((1, 2), np.float32), [0], dense_shape=(5, 2)),
         ValueError, ["(5, 2)", "(4, 2)"]),
    ],
    ids=["negative", "too large", "float indices", "2-D indices", "values shape",
         "values rank", "values dtype", "dense_shape"],
)
def test_bad_sparse_gradient(setup, make_grad, error, culprits):
    opt, x, y = setup
    _fails_cleanly(opt, [x, y], lambda: opt.apply_gradients([(_gx(), x), (make_grad(), y)]),
                   error, "'y'", *culprits)


def test_sparse_gradient_for_a_scalar_variable(setup):
    opt, x, y = setup
    s = Variable(np.float32(1.0), name="s")
    grad = IndexedSlices(np.ones((1,), np.float32), [0])
    _fails_cleanly(opt, [x, y, s], lambda: opt.apply_gradients([(grad, s)]), ValueError, "'s'")


# --- set_weights -----------------------------------------------------------------------------


def _stepped() -> tuple[Nadam, Variable, Variable]:
    x = Variable(np.array([1.0, -2.0, 3.0], np.float32), name="x")
    y = Variable(np.ones((4, 2), np.float32), name="y")
    opt = Nadam()
    opt.apply_gradients([(_gx(), x), (_gy(), y)])
    return opt, x, y


def test_set_weights_wrong_length():
    opt, x, y = _stepped()
    weights = opt.get_weights()
    expected = (
        "You called `set_weights(weights)` on optimizer Nadam with a weight list of length 5, "
        "but the optimizer was expecting 6 weights. Provided weights: "
    )
    _fails_cleanly(opt, [x, y], lambda: opt.set_weights(weights[:5]), ValueError, expected)
    fresh = Nadam()
    _fails_cleanly(fresh, [], lambda: fresh.set_weights([np.int64(3)]), ValueError,
                   "with a weight list of length 1, but the optimizer was expecting 0 weights")


def test_set_weights_wrong_shape_in_the_last_entry_writes_nothing():
    opt, x, y = _stepped()
    weights = [w + 1 for w in opt.get_weights()]
    weights[-1] = np.zeros((2, 4), np.float32)
    _fails_cleanly(
        opt, [x, y], lambda: opt.set_weights(weights), ValueError,
        "Optimizer weight shape (4, 2) not compatible with provided weight shape (2, 4)",
    )


def test_set_weights_non_numeric_in_the_last_entry_writes_nothing():
    opt, x, y = _stepped()
    weights = [w + 1 for w in opt.get_weights()]
    weights[-1] = np.full((4, 2), "a")
    _fails_cleanly(opt, [x, y], lambda: opt.set_weights(weights), TypeError, "Weight 5")


def test_set_weights_accepts_a_valid_list():
    opt, x, y = _stepped()
    weights = [w + 1 for w in opt.get_weights()]
    weights[1] = (weights[1] - 1) / 2  # a momentum_cache in [0, 1], as every run has (SPEC 4.8)
    opt.set_weights(weights)
    for got, want in zip(opt.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert opt.iterations.dtype == np.int64 and int(opt.iterations.value) == 2


# --- other errors ----------------------------------------------------------------------------


def test_iterations_assignment_after_build():
    x = Variable(np.ones(3, np.float32), name="x")
    opt = Nadam()
    opt.build([x])
    _fails_cleanly(opt, [x], lambda: setattr(opt, "iterations", 5), RuntimeError, "iterations")
    opt, x, y = _stepped()
    _fails_cleanly(opt, [x, y], lambda: setattr(opt, "iterations", 0), RuntimeError,
                   "iterations")


@pytest.mark.parametrize("value, error", [(-1, ValueError), (1.5, ValueError), ("3", TypeError)])
def test_bad_iterations_value_before_build(value, error):
    opt = Nadam()
    _fails_cleanly(opt, [], lambda: setattr(opt, "iterations", value), error, "iterations")


def test_build_with_bad_variables_creates_nothing():
    x = Variable(np.ones(3, np.float32), name="x")
    ints = Variable(np.arange(3), name="ints")
    opt = Nadam()
    _fails_cleanly(opt, [x, ints], lambda: opt.build([x, ints]), TypeError, "'ints'")
    _fails_cleanly(opt, [x], lambda: opt.build([x, x]), ValueError, "'x'", "twice")


def test_get_slot_missing(setup):
    opt, x, y = setup
    stranger = Variable(np.ones(2, np.float32), name="stranger")
    _fails_cleanly(opt, [x, y], lambda: opt.get_slot(stranger, "m"), KeyError, "'m'",
                   "'stranger'")
    _fails_cleanly(opt, [x, y], lambda: opt.get_slot(x, "velocity"), KeyError, "'velocity'",
                   "'x'")


def test_get_gradients_for_a_variable_the_loss_does_not_read(setup):
    opt, x, y = setup
    _fails_cleanly(
        opt, [x, y], lambda: opt.get_gradients(lambda: anp.sum(x.value**2), [x, y]),
        ValueError, "Variable 'y' has `None` for gradient.",
    )


def test_minimize_with_raw_ndarrays(setup):
    opt, x, y = setup
    raw = np.ones(3, np.float32)
    _fails_cleanly(opt, [x, y, raw], lambda: opt.minimize(lambda: anp.sum(raw**2), [raw]),
                   TypeError, "ndarray")


def test_minimize_with_empty_var_list(setup):
    opt, x, y = setup
    _fails_cleanly(opt, [x, y], lambda: opt.minimize(lambda: 0.0, []), ValueError, "empty")


def test_deserialize_unknown_class():
    with pytest.raises(ValueError, match="Unknown optimizer: 'Adamax'"):
        optimizers.deserialize({"class_name": "Adamax", "config": {}})


@pytest.mark.parametrize("identifier", [42, None, 1.5])
def test_get_uninterpretable_identifier(identifier):
    with pytest.raises(ValueError, match=re.escape(repr(identifier))):
        optimizers.get(identifier)


def test_get_unknown_name():
    with pytest.raises(ValueError, match="'sgd'"):
        optimizers.get("sgd")


def test_no_warning_on_a_clean_step():
    x = Variable(np.ones(3, np.float32), name="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Nadam().apply_gradients([(_gx(), x)])
