"""`nadam.schedules` against the live Keras 2 oracle, `tf_keras.optimizers.schedules` 2.21.

For random arguments (float32 and float64 schedules) and many steps, including 0, the decay
horizon, steps far past it and negative steps, every schedule must return the same dtype as
Keras and a value within 2 units in the last place, and `get_config()` must equal Keras's.
Keras's serialized form must deserialize into a schedule with the same values.

Calling a TensorFlow schedule costs about a millisecond per step (eager ops), so the number of
examples and steps is kept modest.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import math  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# tf_keras runs on TensorFlow; importing it here makes a missing oracle an error, not a skip.
import tensorflow as tf  # noqa: E402, F401
import tf_keras  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nadam import schedules  # noqa: E402

K = tf_keras.optimizers.schedules

MAX_ULP = 2
EXAMPLES = settings(max_examples=25, deadline=None)

# How the optimizer (or a user) may hand over a step. Kept below 2**31 so np.int32 holds it.
STEP_KINDS: list[Callable[[int], Any]] = [int, np.int64, np.int32, np.float32, np.float64]


def plain(value: Any) -> Any:
    """A config value as plain Python, so Keras's and ours compare by value."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return plain(value.tolist())
    return value


def ulp_distance(a: np.generic, b: np.generic) -> int:
    """Units in the last place between two floats of the same dtype (0 for two nans)."""
    if np.isnan(a) and np.isnan(b):
        return 0
    if a == b:
        return 0
    if not (np.isfinite(a) and np.isfinite(b)):
        return 2**62
    bits = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    sign = 1 << (8 * a.dtype.itemsize - 1)

    def ordered(x: np.generic) -> int:
        i = int(np.asarray(x).view(bits))
        return i if i >= 0 else -(i + sign)

    return abs(ordered(a) - ordered(b))


def compare(ours: schedules.LearningRateSchedule, theirs: Any, steps: Sequence[Any]) -> int:
    """Assert agreement on every step; return the largest ulp distance seen."""
    worst = 0
    for step in steps:
        expected = theirs(step).numpy()
        got = ours(step)
        assert isinstance(got, np.generic) and got.dtype == expected.dtype, (step, got, expected)
        distance = ulp_distance(got, expected)
        assert distance <= MAX_ULP, (
            f"{type(ours).__name__}{ours.get_config()} at step {step!r}: "
            f"ours {got!r}, Keras {expected!r} ({distance} ulp)"
        )
        worst = max(worst, distance)
    return worst


def check(cls_name: str, kwargs: dict[str, Any], steps: Sequence[Any]) -> None:
    ours = getattr(schedules, cls_name)(**kwargs)
    theirs = getattr(K, cls_name)(**kwargs)
    assert ours.get_config() == plain(theirs.get_config())
    compare(ours, theirs, steps)
    # Keras's serialized form (with its extra 'module' and 'registered_name' keys).
    rebuilt = schedules.deserialize(K.serialize(theirs))
    assert type(rebuilt) is type(ours)
    compare(rebuilt, theirs, steps[:8])


# ---------------------------------------------------------------------------------------------
# Strategies.


def reals(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats in [low, high], with magnitudes that float32 cannot hold as normal numbers made 0.

    TensorFlow's kernels treat subnormal inputs as zero wherever a kernel touches them (a cast,
    a comparison) but not where a value merely passes through; `nadam.schedules` flushes only
    results, so arguments below float32's smallest normal number are out of scope.
    """
    tiny = float(np.finfo(np.float32).tiny)
    return st.floats(low, high).map(lambda x: 0.0 if abs(x) < tiny else x)


float64_rate = st.booleans()
learning_rates = st.floats(1e-6, 1.0)
positive_steps = st.one_of(st.integers(1, 5000), st.floats(0.5, 5000.0))


def rate(value: float, as_float64: bool) -> Any:
    # A Python float is Keras's float32 schedule; a NumPy float64 makes a float64 schedule.
    return np.float64(value) if as_float64 else value


@st.composite
def steps_around(draw: st.DrawFn, horizons: Sequence[float]) -> list[Any]:
    """Steps: 0 and 1, each horizon and its neighbours, far past them, random, negative."""
    kind = draw(st.sampled_from(STEP_KINDS))
    last = max(horizons)
    fixed = [0, 1, -1]
    for horizon in horizons:
        h = math.floor(horizon)
        fixed += [h - 1, h, h + 1]
    fixed += [math.floor(3 * last), math.floor(10 * last) + 7, 10**6]
    drawn = draw(st.lists(st.integers(-int(last), int(4 * last) + 2), min_size=8, max_size=8))
    return [kind(step) for step in fixed + drawn]


# ---------------------------------------------------------------------------------------------
# Randomized comparisons.


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    decay_steps=positive_steps,
    decay_rate=reals(0.0, 1.5),
    staircase=st.booleans(),
    data=st.data(),
)
def test_exponential_decay(
    lr: float, f64: bool, decay_steps: float, decay_rate: float, staircase: bool, data: Any
) -> None:
    kwargs = dict(
        initial_learning_rate=rate(lr, f64),
        decay_steps=decay_steps,
        decay_rate=decay_rate,
        staircase=staircase,
    )
    check("ExponentialDecay", kwargs, data.draw(steps_around([decay_steps])))


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    decay_steps=positive_steps,
    decay_rate=reals(0.0, 10.0),
    staircase=st.booleans(),
    data=st.data(),
)
def test_inverse_time_decay(
    lr: float, f64: bool, decay_steps: float, decay_rate: float, staircase: bool, data: Any
) -> None:
    kwargs = dict(
        initial_learning_rate=rate(lr, f64),
        decay_steps=decay_steps,
        decay_rate=decay_rate,
        staircase=staircase,
        name="inverse",
    )
    check("InverseTimeDecay", kwargs, data.draw(steps_around([decay_steps])))


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    decay_steps=positive_steps,
    end=reals(0.0, 1e-3),
    power=reals(0.0, 5.0),
    cycle=st.booleans(),
    data=st.data(),
)
def test_polynomial_decay(
    lr: float,
    f64: bool,
    decay_steps: float,
    end: float,
    power: float,
    cycle: bool,
    data: Any,
) -> None:
    kwargs = dict(
        initial_learning_rate=rate(lr, f64),
        decay_steps=decay_steps,
        end_learning_rate=end,
        power=power,
        cycle=cycle,
    )
    check("PolynomialDecay", kwargs, data.draw(steps_around([decay_steps, 2 * decay_steps])))


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    decay_steps=positive_steps,
    alpha=reals(0.0, 1.0),
    data=st.data(),
)
def test_cosine_decay(lr: float, f64: bool, decay_steps: float, alpha: float, data: Any) -> None:
    kwargs = dict(initial_learning_rate=rate(lr, f64), decay_steps=decay_steps, alpha=alpha)
    check("CosineDecay", kwargs, data.draw(steps_around([decay_steps])))


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    decay_steps=positive_steps,
    alpha=reals(0.0, 1.0),
    target=st.floats(1e-5, 1.0),
    warmup_steps=st.one_of(st.integers(0, 1000), reals(0.0, 1000.0)),
    data=st.data(),
)
def test_cosine_decay_with_warmup(
    lr: float,
    f64: bool,
    decay_steps: float,
    alpha: float,
    target: float,
    warmup_steps: float,
    data: Any,
) -> None:
    kwargs = dict(
        initial_learning_rate=rate(lr, f64),
        decay_steps=decay_steps,
        alpha=alpha,
        warmup_target=rate(target, f64),
        warmup_steps=warmup_steps,
    )
    horizons = [max(warmup_steps, 1.0), warmup_steps + decay_steps]
    check("CosineDecay", kwargs, data.draw(steps_around(horizons)))


@EXAMPLES
@given(
    lr=learning_rates,
    f64=float64_rate,
    first_decay_steps=positive_steps,
    t_mul=st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(1.0, 3.0)),
    m_mul=reals(0.0, 1.5),
    alpha=reals(0.0, 1.0),
    data=st.data(),
)
def test_cosine_decay_restarts(
    lr: float,
    f64: bool,
    first_decay_steps: float,
    t_mul: float,
    m_mul: float,
    alpha: float,
    data: Any,
) -> None:
    kwargs = dict(
        initial_learning_rate=rate(lr, f64),
        first_decay_steps=first_decay_steps,
        t_mul=t_mul,
        m_mul=m_mul,
        alpha=alpha,
    )
    # The first restarts, where the period index comes from a floor of a ratio of logs.
    starts = [
        first_decay_steps * (k if t_mul == 1.0 else (t_mul**k - 1) / (t_mul - 1))
        for k in range(1, 5)
    ]
    check("CosineDecayRestarts", kwargs, data.draw(steps_around(starts)))


@EXAMPLES
@given(
    first=st.one_of(st.integers(-10, 100), reals(-10.0, 100.0)),
    gaps=st.lists(st.one_of(st.integers(1, 500), st.floats(0.5, 500.0)), max_size=4),
    values=st.lists(reals(0.0, 1.0), min_size=6, max_size=6),
    f64=float64_rate,
    data=st.data(),
)
def test_piecewise_constant_decay(
    first: float, gaps: list[float], values: list[float], f64: bool, data: Any
) -> None:
    boundaries = [first]
    for gap in gaps:
        boundaries.append(boundaries[-1] + gap)
    kwargs = dict(
        boundaries=boundaries, values=[rate(v, f64) for v in values[: len(boundaries) + 1]]
    )
    steps = data.draw(steps_around([abs(b) + 1 for b in boundaries]))
    # Half-steps and exact float boundaries test the comparison in the step's dtype.
    steps += [b + 0.5 for b in boundaries] + [float(b) for b in boundaries]
    check("PiecewiseConstantDecay", kwargs, steps)


# ---------------------------------------------------------------------------------------------
# Fixed cases for the quirks.

QUIRK_CASES = [
    # A float64 schedule still passes Python-float arguments through float32 (tf.cast).
    (
        "ExponentialDecay",
        dict(initial_learning_rate=np.float64(0.1), decay_steps=10, decay_rate=0.96),
    ),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=np.float64(0.1), first_decay_steps=7, alpha=0.1),
    ),
    # ...but CosineDecay forms 1 - alpha in Python and converts it straight to float64.
    ("CosineDecay", dict(initial_learning_rate=np.float64(0.1), decay_steps=10, alpha=0.1)),
    # Cycling divides by the raw decay_steps, here a float that float32 cannot hold.
    ("PolynomialDecay", dict(initial_learning_rate=np.float64(0.1), decay_steps=10.1, cycle=True)),
    # Subnormal results: TensorFlow flushes them to zero.
    ("ExponentialDecay", dict(initial_learning_rate=1.0, decay_steps=1, decay_rate=0.5)),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=1e-3, decay_steps=767, decay_rate=0.4288, staircase=True),
    ),
    # Warmup of zero steps: the decay starts at once; negative steps divide by zero.
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=0.2)),
    ("PiecewiseConstantDecay", dict(boundaries=[1.5, 3], values=[0.1, 0.01, 0.001])),
    ("PiecewiseConstantDecay", dict(boundaries=[16777217], values=[0.1, 0.01])),
]


@pytest.mark.parametrize(("cls_name", "kwargs"), QUIRK_CASES)
@pytest.mark.parametrize("kind", STEP_KINDS + [float], ids=lambda kind: kind.__name__)
def test_quirks(cls_name: str, kwargs: dict[str, Any], kind: Callable[[int], Any]) -> None:
    steps = [0, 1, 2, 3, 5, 7, 10, 11, 126, 127, 128, 76700, 16777216, 16777217, 16777218]
    steps += [-1, -3, -10]
    ours = getattr(schedules, cls_name)(**kwargs)
    theirs = getattr(K, cls_name)(**kwargs)
    assert ours.get_config() == plain(theirs.get_config())
    assert compare(ours, theirs, [kind(step) for step in steps]) == 0


def test_default_configs_match() -> None:
    pairs = [
        ("ExponentialDecay", (0.1, 100, 0.9)),
        ("PiecewiseConstantDecay", ([10, 20], [0.1, 0.01, 0.001])),
        ("PolynomialDecay", (0.1, 100)),
        ("InverseTimeDecay", (0.1, 100, 0.5)),
        ("CosineDecay", (0.1, 100)),
        ("CosineDecayRestarts", (0.1, 100)),
    ]
    for cls_name, args in pairs:
        ours = getattr(schedules, cls_name)(*args)
        theirs = getattr(K, cls_name)(*args)
        assert list(ours.get_config()) == list(theirs.get_config()), cls_name
        assert ours.get_config() == plain(theirs.get_config()), cls_name
        serialized = schedules.serialize(ours)
        keras_serialized = K.serialize(theirs)
        assert serialized["class_name"] == keras_serialized["class_name"]
        assert serialized["config"] == plain(keras_serialized["config"])
