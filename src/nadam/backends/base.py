"""The protocol every array backend implements, and the validated gradient forms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


# Plain (not frozen) slotted dataclasses: one is made per gradient per step, and a frozen
# dataclass's __init__ costs several times more.
@dataclass(slots=True)
class DenseGrad:
    """A validated dense gradient: `array` has the variable's shape and dtype."""

    array: Any


@dataclass(slots=True)
class SparseGrad:
    """A validated row-sparse gradient: `values[i]` belongs to row `indices[i]`.

    `indices` is a 1-D int64 array of the backend (possibly with duplicates), every entry in
    ``[0, rows)``; `values` has shape ``(len(indices),) + variable.shape[1:]``.
    """

    values: Any
    indices: Any


Gradient = DenseGrad | SparseGrad


class Backend(Protocol):
    """What the optimizer needs from an array library."""

    name: str

    def owns(self, obj: object) -> bool:
        """Whether `obj` is a variable of this backend."""

    def describe(self, var: Any) -> str:
        """A short name for `var` to put in error messages."""

    def check_variable(self, var: Any) -> None:
        """Raise TypeError/ValueError if `var` cannot be trained (integer dtype, read-only)."""

    def dtype(self, var: Any) -> np.dtype:
        """The variable's dtype as a NumPy dtype."""

    def shape(self, var: Any) -> tuple[int, ...]: ...

    def device(self, var: Any) -> str:
        """A hashable device key: variables are grouped by (backend, device, dtype)."""

    def read(self, var: Any) -> Any:
        """The variable's live array (no copy)."""

    def to_numpy(self, var_or_array: Any) -> np.ndarray:
        """A NumPy copy of a variable's or array's value."""

    def as_numpy_view(self, var_or_array: Any) -> np.ndarray | None:
        """A NumPy array sharing memory with a variable's or array's value, without copying.

        Writable wherever the value is (a variable, a slot), so that the fused CPU kernel
        (`nadam.kernels.cpu`) can update it in place; None where no such view exists (memory
        not on the CPU, a value that is not an array). Optional: a backend without this method
        always runs the reference kernel.
        """

    def mark_written(self, arrays: Sequence[Any]) -> None:
        """Record that memory lent earlier through `as_numpy_view` is written again (torch
        bumps autograd version counters). Optional: backends without it track nothing."""

    def as_read_only_numpy_view(self, array: Any) -> np.ndarray | None:
        """A read-only NumPy array sharing memory with `array`, without copying; else None.

        What the fused CPU kernel only reads (gradients, sparse indices) is lent this way, so
        lending it is not a write: a framework that tracks in-place writes (torch's autograd
        version counters) must not count it as one. The view may be cached and lent again.
        Optional: for a backend without this method the kernel reads through `as_numpy_view`
        (and then marks its result read-only itself).
        """

    def signature(self, var: Any) -> Any:
        """A cheap, comparable summary of everything the checks of `var` depend on (its
        memory, shape, strides, dtype, writability): while it is unchanged, so are they.

        It may identify the array by `id()` or its address: the caller keeps
        `signature_anchor(var)` alive meanwhile."""

    def signature_anchor(self, var: Any) -> Any:
        """What must stay alive while `signature(var)` is remembered, so that no other array
        takes its id or address: the array itself, or None where the signature names no
        memory (keeping an immutable value alive would only hold its buffer)."""

    def span(self, var_or_array: Any) -> tuple[int, int] | None:
        """The bytes ``[low, high)`` a variable's or array's elements occupy (None: none).

        Memory of different devices never compares equal (device pointers are unique within
        the process)."""

    def memory_owner(self, var_or_array: Any) -> Any:
        """A hashable name of the allocation that holds the elements (two arrays of different
        owners never share memory), or None where that is not cheaply known."""

    def overlaps_itself(self, var: Any) -> bool:
        """Whether two elements of `var` share memory (a stride of 0, an expand())."""

    def shares_memory(self, a: Any, b: Any) -> bool:
        """Whether two variables or arrays whose spans meet really share an element."""

    def copy(self, array: Any) -> Any:
        """A copy of an array, in new memory on the same device."""

    def write(self, var: Any, array: Any) -> None:
        """Replace the whole value of `var` (same shape and dtype)."""

    def write_rows(self, var: Any, indices: Any, rows: Any) -> None:
        """Replace rows `indices` (unique) of `var`."""

    def new_slot(self, var: Any, name: str, initial: np.ndarray) -> Any:
        """A new state variable living beside `var` (same device), holding `initial`."""

    def gradient(self, grad: Any, var: Any) -> Gradient:
        """Validate `grad` against `var` and return it as a DenseGrad or SparseGrad.

        Raises TypeError for a malformed gradient, ValueError for a shape or dtype mismatch and
        IndexError for sparse indices out of range; never mutates anything.
        """

    def dedupe(self, grad: SparseGrad) -> SparseGrad:
        """Sum the values of repeated indices, unique indices in first-occurrence order."""

    def sqrt(self, array: Any) -> Any: ...

    def square_sum(self, array: Any) -> np.generic:
        """Sum of squares as a host scalar of the array's dtype, added in TensorFlow's CPU
        order (`nadam.tf_reduce`): the norm of `clipnorm`."""

    def half_square_sum(self, array: Any) -> np.generic:
        """`tf.nn.l2_loss(array)` (half the sum of squares, one reduction) in TensorFlow's
        order: each tensor's share of `global_clipnorm`'s norm."""

    def clip(self, array: Any, low: Any, high: Any) -> Any: ...

    def scale(self, array: Any, factor: Any) -> Any:
        """`array * factor` with `factor` a host scalar of the array's dtype."""

    def divide(self, array: Any, divisor: Any) -> Any:
        """`array / divisor` with `divisor` a host scalar of the array's dtype."""

    def gradients(
        self, loss: Any, variables: Sequence[Any], grad_loss: Any = None
    ) -> list[Any | None]:
        """Gradients of `loss` (a zero-argument callable) with respect to `variables`.

        None for a variable the loss does not read.
        """

    def all_reduce_sum(self, arrays: list[Any]) -> list[Any]:
        """Sum arrays across data-parallel replicas; identity when not running distributed."""


LossFn = Callable[[], Any]
