"""Unit tests for `nadam.schedules`: hand-computed values, configs, serialization, errors.

The expected numbers below come from the formulas worked out by hand; comparisons use a float32
relative tolerance since the schedules compute in float32. Agreement with Keras itself, bit for
bit, is checked against the live oracle in tests/conformance/test_schedules_oracle.py.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from typing import Any

import numpy as np
import pytest

from nadam import schedules, tf_math
from nadam.schedules import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
    PolynomialDecay,
)

F32_RTOL = 3e-7


def values_at(schedule: LearningRateSchedule, steps: list[int]) -> list[float]:
    return [float(schedule(step)) for step in steps]


def assert_schedule(schedule: LearningRateSchedule, expected: dict[int, float]) -> None:
    got = values_at(schedule, list(expected))
    np.testing.assert_allclose(got, list(expected.values()), rtol=F32_RTOL, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Values worked out by hand.


def test_exponential_decay_values() -> None:
    schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    # 0.1 * 0.5 ** (step / 10)
    assert_schedule(
        schedule, {0: 0.1, 5: 0.1 * math.sqrt(0.5), 10: 0.05, 15: 0.0353553391, 30: 0.0125}
    )


def test_exponential_decay_staircase_values() -> None:
    schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert_schedule(schedule, {0: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 20: 0.025, 35: 0.0125})


def test_piecewise_constant_values() -> None:
    schedule = PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
    assert_schedule(schedule, {0: 1.0, 100: 1.0, 101: 0.5, 200: 0.5, 201: 0.1, 10**6: 0.1})
    assert float(schedule(100.5)) == 0.5


def test_piecewise_constant_float_boundary_against_integer_step() -> None:
    # Keras converts the boundaries to the step's dtype: 1.5 becomes 1 for an integer step.
    schedule = PiecewiseConstantDecay([1.5], [1.0, 2.0])
    assert float(schedule(1)) == 1.0
    assert float(schedule(2)) == 2.0
    assert float(schedule(1.25)) == 1.0
    assert float(schedule(1.75)) == 2.0


def test_piecewise_constant_without_boundaries_is_constant() -> None:
    schedule = PiecewiseConstantDecay([], [0.25])
    assert values_at(schedule, [0, 1, 10**9]) == [0.25, 0.25, 0.25]


def test_polynomial_decay_values() -> None:
    schedule = PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0, power=2.0)
    # (1 - min(step, 10) / 10) ** 2
    assert_schedule(schedule, {0: 1.0, 2: 0.64, 5: 0.25, 10: 0.0, 20: 0.0})


def test_polynomial_decay_default_end_and_power() -> None:
    schedule = PolynomialDecay(0.1, decay_steps=100)
    # (0.1 - 0.0001) * (1 - step / 100) + 0.0001
    assert_schedule(schedule, {0: 0.1, 50: 0.05005, 100: 0.0001, 1000: 0.0001})


def test_polynomial_decay_cycle_values() -> None:
    schedule = PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0, cycle=True)
    # The horizon is the next multiple of 10 at or above the step (10 at step 0).
    assert_schedule(schedule, {0: 1.0, 5: 0.5, 10: 0.0, 11: 0.45, 15: 0.25, 20: 0.0, 25: 1 / 6})


def test_inverse_time_decay_values() -> None:
    schedule = InverseTimeDecay(1.0, decay_steps=10, decay_rate=1.0)
    # 1 / (1 + step / 10)
    assert_schedule(schedule, {0: 1.0, 5: 2 / 3, 10: 0.5, 30: 0.25, 90: 0.1})


def test_inverse_time_decay_staircase_values() -> None:
    schedule = InverseTimeDecay(1.0, decay_steps=10, decay_rate=0.5, staircase=True)
    assert_schedule(schedule, {0: 1.0, 9: 1.0, 10: 1 / 1.5, 25: 0.5})


def test_cosine_decay_values() -> None:
    schedule = CosineDecay(1.0, decay_steps=10, alpha=0.1)
    # 0.9 * 0.5 * (1 + cos(pi * min(step, 10) / 10)) + 0.1
    expected = {0: 1.0, 5: 0.55, 10: 0.1, 20: 0.1}
    expected[2] = 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)) + 0.1
    assert_schedule(schedule, expected)


def test_cosine_decay_warmup_values() -> None:
    schedule = CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=4)
    # Linear 0 -> 1 over 4 steps, then cosine from 1 to 0 over the next 10.
    got = values_at(schedule, [0, 1, 2, 4, 9, 14, 100])
    np.testing.assert_allclose(got, [0.0, 0.25, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-7)


def test_cosine_decay_restarts_values() -> None:
    schedule = CosineDecayRestarts(1.0, first_decay_steps=10, t_mul=2.0, m_mul=0.5)
    # Periods [0, 10), [10, 30), [30, 70) with peaks 1, 0.5, 0.25.
    got = values_at(schedule, [0, 5, 10, 20, 30, 50, 70])
    np.testing.assert_allclose(got, [1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125], atol=1e-7)


def test_cosine_decay_restarts_constant_period_and_alpha() -> None:
    schedule = CosineDecayRestarts(1.0, first_decay_steps=10, t_mul=1.0, m_mul=0.5, alpha=0.2)
    # 0.8 * m_mul ** i * 0.5 * (1 + cos(pi * fraction)) + 0.2
    got = values_at(schedule, [0, 5, 10, 15, 20])
    np.testing.assert_allclose(got, [1.0, 0.6, 0.6, 0.4, 0.4], rtol=F32_RTOL)


# ---------------------------------------------------------------------------------------------
# Dtypes and steps.

ALL_SCHEDULES = [
    ExponentialDecay(0.1, 100, 0.9),
    ExponentialDecay(0.1, 100, 0.9, staircase=True),
    PiecewiseConstantDecay([10, 50], [0.1, 0.05, 0.01]),
    PolynomialDecay(0.1, 100, 0.001, power=0.5),
    PolynomialDecay(0.1, 30, cycle=True),
    InverseTimeDecay(0.1, 100, 0.5),
    InverseTimeDecay(0.1, 100, 0.5, staircase=True),
    CosineDecay(0.1, 100, alpha=0.01),
    CosineDecay(0.01, 100, alpha=0.01, warmup_target=0.1, warmup_steps=20),
    CosineDecayRestarts(0.1, 20),
    CosineDecayRestarts(0.1, 20, t_mul=1.0, m_mul=0.9, alpha=0.1),
    CosineDecayRestarts(0.1, 7, t_mul=1.5, m_mul=0.8),
]


def schedule_id(schedule: LearningRateSchedule) -> str:
    return type(schedule).__name__


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_python_float_rate_computes_in_float32(schedule: LearningRateSchedule) -> None:
    for step in (0, np.int64(3), np.int32(70), np.float32(25.0), np.float64(400.0), np.array(9)):
        result = schedule(step)
        assert type(result) is np.float32


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_float64_rate_computes_in_float64(schedule: LearningRateSchedule) -> None:
    config = schedule.get_config()
    if "values" in config:
        config["values"] = [np.float64(value) for value in config["values"]]
    else:
        config["initial_learning_rate"] = np.float64(config["initial_learning_rate"])
    float64_schedule = type(schedule).from_config(config)
    results = [float64_schedule(step) for step in range(0, 200, 7)]
    assert all(type(result) is np.float64 for result in results)
    # The same schedule in float32 agrees to float32 precision.
    np.testing.assert_allclose(
        results, [float(schedule(step)) for step in range(0, 200, 7)], rtol=2e-6, atol=1e-9
    )


def test_float64_rate_keeps_float64_through_config_round_trip() -> None:
    schedule = ExponentialDecay(np.float64(0.1), 10, 0.9)
    rebuilt = ExponentialDecay.from_config(schedule.get_config())
    assert rebuilt(3).dtype == np.float64
    assert rebuilt(3) == schedule(3)


def test_integer_rate_computes_in_float32() -> None:
    # Keras would compute in int32; a learning rate of 1 means 1.0.
    schedule = ExponentialDecay(1, 10, 0.5)
    assert schedule(10) == np.float32(0.5)
    assert schedule(10).dtype == np.float32


def test_float16_rate_computes_in_float16() -> None:
    schedule = CosineDecay(np.float16(0.5), 10)
    assert schedule(5).dtype == np.float16
    assert schedule(5) == np.float16(0.25)


def test_step_may_be_a_zero_dimensional_array_or_array_like() -> None:
    schedule = InverseTimeDecay(1.0, 10, 1.0)

    class Counter:
        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return np.asarray(10, dtype=np.int64)

    assert schedule(np.array(10, dtype=np.int64)) == np.float32(0.5)
    assert schedule(Counter()) == np.float32(0.5)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_non_scalar_step_is_rejected(schedule: LearningRateSchedule) -> None:
    with pytest.raises(ValueError, match="step"):
        schedule(np.array([1, 2]))
    with pytest.raises(TypeError, match="step"):
        schedule("3")


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_negative_step_is_computed_quietly(schedule: LearningRateSchedule) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in (-1, -5, -1000):
            schedule(step)


def test_negative_step_matches_keras_formula() -> None:
    # 0.1 * 0.5 ** (-10 / 10): Keras extrapolates backwards; so do we.
    assert ExponentialDecay(0.1, 10, 0.5)(-10) == np.float32(0.2)
    # Keras's cycle multiplier is ceil(-3 / 10) = -0, and -3 / -0 is +inf.
    assert PolynomialDecay(0.1, 10, cycle=True)(-3) == -np.inf


def test_subnormal_results_are_flushed_to_zero() -> None:
    # TensorFlow's CPU kernels flush subnormals to zero; IEEE arithmetic would give 2**-127.
    schedule = ExponentialDecay(1.0, 1, 0.5)
    assert schedule(126) == np.float32(2.0**-126)
    assert schedule(127) == 0.0
    assert ExponentialDecay(np.float64(1.0), 1, 0.5)(1022) == 2.0**-1022
    assert ExponentialDecay(np.float64(1.0), 1, 0.5)(1023) == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's C library")
def test_c_float_math_is_available_on_linux() -> None:
    # Without it float32 cosine schedules can differ from Keras by hundreds of units.
    assert tf_math.C_FLOAT_MATH is not None


def test_float32_transcendentals_fall_back_to_rounded_float64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = [float(s(step)) for s in ALL_SCHEDULES for step in range(0, 300, 11)]
    monkeypatch.setattr(tf_math, "C_FLOAT_MATH", None)
    fallback = [float(s(step)) for s in ALL_SCHEDULES for step in range(0, 300, 11)]
    np.testing.assert_allclose(fallback, reference, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Configs and serialization.

EXPECTED_KEYS = {
    ExponentialDecay: ["initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"],
    PiecewiseConstantDecay: ["boundaries", "values", "name"],
    PolynomialDecay: [
        "initial_learning_rate",
        "decay_steps",
        "end_learning_rate",
        "power",
        "cycle",
        "name",
    ],
    InverseTimeDecay: ["initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"],
    CosineDecay: [
        "initial_learning_rate",
        "decay_steps",
        "alpha",
        "name",
        "warmup_target",
        "warmup_steps",
    ],
    CosineDecayRestarts: [
        "initial_learning_rate",
        "first_decay_steps",
        "t_mul",
        "m_mul",
        "alpha",
        "name",
    ],
}


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_get_config_has_keras_keys(schedule: LearningRateSchedule) -> None:
    assert list(schedule.get_config()) == EXPECTED_KEYS[type(schedule)]


def test_get_config_values_are_as_given() -> None:
    schedule = CosineDecay(0.1, 1000, alpha=0.05, name="cos", warmup_target=0.5, warmup_steps=10)
    assert schedule.get_config() == {
        "initial_learning_rate": 0.1,
        "decay_steps": 1000,
        "alpha": 0.05,
        "name": "cos",
        "warmup_target": 0.5,
        "warmup_steps": 10,
    }
    piecewise = PiecewiseConstantDecay((np.int64(5), 10), np.array([0.5, 0.25, 0.125]))
    config = piecewise.get_config()
    assert config == {"boundaries": [5, 10], "values": [0.5, 0.25, 0.125], "name": None}
    assert type(config["boundaries"][0]) is int


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_from_config_round_trip_gives_equal_outputs(schedule: LearningRateSchedule) -> None:
    rebuilt = type(schedule).from_config(schedule.get_config())
    assert type(rebuilt) is type(schedule)
    steps = range(0, 500)
    assert values_at(rebuilt, list(steps)) == values_at(schedule, list(steps))


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=schedule_id)
def test_serialize_round_trip_through_json(schedule: LearningRateSchedule) -> None:
    serialized = schedules.serialize(schedule)
    assert serialized == {"class_name": type(schedule).__name__, "config": schedule.get_config()}
    rebuilt = schedules.deserialize(json.loads(json.dumps(serialized)))
    assert type(rebuilt) is type(schedule)
    steps = list(range(0, 300, 3))
    assert values_at(rebuilt, steps) == values_at(schedule, steps)


def test_serialize_numpy_arguments_are_json_serializable() -> None:
    schedule = PolynomialDecay(np.float32(0.5), np.int64(100), np.float64(0.01), np.array(2.0))
    text = json.dumps(schedules.serialize(schedule))
    rebuilt = schedules.deserialize(json.loads(text))
    assert values_at(rebuilt, list(range(120))) == values_at(schedule, list(range(120)))


def test_deserialize_accepts_keras_form() -> None:
    keras_form = {
        "module": "keras.optimizers.schedules",
        "class_name": "InverseTimeDecay",
        "config": {
            "initial_learning_rate": 1.0,
            "decay_steps": 10,
            "decay_rate": 1.0,
            "staircase": False,
            "name": None,
        },
        "registered_name": None,
    }
    schedule = schedules.deserialize(keras_form)
    assert isinstance(schedule, InverseTimeDecay)
    assert schedule(10) == np.float32(0.5)


class Halving(LearningRateSchedule):
    def __init__(self, initial_learning_rate: float, every: int = 10) -> None:
        self.initial_learning_rate = initial_learning_rate
        self.every = every

    def __call__(self, step: Any) -> np.floating:
        return np.float32(self.initial_learning_rate) * np.float32(0.5) ** (int(step) // self.every)

    def get_config(self) -> dict[str, Any]:
        return {"initial_learning_rate": self.initial_learning_rate, "every": self.every}


def test_custom_objects() -> None:
    serialized = schedules.serialize(Halving(0.8, every=5))
    assert serialized == {
        "class_name": "Halving",
        "config": {"initial_learning_rate": 0.8, "every": 5},
    }
    with pytest.raises(ValueError, match="Halving"):
        schedules.deserialize(serialized)
    rebuilt = schedules.deserialize(serialized, custom_objects={"Halving": Halving})
    assert isinstance(rebuilt, Halving)
    assert float(rebuilt(10)) == pytest.approx(0.2)
    # Keras writes a custom class with module None and its registered name.
    keras_form = {"module": None, "registered_name": "Halving", **serialized}
    assert isinstance(
        schedules.deserialize(keras_form, custom_objects={"Halving": Halving}), Halving
    )


def test_custom_objects_take_precedence_over_built_ins() -> None:
    config = {"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 1.0}}
    rebuilt = schedules.deserialize(config, custom_objects={"ExponentialDecay": Halving})
    assert isinstance(rebuilt, Halving)


def test_deserialize_unknown_class_names_it() -> None:
    with pytest.raises(ValueError, match="NoSuchDecay"):
        schedules.deserialize({"class_name": "NoSuchDecay", "config": {}})


@pytest.mark.parametrize("bad", ["ExponentialDecay", None, 3, ["ExponentialDecay", {}]])
def test_deserialize_non_dict_is_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        schedules.deserialize(bad)


def test_deserialize_without_class_name_is_value_error() -> None:
    with pytest.raises(ValueError, match="class_name"):
        schedules.deserialize({"config": {}})


def test_serialize_rejects_non_schedules() -> None:
    with pytest.raises(TypeError):
        schedules.serialize(0.1)  # type: ignore[arg-type]


def test_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        LearningRateSchedule()  # type: ignore[abstract]

    class NoConfig(LearningRateSchedule):
        def __call__(self, step: Any) -> np.floating:
            return np.float32(0.1)

    with pytest.raises(TypeError):
        NoConfig()  # type: ignore[abstract]


def test_repr_shows_config() -> None:
    text = repr(ExponentialDecay(0.1, 10, 0.5, name="exp"))
    assert text.startswith("ExponentialDecay(initial_learning_rate=0.1, decay_steps=10")
    assert "name='exp'" in text


# ---------------------------------------------------------------------------------------------
# Argument checks.

BAD_ARGUMENTS = [
    (
        ExponentialDecay,
        dict(initial_learning_rate=-0.1, decay_steps=10, decay_rate=0.9),
        "initial_learning_rate",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=float("nan"), decay_steps=10, decay_rate=0.9),
        "initial_learning_rate",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.9),
        "decay_steps",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=-5, decay_rate=0.9),
        "decay_steps",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=float("inf"), decay_rate=0.9),
        "decay_steps",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-0.5),
        "decay_rate",
    ),
    (
        InverseTimeDecay,
        dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.5),
        "decay_steps",
    ),
    (
        InverseTimeDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-1.0),
        "decay_rate",
    ),
    (
        InverseTimeDecay,
        dict(initial_learning_rate=-1.0, decay_steps=10, decay_rate=1.0),
        "initial_learning_rate",
    ),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps"),
    (
        PolynomialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=-1e-4),
        "end_learning_rate",
    ),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=10, power=-1.0), "power"),
    (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps"),
    (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=-0.1), "alpha"),
    (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=1.5), "alpha"),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=-1.0),
        "warmup_target",
    ),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=0.2, warmup_steps=-1),
        "warmup_steps",
    ),
    (CosineDecay, dict(initial_learning_rate=-0.1, decay_steps=10), "initial_learning_rate"),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=0),
        "first_decay_steps",
    ),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=0.5),
        "t_mul",
    ),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=10, m_mul=-1.0),
        "m_mul",
    ),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=10, alpha=2.0),
        "alpha",
    ),
    (PiecewiseConstantDecay, dict(boundaries=[10, 5], values=[1.0, 0.5, 0.1]), "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=[10, 10], values=[1.0, 0.5, 0.1]), "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=[10], values=[1.0, -0.5]), r"values\[1\]"),
    (
        PiecewiseConstantDecay,
        dict(boundaries=[float("nan")], values=[1.0, 0.5]),
        r"boundaries\[0\]",
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    BAD_ARGUMENTS,
    ids=[f"{cls.__name__}-{argument}-{i}" for i, (cls, _, argument) in enumerate(BAD_ARGUMENTS)],
)
def test_bad_argument_value_error_names_it(
    cls: type[LearningRateSchedule], kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


def test_piecewise_length_mismatch_names_both_lengths() -> None:
    with pytest.raises(ValueError, match="boundaries") as error:
        PiecewiseConstantDecay([10, 20], [1.0, 0.5])
    message = str(error.value)
    assert "length 2" in message
    assert "values" in message
    with pytest.raises(ValueError, match=r"length 1\b.*length 4\b"):
        PiecewiseConstantDecay([10], [1.0, 0.5, 0.25, 0.125])


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: ExponentialDecay("0.1", 10, 0.9), "initial_learning_rate"),
        (lambda: ExponentialDecay(0.1, 10, 0.9, staircase="yes"), "staircase"),
        (lambda: ExponentialDecay(0.1, True, 0.9), "decay_steps"),
        (lambda: PolynomialDecay(0.1, 10, cycle=1), "cycle"),
        (lambda: PolynomialDecay(0.1, 10, power=[1.0]), "power"),
        (lambda: CosineDecay(0.1, 10, name=3), "name"),
        (lambda: PiecewiseConstantDecay(10, [0.1]), "boundaries"),
        (lambda: PiecewiseConstantDecay([10], "ab"), "values"),
        (lambda: PiecewiseConstantDecay(["10"], [0.1, 0.2]), "boundaries"),
    ],
)
def test_bad_argument_type_error_names_it(make: Any, argument: str) -> None:
    with pytest.raises(TypeError, match=argument):
        make()
