"""The one set of hyperparameter checks, with one message style, for every face.

Keras's own wording for a negative keyword argument, ``Expected clipnorm >= 0, received: -1``,
is the model for every range error here: ``Expected <name> <requirement>, received: <value>``.
A value that is not a real number (a string, a bool, a complex number, an array of several
values) is a TypeError or ValueError naming the setting too. The Keras face
(`nadam.Optimizer`, `nadam.Nadam`), the torch.optim face (`nadam.torch.Nadam`), the schedules
and clipping all check through these functions.

Example:
    >>> real_number(0.5, "beta_1", UNIT_INTERVAL)
    0.5
    >>> real_number(1.0, "beta_1", UNIT_INTERVAL)
    Traceback (most recent call last):
    ...
    ValueError: Expected beta_1 in [0, 1), received: 1.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np


class Range(NamedTuple):
    """An interval of allowed values and how an error message states it."""

    low: float
    high: float
    high_inclusive: bool
    requirement: str
    low_inclusive: bool = True

    def contains(self, number: float) -> bool:
        if math.isnan(number) or number < self.low or (
            number == self.low and not self.low_inclusive
        ):
            return False
        return number <= self.high if self.high_inclusive else number < self.high


NON_NEGATIVE = Range(0.0, math.inf, True, ">= 0")
POSITIVE = Range(0.0, math.inf, True, "> 0", low_inclusive=False)
AT_LEAST_ONE = Range(1.0, math.inf, True, ">= 1")
UNIT_INTERVAL = Range(0.0, 1.0, False, "in [0, 1)")
CLOSED_UNIT_INTERVAL = Range(0.0, 1.0, True, "in [0, 1]")
ANY_REAL = Range(-math.inf, math.inf, True, "to be a number")

FINITE_NON_NEGATIVE = Range(0.0, math.inf, False, ">= 0 and finite")

HYPERPARAMETER_RANGES: dict[str, Range] = {
    "learning_rate": NON_NEGATIVE,
    "decay": FINITE_NON_NEGATIVE,
    "beta_1": UNIT_INTERVAL,
    "beta_2": UNIT_INTERVAL,
    "epsilon": NON_NEGATIVE,
    "schedule_decay": NON_NEGATIVE,
}
"""The valid range of each hyperparameter the Nadam rule reads (any face)."""


def is_real_number(value: Any) -> bool:
    """A Python or NumPy real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def host_scalar(value: Any, name: str) -> np.ndarray:
    """A 0-d NumPy array from a number, a 0-d array or a 1-element torch tensor.

    TypeError for anything that is not a real number (bools included: `True` is not a
    learning rate), ValueError for an array of more than one value.
    """
    if isinstance(value, bool | np.bool_ | list | tuple | str | bytes):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if hasattr(value, "detach"):  # a torch tensor, converted without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a real number, got a masked array")
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - any failure means "not a number"
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from error
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if array.size != 1:
        raise ValueError(f"{name} must be a scalar, got an array of shape {array.shape}")
    return array.reshape(())


def check_in_range(number: float, name: str, allowed: Range, source: str = "") -> None:
    """ValueError unless `number` lies in `allowed` (NaN never does)."""
    if not allowed.contains(number):
        raise ValueError(f"Expected {name}{source} {allowed.requirement}, received: {number!r}")


def real_number(value: Any, name: str, allowed: Range = ANY_REAL) -> float:
    """`value` as a Python float after checking that it is a real number in `allowed`."""
    number = float(host_scalar(value, name))
    check_in_range(number, name, allowed)
    return number


def finite_number(value: Any, name: str, allowed: Range = ANY_REAL) -> float:
    """`value` as a Python float after checking that it is a finite real number in `allowed`."""
    number = float(host_scalar(value, name))
    if math.isinf(number):
        raise ValueError(f"Expected {name} to be finite, received: {value!r}")
    check_in_range(number, name, allowed)
    return number


def hyperparameter(value: Any, name: str, source: str = "") -> np.ndarray:
    """A hyperparameter's value as a 0-d array, checked against its range."""
    array = host_scalar(value, f"{name}{source}")
    check_in_range(float(array), name, HYPERPARAMETER_RANGES.get(name, ANY_REAL), source)
    return array


def clip_threshold(value: Any, name: str) -> float | None:
    """A clipping threshold: None (off) or a finite number >= 0, kept as given."""
    if value is None:
        return None
    if not is_real_number(value):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if math.isinf(value):
        raise ValueError(f"Expected {name} to be finite, received: {value!r}")
    check_in_range(float(value), name, NON_NEGATIVE)
    return value


def exclusive_clipnorms(clipnorm: Any, global_clipnorm: Any) -> None:
    """`clipnorm` and `global_clipnorm` cannot both be set (Keras's ValueError)."""
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError(
            "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
            f"`clipnorm`={clipnorm}, `global_clipnorm`={global_clipnorm}."
        )


def epsilon(value: Any, name: str = "epsilon") -> float:
    """Keras's epsilon: None or 0 means 1e-7; otherwise a finite number >= 0."""
    if value is None:
        return 1e-7
    if not is_real_number(value) and not (
        hasattr(value, "shape") and getattr(value, "ndim", 1) == 0
    ):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(host_scalar(value, name))
    if math.isinf(number):
        raise ValueError(f"Expected {name} to be finite, received: {value!r}")
    check_in_range(number, name, NON_NEGATIVE)
    return number or 1e-7


def weight_arrays(
    optimizer_name: str, shapes: Sequence[tuple[int, ...]], weights: Iterable[Any]
) -> list[np.ndarray]:
    """`weights` as NumPy arrays after checking them against `shapes`, with Keras's messages.

    The length first, then every shape and that every entry is numeric; nothing is converted
    to the targets' dtypes here, and nothing is written.
    """
    weights = list(weights)
    if len(shapes) != len(weights):
        raise ValueError(
            f"You called `set_weights(weights)` on optimizer {optimizer_name} with a weight "
            f"list of length {len(weights)}, but the optimizer was expecting "
            f"{len(shapes)} weights. Provided weights: {str(weights)[:50]}..."
        )
    arrays = []
    for position, (shape, weight) in enumerate(zip(shapes, weights, strict=True)):
        if hasattr(weight, "detach"):  # a torch tensor, without importing torch
            weight = weight.detach().cpu().numpy()
        array = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        if array.shape != tuple(shape):
            raise ValueError(
                f"Optimizer weight shape {tuple(shape)} not compatible with provided weight "
                f"shape {array.shape}"
            )
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"Weight {position} given to set_weights has dtype {array.dtype}; "
                "expected numbers"
            )
        arrays.append(array)
    return arrays


# --- restored state: what a run can have produced -------------------------------------------
INT64_MAX = int(np.iinfo(np.int64).max)


def iteration_count(value: Any, name: str = "iterations") -> int:
    """A restored step counter as a Python int: a whole number in [0, 2**63 - 1].

    Takes a Python or NumPy integer, a whole float (Keras's `get_weights` may have gone
    through a float array; `torch.optim`'s `step` is a float tensor), a 0-d array or a
    one-element tensor. NaN, infinities, fractions, negatives, bools and values beyond int64
    are ValueErrors: no run counts that way, and casting them wraps (NaN and 1e30 become
    -2**63, and the next step computes NaN).
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"Expected {name} to be a non-negative integer, received: {value!r}")
    if isinstance(value, int):  # a Python int may be beyond any array dtype
        number: int | float = value
    else:
        try:
            array = host_scalar(value, name)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Expected {name} to be a non-negative integer, received: {value!r} ({error})"
            ) from None
        number = int(array) if array.dtype.kind in "iu" else float(array)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"Expected {name} to be a whole number, received: {value!r}")
    if not 0 <= number <= INT64_MAX:
        raise ValueError(
            f"Expected {name} in [0, 2**63 - 1] (a non-negative int64), received: {value!r}"
        )
    return int(number)


def momentum_cache(value: Any, name: str = "momentum_cache") -> float:
    """A restored momentum cache as a Python float: one finite number in [0, 1].

    The cache is a product of momentum factors in [0, 1): it starts at 1 and only shrinks (to
    exactly 0 once it underflows). An array of another shape than a scalar, NaN or a value
    outside [0, 1] cannot come from a run.
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"Expected {name} to be a number in [0, 1], received: {value!r}")
    shape = getattr(value, "shape", ())
    if tuple(shape) != ():
        raise ValueError(f"Expected {name} to be a scalar, received an array of shape "
                         f"{tuple(shape)}")
    try:
        number = float(host_scalar(value, name))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Expected {name} to be a number in [0, 1], received: {value!r} ({error})"
        ) from None
    check_in_range(number, name, CLOSED_UNIT_INTERVAL)
    return number
