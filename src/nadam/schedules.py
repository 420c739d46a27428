"""Keras 2 learning-rate schedules, computed with NumPy.

Each schedule maps the optimizer's step count to a learning rate with the formula, the argument
names and the ``get_config()`` keys of ``tf_keras.optimizers.schedules`` (version 2.21), and it
reproduces Keras's arithmetic operation by operation, in Keras's dtype, so that results agree with
TensorFlow bit for bit where the C library is available (and to a unit or two elsewhere):

* The schedule's dtype is the dtype TensorFlow gives ``initial_learning_rate``: a Python float is
  float32 (Keras's default float), a NumPy float keeps its own dtype. (Python and NumPy integers
  also give float32; Keras would compute in int32 and fail or truncate.)
* Arguments that Keras passes through ``tf.cast`` go through TensorFlow's conversion first, so a
  Python float such as ``decay_rate=0.96`` is rounded to float32 even in a float64 schedule, exactly
  as Keras does.
* ``pow``, ``log`` and ``cos`` are the C library's, as in TensorFlow's scalar kernels: ``powf``,
  ``logf`` and ``cosf`` for float32 (loaded with ctypes; where that fails, the float64 function
  rounded to float32), the double functions through ``math`` for float64. NumPy's own float32
  versions differ from them by a unit on a few percent of inputs.
* A subnormal result is flushed to zero, as TensorFlow's CPU kernels do. (Subnormal *arguments*,
  below about 1.2e-38 in float32, are not emulated: TensorFlow reads them as zero in some kernels
  and not in others.)

Where Keras accepts arguments that can only produce nonsense (a negative learning rate, a zero
``decay_steps`` that it divides by, unsorted ``boundaries``), the constructors raise ``ValueError``
naming the argument instead. Steps are not checked: a negative step is computed as Keras would.

Example:
    >>> from nadam import schedules
    >>> schedule = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> float(schedule(10))
    0.05000000074505806
    >>> schedules.deserialize(schedules.serialize(schedule)).get_config() == schedule.get_config()
    True
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from nadam import checks
from nadam.tf_math import cos as _cos
from nadam.tf_math import flush as _flush
from nadam.tf_math import log as _log
from nadam.tf_math import pow as _pow

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]

#: A real number: Python int or float, a NumPy scalar, or a 0-d array.
Scalar: TypeAlias = int | float | np.integer | np.floating | np.ndarray
#: A step as the optimizer passes it; any object NumPy turns into a 0-d real array also works.
Step: TypeAlias = int | float | np.integer | np.floating | np.ndarray


# --------------------------------------------------------------------------------------------
# Conversions that mirror TensorFlow's, so every intermediate value has Keras's dtype and bits.


def _as_tensor(value: Any) -> np.ndarray:
    """The array `tf.convert_to_tensor(value)` would hold.

    TensorFlow turns a Python float into float32 (not float64 as NumPy does); NumPy values keep
    their dtype. Python ints become int64 here (TF: int32 when they fit), which converts to any
    float dtype identically.
    """
    if isinstance(value, np.generic | np.ndarray):
        return np.asarray(value)
    if isinstance(value, bool):
        return np.asarray(value)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, float):
        return np.asarray(value, dtype=np.float32)
    # Anything else (a Variable, a CPU tensor) is expected to implement __array__.
    return np.asarray(value)


def _cast(value: Any, dtype: np.dtype) -> np.generic:
    """`tf.cast(value, dtype)`: convert the way TensorFlow does first, then change dtype."""
    return _as_tensor(value).astype(dtype)[()]


def _operand(value: Any, dtype: np.dtype) -> np.generic:
    """A Python operand next to a tensor in `x * value`: TF converts it straight to x's dtype."""
    return np.asarray(value, dtype=dtype)[()]


def _float_dtype(value: Any) -> np.dtype:
    """The dtype a schedule computes in, given its learning rate (or piecewise value)."""
    array = _as_tensor(value)
    if np.issubdtype(array.dtype, np.floating):
        return array.dtype
    # Integers would make Keras compute in int32, which truncates or fails; Keras's float wins.
    return np.dtype(np.float32)


def _keras_arithmetic(
    call: Callable[[Any, Step], np.generic],
) -> Callable[[Any, Step], np.floating]:
    """Run a schedule's `__call__` quietly, as TensorFlow does, and flush the result.

    Keras computes inf and nan without warnings (a negative step can divide by zero), so NumPy's
    floating-point warnings are silenced for the duration.
    """

    @functools.wraps(call)
    def wrapper(self: Any, step: Step) -> np.floating:
        with np.errstate(all="ignore"):
            return _flush(call(self, step))

    return wrapper


def _step(step: Step, dtype: np.dtype) -> np.generic:
    """`tf.cast(step, dtype)` for a scalar step."""
    array = _as_tensor(step)
    _check_step_array(step, array)
    return array.astype(dtype)[()]


def _check_step_array(step: Any, array: np.ndarray) -> None:
    if array.ndim != 0:
        raise ValueError(f"`step` must be a scalar, got an array of shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"`step` must be a real number, got {step!r}.")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"`step` must be a real number, got {step!r}.")


# --------------------------------------------------------------------------------------------
# Argument checks: the message always names the argument.


def _check_bool(name: str, value: Any) -> None:
    # A string such as "False" would silently count as true in `if value:`.
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def _check_name(name: Any) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"`name` must be a string or None, got {name!r}.")


def _plain(value: Any) -> Any:
    """A JSON-serializable copy of a config value, keeping what the user gave where possible.

    float64 stays a NumPy float64 (a subclass of float, so JSON accepts it) so that
    `from_config(get_config())` keeps the schedule's dtype; float32 becomes a Python float,
    which is exact and converts back to float32.
    """
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value[()]) if value.ndim == 0 else [_plain(item) for item in value]
    if isinstance(value, np.float64):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# Schedules.


class LearningRateSchedule(abc.ABC):
    """Base class of learning-rate schedules: a callable from step count to learning rate.

    Subclasses implement `__call__(step)` and `get_config()`; `from_config` rebuilds a schedule
    from its config by passing it to the constructor as keyword arguments. Pass an instance as
    the optimizer's `learning_rate`; the optimizer calls it with the iteration count before the
    increment, once per step.

    Example:
        >>> class Halving(LearningRateSchedule):
        ...     def __init__(self, initial_learning_rate):
        ...         self.initial_learning_rate = initial_learning_rate
        ...     def __call__(self, step):
        ...         return np.float32(self.initial_learning_rate) / np.float32(2) ** step
        ...     def get_config(self):
        ...         return {"initial_learning_rate": self.initial_learning_rate}
        >>> float(Halving.from_config({"initial_learning_rate": 1.0})(3))
        0.125
    """

    @abc.abstractmethod
    def __call__(self, step: Step) -> np.floating:
        """The learning rate at `step` (the number of steps taken so far)."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, as plain values, such that `cls(**config)` rebuilds it."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        """Rebuild a schedule from `get_config()` output.

        Example:
            >>> schedule = ExponentialDecay(0.1, 100, 0.9)
            >>> ExponentialDecay.from_config(schedule.get_config()).decay_rate
            0.9
        """
        return cls(**config)

    def __repr__(self) -> str:
        try:
            arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        except Exception:  # a broken user get_config must not break repr
            return super().__repr__()
        return f"{type(self).__name__}({arguments})"


class _StepDecay(LearningRateSchedule):
    """Shared by the schedules of `(initial_learning_rate, decay_steps, decay_rate, staircase)`.

    Both compute `p = step / decay_steps` (floored with `staircase`) and differ only in how
    `decay_rate` and `p` shrink the initial rate: `_decay`. A negative `decay_rate` is refused
    (for InverseTimeDecay it would pass through a zero denominator).
    """

    def __init__(
        self,
        initial_learning_rate: Scalar,
        decay_steps: Scalar,
        decay_rate: Scalar,
        staircase: bool = False,
        name: str | None = None,
    ) -> None:
        checks.finite_number(initial_learning_rate, "initial_learning_rate", checks.NON_NEGATIVE)
        checks.finite_number(decay_steps, "decay_steps", checks.POSITIVE)
        checks.finite_number(decay_rate, "decay_rate", checks.NON_NEGATIVE)
        _check_bool("staircase", staircase)
        _check_name(name)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    @abc.abstractmethod
    def _decay(
        self, initial_learning_rate: np.generic, decay_rate: np.generic, p: np.generic
    ) -> np.floating:
        """The learning rate from the cast arguments and the (floored) progress `p`."""

    @_keras_arithmetic
    def __call__(self, step: Step) -> np.floating:
        dtype = _float_dtype(self.initial_learning_rate)
        p = _step(step, dtype) / _cast(self.decay_steps, dtype)
        if self.staircase:
            p = np.floor(p)
        return self._decay(
            _cast(self.initial_learning_rate, dtype), _cast(self.decay_rate, dtype), p
        )

    def get_config(self) -> dict[str, Any]:
        return _plain(
            {
                "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate,
                "staircase": self.staircase,
                "name": self.name,
            }
        )


class ExponentialDecay(_StepDecay):
    """`initial_learning_rate * decay_rate ** (step / decay_steps)`.

    With `staircase=True` the exponent is floored, so the rate drops by `decay_rate` once every
    `decay_steps` steps instead of continuously.

    Example:
        >>> schedule = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5, staircase=True)
        >>> [float(schedule(step)) for step in (0, 99, 100, 250)]
        [0.10000000149011612, 0.10000000149011612, 0.05000000074505806, 0.02500000037252903]
    """

    def _decay(
        self, initial_learning_rate: np.generic, decay_rate: np.generic, p: np.generic
    ) -> np.floating:
        return initial_learning_rate * _pow(decay_rate, p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """`values[0]` up to and including `boundaries[0]`, `values[1]` up to `boundaries[1]`, ...

    The step is compared in its own dtype, with the boundaries converted to it (as Keras does:
    a float boundary against an integer step is truncated). The result has the values' dtype
    (float32 for Python numbers). Unlike Keras, an empty `boundaries` is allowed and gives the
    constant `values[0]`.

    Example:
        >>> schedule = PiecewiseConstantDecay(boundaries=[100, 200], values=[1.0, 0.5, 0.1])
        >>> [float(schedule(step)) for step in (0, 100, 101, 200, 201)]
        [1.0, 1.0, 0.5, 0.5, 0.10000000149011612]
    """

    def __init__(
        self,
        boundaries: Sequence[Scalar],
        values: Sequence[Scalar],
        name: str | None = None,
    ) -> None:
        for argument, items in (("boundaries", boundaries), ("values", values)):
            if isinstance(items, str | bytes) or not isinstance(items, Sequence | np.ndarray):
                raise TypeError(f"`{argument}` must be a list of numbers, got {items!r}.")
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "`values` must have exactly one more element than `boundaries`; received "
                f"boundaries={list(boundaries)!r} of length {len(boundaries)} and "
                f"values={list(values)!r} of length {len(values)}."
            )
        numbers = [
            checks.finite_number(boundary, f"boundaries[{index}]")
            for index, boundary in enumerate(boundaries)
        ]
        # Keras's tf.case fails at call time on unsorted boundaries; say so up front.
        for index in range(1, len(numbers)):
            if not numbers[index] > numbers[index - 1]:
                raise ValueError(
                    f"`boundaries` must be strictly increasing, got {list(boundaries)!r}."
                )
        for index, value in enumerate(values):
            checks.finite_number(value, f"values[{index}]", checks.NON_NEGATIVE)
        _check_name(name)
        self.boundaries = boundaries
        self.values = values
        self.name = name

    @_keras_arithmetic
    def __call__(self, step: Step) -> np.floating:
        dtype = np.result_type(*(_float_dtype(value) for value in self.values))
        values = [_operand(value, dtype) for value in self.values]
        x = _as_tensor(step)
        _check_step_array(step, x)
        x = x[()]
        boundaries = [_cast(boundary, x.dtype) for boundary in self.boundaries]
        if not boundaries:
            return values[0]
        # The same predicates as Keras; a nan step matches none and gets Keras's default.
        if x <= boundaries[0]:
            return values[0]
        if x > boundaries[-1]:
            return values[-1]
        for low, high, value in zip(boundaries[:-1], boundaries[1:], values[1:-1], strict=True):
            if low < x <= high:
                return value
        return values[0]

    def get_config(self) -> dict[str, Any]:
        return _plain({"boundaries": self.boundaries, "values": self.values, "name": self.name})


class PolynomialDecay(LearningRateSchedule):
    """Decay to `end_learning_rate` along `(1 - step / decay_steps) ** power`.

    After `decay_steps` the rate stays at `end_learning_rate`, unless `cycle=True`, in which case
    the horizon grows to the next multiple of `decay_steps` above the step and the decay starts
    again from the top.

    Example:
        >>> schedule = PolynomialDecay(1.0, decay_steps=10, end_learning_rate=0.0, power=2.0)
        >>> [float(schedule(step)) for step in (0, 5, 10, 20)]
        [1.0, 0.25, 0.0, 0.0]
    """

    def __init__(
        self,
        initial_learning_rate: Scalar,
        decay_steps: Scalar,
        end_learning_rate: Scalar = 0.0001,
        power: Scalar = 1.0,
        cycle: bool = False,
        name: str | None = None,
    ) -> None:
        checks.finite_number(initial_learning_rate, "initial_learning_rate", checks.NON_NEGATIVE)
        checks.finite_number(decay_steps, "decay_steps", checks.POSITIVE)
        checks.finite_number(end_learning_rate, "end_learning_rate", checks.NON_NEGATIVE)
        # A negative power would make the rate infinite at the end of the decay.
        checks.finite_number(power, "power", checks.NON_NEGATIVE)
        _check_bool("cycle", cycle)
        _check_name(name)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    @_keras_arithmetic
    def __call__(self, step: Step) -> np.floating:
        dtype = _float_dtype(self.initial_learning_rate)
        initial_learning_rate = _cast(self.initial_learning_rate, dtype)
        end_learning_rate = _cast(self.end_learning_rate, dtype)
        power = _cast(self.power, dtype)
        step_ = _step(step, dtype)
        decay_steps = _cast(self.decay_steps, dtype)
        if self.cycle:
            # Keras divides by the raw decay_steps here, a Python operand, not by the cast.
            if step_ == 0:
                multiplier = _operand(1.0, dtype)
            else:
                multiplier = np.ceil(step_ / _operand(self.decay_steps, dtype))
            decay_steps = decay_steps * multiplier
        else:
            step_ = np.minimum(step_, decay_steps)
        p = step_ / decay_steps
        one = _operand(1, dtype)
        return (initial_learning_rate - end_learning_rate) * _pow(
            one - p, power
        ) + end_learning_rate

    def get_config(self) -> dict[str, Any]:
        return _plain(
            {
                "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate,
                "power": self.power,
                "cycle": self.cycle,
                "name": self.name,
            }
        )


class InverseTimeDecay(_StepDecay):
    """`initial_learning_rate / (1 + decay_rate * step / decay_steps)`.

    With `staircase=True`, `step / decay_steps` is floored.

    Example:
        >>> schedule = InverseTimeDecay(1.0, decay_steps=10, decay_rate=1.0)
        >>> [float(schedule(step)) for step in (0, 10, 30)]
        [1.0, 0.5, 0.25]
    """

    def _decay(
        self, initial_learning_rate: np.generic, decay_rate: np.generic, p: np.generic
    ) -> np.floating:
        return initial_learning_rate / (_operand(1, p.dtype) + decay_rate * p)


class CosineDecay(LearningRateSchedule):
    """Half a cosine from the top rate down to `alpha` times it over `decay_steps`, then flat.

    Without a `warmup_target` the top rate is `initial_learning_rate`. With one, the rate first
    rises linearly from `initial_learning_rate` to `warmup_target` over `warmup_steps` steps and
    then decays from `warmup_target`:
    `top * ((1 - alpha) * 0.5 * (1 + cos(pi * min(t, decay_steps) / decay_steps)) + alpha)`,
    `t` counting from the end of the warmup.

    Example:
        >>> schedule = CosineDecay(1.0, decay_steps=10, alpha=0.1)
        >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 20)]
        [1.0, 0.55, 0.1, 0.1]
        >>> warm = CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=4)
        >>> [round(float(warm(step)), 6) for step in (0, 2, 4, 9, 14)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        initial_learning_rate: Scalar,
        decay_steps: Scalar,
        alpha: Scalar = 0.0,
        name: str | None = None,
        warmup_target: Scalar | None = None,
        warmup_steps: Scalar = 0,
    ) -> None:
        checks.finite_number(initial_learning_rate, "initial_learning_rate", checks.NON_NEGATIVE)
        # With a warmup, tf_keras accepts decay_steps=0 (a warmup alone; past it, 0/0 gives
        # NaN, which the optimizer then refuses as a learning rate).
        checks.finite_number(
            decay_steps, "decay_steps",
            checks.POSITIVE if warmup_target is None else checks.NON_NEGATIVE,
        )
        # alpha is the final rate as a fraction of the top one.
        checks.finite_number(alpha, "alpha", checks.CLOSED_UNIT_INTERVAL)
        _check_name(name)
        if warmup_target is not None:
            checks.finite_number(warmup_target, "warmup_target", checks.NON_NEGATIVE)
        checks.finite_number(warmup_steps, "warmup_steps", checks.NON_NEGATIVE)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decay(self, t: np.generic, decay_steps: np.generic, top: np.generic) -> np.generic:
        dtype = t.dtype
        completed_fraction = t / decay_steps
        pi = _operand(math.pi, dtype)
        cosine_decayed = _operand(0.5, dtype) * (
            _operand(1.0, dtype) + _cos(pi * completed_fraction)
        )
        # Keras forms 1 - alpha on the Python value, before it meets the tensor.
        decayed = _operand(1 - self.alpha, dtype) * cosine_decayed + _operand(self.alpha, dtype)
        return top * decayed

    @_keras_arithmetic
    def __call__(self, step: Step) -> np.floating:
        dtype = _float_dtype(self.initial_learning_rate)
        initial_learning_rate = _cast(self.initial_learning_rate, dtype)
        decay_steps = _cast(self.decay_steps, dtype)
        t = _step(step, dtype)
        if self.warmup_target is None:
            return self._decay(np.minimum(t, decay_steps), decay_steps, initial_learning_rate)
        warmup_target = _cast(self.warmup_target, dtype)
        warmup_steps = _cast(self.warmup_steps, dtype)
        t = np.minimum(t, decay_steps + warmup_steps)
        if t < warmup_steps:
            completed_fraction = t / warmup_steps
            delta = warmup_target - initial_learning_rate
            return delta * completed_fraction + initial_learning_rate
        return self._decay(t - warmup_steps, decay_steps, warmup_target)

    def get_config(self) -> dict[str, Any]:
        return _plain(
            {
                "initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps,
                "alpha": self.alpha,
                "name": self.name,
                "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps,
            }
        )


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2016).

    The first period lasts `first_decay_steps` steps and decays from `initial_learning_rate` to
    `alpha` times it; then the rate jumps back up. Each period is `t_mul` times longer than the
    one before and starts `m_mul` times lower.

    Example:
        >>> schedule = CosineDecayRestarts(1.0, first_decay_steps=10, t_mul=2.0, m_mul=0.5)
        >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 20, 30)]
        [1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(
        self,
        initial_learning_rate: Scalar,
        first_decay_steps: Scalar,
        t_mul: Scalar = 2.0,
        m_mul: Scalar = 1.0,
        alpha: Scalar = 0.0,
        name: str | None = None,
    ) -> None:
        checks.finite_number(initial_learning_rate, "initial_learning_rate", checks.NON_NEGATIVE)
        checks.finite_number(first_decay_steps, "first_decay_steps", checks.POSITIVE)
        # Periods that shrink (t_mul < 1) add up to a finite time, after which Keras's formula
        # takes the log of a negative number and the rate becomes nan.
        checks.finite_number(t_mul, "t_mul", checks.AT_LEAST_ONE)
        checks.finite_number(m_mul, "m_mul", checks.NON_NEGATIVE)
        checks.finite_number(alpha, "alpha", checks.CLOSED_UNIT_INTERVAL)
        _check_name(name)
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self.t_mul = t_mul
        self.m_mul = m_mul
        self.alpha = alpha
        self.name = name

    @_keras_arithmetic
    def __call__(self, step: Step) -> np.floating:
        dtype = _float_dtype(self.initial_learning_rate)
        initial_learning_rate = _cast(self.initial_learning_rate, dtype)
        first_decay_steps = _cast(self.first_decay_steps, dtype)
        alpha = _cast(self.alpha, dtype)
        t_mul = _cast(self.t_mul, dtype)
        m_mul = _cast(self.m_mul, dtype)
        one = _operand(1.0, dtype)
        completed_fraction = _step(step, dtype) / first_decay_steps
        if t_mul == one:
            i_restart = np.floor(completed_fraction)
            completed_fraction = completed_fraction - i_restart
        else:
            # Period i starts at fraction (t_mul**i - 1) / (t_mul - 1); invert that.
            i_restart = np.floor(_log(one - completed_fraction * (one - t_mul)) / _log(t_mul))
            sum_r = (one - _pow(t_mul, i_restart)) / (one - t_mul)
            completed_fraction = (completed_fraction - sum_r) / _pow(t_mul, i_restart)
        m_fac = _pow(m_mul, i_restart)
        pi = _operand(math.pi, dtype)
        cosine_decayed = _operand(0.5, dtype) * m_fac * (one + _cos(pi * completed_fraction))
        decayed = (_operand(1, dtype) - alpha) * cosine_decayed + alpha
        return initial_learning_rate * decayed

    def get_config(self) -> dict[str, Any]:
        return _plain(
            {
                "initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps,
                "t_mul": self.t_mul,
                "m_mul": self.m_mul,
                "alpha": self.alpha,
                "name": self.name,
            }
        )


_BUILT_IN: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """`{'class_name': ..., 'config': ...}` for `schedule`, in plain JSON-serializable values.

    Example:
        >>> serialize(InverseTimeDecay(0.1, 10, 0.5, name="itd"))["config"]["name"]
        'itd'
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(f"Expected a LearningRateSchedule, got {schedule!r}.")
    return {"class_name": type(schedule).__name__, "config": _plain(schedule.get_config())}


def deserialize(
    config: Mapping[str, Any],
    custom_objects: Mapping[str, type[LearningRateSchedule]] | None = None,
) -> LearningRateSchedule:
    """Rebuild a schedule from `serialize()` output or from Keras's serialized form.

    Keras's extra keys (`module`, `registered_name`) are ignored. The class is looked up in
    `custom_objects` first, then among the built-in schedules. (Keras returns the bare class
    name for an unknown class; this raises ValueError.)

    Example:
        >>> schedule = deserialize(
        ...     {"class_name": "ExponentialDecay",
        ...      "config": {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}})
        >>> float(schedule(10))
        0.05000000074505806
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            f"Expected a dict with 'class_name' and 'config' keys, got {type(config).__name__}: "
            f"{config!r}."
        )
    class_name = config.get("class_name")
    if not isinstance(class_name, str):
        raise ValueError(f"The serialized schedule has no 'class_name' string: {config!r}.")
    arguments = config.get("config", {})
    if not isinstance(arguments, Mapping):
        raise TypeError(f"The 'config' of {class_name} must be a dict, got {arguments!r}.")
    cls: Any = None
    if custom_objects is not None:
        cls = custom_objects.get(class_name)
    if cls is None:
        cls = _BUILT_IN.get(class_name)
    if cls is None:
        known = sorted(set(_BUILT_IN) | set(custom_objects or {}))
        raise ValueError(
            f"Unknown learning rate schedule: {class_name!r}. Pass its class in "
            f"`custom_objects` (known: {', '.join(known)})."
        )
    if not callable(getattr(cls, "from_config", None)):
        raise TypeError(f"{class_name!r} maps to {cls!r}, which has no `from_config`.")
    return cls.from_config(dict(arguments))
