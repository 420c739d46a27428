"""`Hyperparameters`: a Keras optimizer's named settings and how one step reads them.

A hyperparameter is a number, a 0-d array or tensor, a zero-argument callable (called each
step) or, for `learning_rate`, a `LearningRateSchedule` (called with the iteration count). Keras
keeps each in a variable of its own dtype, which decides the rounding this store reproduces:
Python numbers (also those a callable returns) become float32; NumPy floats and arrays keep
their float dtype.

Example:
    >>> store = Hyperparameters()
    >>> store.set("learning_rate", 0.1)
    >>> store.resolve("learning_rate", iterations=0)
    array(0.1, dtype=float32)
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterator
from typing import Any

import numpy as np

from nadam import checks, schedules
from nadam.variables import Variable


class Hyperparameters:
    """Named hyperparameters, checked when set and resolved to 0-d arrays once per step."""

    __slots__ = ("_values", "_constants")

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        # name -> its 0-d array, for immutable values (numbers), resolved once when set.
        self._constants: dict[str, np.ndarray] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __getitem__(self, name: str) -> Any:
        """The value as it was given (a number, an array, a callable or a schedule)."""
        return self._values[name]

    def view(self, name: str) -> Any:
        """What `optimizer.<name>` shows: a schedule, callable or `Variable` as given (the
        very object, so it stays live), a number or array as a live `HyperParameter`."""
        value = self._values[name]
        if callable(value) or isinstance(value, Variable):
            return value
        return HyperParameter(self, name)

    def set(self, name: str, value: Any) -> None:
        """Check `value` and store it under `name`; raises before changing anything.

        A `Variable` or a 0-d array is kept as it is, so later changes to it take effect (and
        are checked) at the next step, as with Keras's hyper variables.
        """
        if isinstance(value, HyperParameter):
            value = value.given()
        if isinstance(value, Variable):
            checks.hyperparameter(value.numpy(), name)
        elif isinstance(value, schedules.LearningRateSchedule):
            if name != "learning_rate":
                raise TypeError(f"Only learning_rate may be a LearningRateSchedule, not {name}")
        elif not callable(value):
            checks.hyperparameter(value, name)
        constant = None
        if isinstance(value, int | float | np.generic):  # immutable: resolved once
            constant = self._rounded(value, checks.host_scalar(value, name))
            constant.flags.writeable = False
        self._values[name] = value
        if constant is None:
            self._constants.pop(name, None)
        else:
            self._constants[name] = constant

    def resolve(self, name: str, iterations: int) -> np.ndarray:
        """This step's value of `name` as a 0-d array, with Keras's rounding, range-checked.

        Callables are called and schedules evaluated at `iterations` (the count before the
        step); what they return is checked like a value given directly.
        """
        constant = self._constants.get(name)
        if constant is not None:
            return constant
        value = self._values[name]
        if isinstance(value, Variable):
            result, source = value.read_value(), " (its Variable's value)"
        elif isinstance(value, schedules.LearningRateSchedule):
            result, source = value(np.int64(iterations)), " (from its schedule)"
        elif callable(value):
            result, source = value(), " (returned by its callable)"
        else:
            result, source = value, ""
        return self._rounded(result, checks.hyperparameter(result, name, source))

    def resolve_all(self, iterations: int) -> dict[str, np.ndarray]:
        """Every hyperparameter's value for one step (each callable called once)."""
        return {name: self.resolve(name, iterations) for name in self._values}

    def serialize(self, name: str) -> Any:
        """A plain JSON-serializable form: the number as given, or a schedule's config."""
        value = self._values[name]
        if isinstance(value, schedules.LearningRateSchedule):
            return schedules.serialize(value)
        if callable(value):
            value = value()
        if checks.is_real_number(value) and not isinstance(value, np.generic):
            return value
        return float(checks.host_scalar(value, name))

    @staticmethod
    def _rounded(given: Any, array: np.ndarray) -> np.ndarray:
        python_number = isinstance(given, numbers.Real) and not isinstance(given, np.generic)
        if python_number or array.dtype.kind != "f":
            return np.asarray(array, dtype=np.float32)
        return array


class HyperParameter:
    """A live view of one hyperparameter, as Keras's hyper variable is (`opt.lr`).

    `numpy()` is the value a step uses (Python numbers rounded to float32, as Keras stores
    them), arithmetic and comparisons act on it, and `assign` changes the hyperparameter
    (checked first, as `opt.lr = value` is).

    Example:
        >>> import nadam
        >>> opt = nadam.Nadam(learning_rate=0.01)
        >>> opt.lr.assign(0.5)
        <HyperParameter learning_rate=0.5>
        >>> float(opt.learning_rate), float(opt.lr * 2)
        (0.5, 1.0)
    """

    __slots__ = ("_store", "_name")
    __array_priority__ = 100  # ndarray <op> HyperParameter defers to ours

    def __init__(self, store: Hyperparameters, name: str) -> None:
        self._store = store
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def given(self) -> Any:
        """The value as it was set (a number or an array)."""
        return self._store[self._name]

    def numpy(self) -> np.generic:
        """The value a step uses, as a NumPy scalar of its dtype."""
        return self._store.resolve(self._name, 0)[()]

    def read_value(self) -> np.generic:
        return self.numpy()

    def assign(self, value: Any) -> HyperParameter:
        """Set the hyperparameter (checked first); returns this view."""
        self._store.set(self._name, value)
        return self

    def assign_add(self, delta: Any) -> HyperParameter:
        return self.assign(self.numpy() + _plain(delta))

    def assign_sub(self, delta: Any) -> HyperParameter:
        return self.assign(self.numpy() - _plain(delta))

    @property
    def dtype(self) -> np.dtype:
        return self.numpy().dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.numpy(), dtype=dtype)

    def __float__(self) -> float:
        return float(self.numpy())

    def __bool__(self) -> bool:
        return bool(self.numpy())

    def __hash__(self) -> int:
        return hash((id(self._store), self._name))

    def __repr__(self) -> str:
        return f"<HyperParameter {self._name}={self.given()!r}>"


def _plain(value: Any) -> Any:
    return value.numpy() if isinstance(value, HyperParameter) else value


def _binary(op: Any) -> Any:
    def forward(self: HyperParameter, other: Any) -> Any:
        return op(self.numpy(), _plain(other))

    return forward


def _reflected(op: Any) -> Any:
    def backward(self: HyperParameter, other: Any) -> Any:
        return op(_plain(other), self.numpy())

    return backward


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(HyperParameter, f"__{_name}__", _binary(getattr(operator, _name)))
    setattr(HyperParameter, f"__r{_name}__", _reflected(getattr(operator, _name)))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(HyperParameter, f"__{_name}__", _binary(getattr(operator, _name)))
HyperParameter.__neg__ = lambda self: -self.numpy()  # type: ignore[method-assign]
HyperParameter.__abs__ = lambda self: abs(self.numpy())  # type: ignore[method-assign]
