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

    def set(self, name: str, value: Any) -> None:
        """Check `value` and store it under `name`; raises before changing anything."""
        if isinstance(value, Variable):
            value = value.numpy()
        if isinstance(value, schedules.LearningRateSchedule):
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
        if isinstance(value, schedules.LearningRateSchedule):
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
