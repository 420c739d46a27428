"""The NumPy backend: `nadam.Variable`s holding NumPy arrays, and plain writable ndarrays.

Both are updated in place. Gradients for `minimize` come from the `autograd` package, which
differentiates a loss written with `autograd.numpy` over `Variable.value`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nadam import memory, tf_reduce
from nadam.backends.base import DenseGrad, SparseGrad
from nadam.variables import IndexedSlices, Variable, track_reads

TRAINABLE_DTYPES = frozenset(
    (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
)


def _import_autograd() -> Any:
    try:
        import autograd
    except ImportError as error:  # pragma: no cover - autograd is a core dependency
        raise ImportError(
            "Computing gradients of NumPy losses needs the `autograd` package: "
            "pip install autograd"
        ) from error
    return autograd


class NumpyBackend:
    """Backend for `nadam.Variable`s over NumPy arrays and for plain ndarrays."""

    name = "numpy"

    def owns(self, obj: object) -> bool:
        if isinstance(obj, Variable):
            return isinstance(obj._value, np.ndarray)
        return isinstance(obj, np.ndarray)

    def describe(self, var: Any) -> str:
        if isinstance(var, Variable):
            return f"'{var.name}'"
        return f"ndarray(shape={var.shape}, dtype={var.dtype})"

    def check_variable(self, var: Any) -> None:
        array = self.read(var)
        if isinstance(array, np.ma.MaskedArray):
            raise TypeError(
                f"Variable {self.describe(var)} is a masked array; Nadam would ignore its mask. "
                "Train the plain array (`.data`) or fill the masked entries first"
            )
        if array.dtype not in TRAINABLE_DTYPES:
            raise TypeError(
                f"Variable {self.describe(var)} has dtype {array.dtype}; Nadam trains only "
                "float16, float32 and float64 variables"
            )
        if not array.flags.writeable:
            raise ValueError(f"Variable {self.describe(var)} is a read-only array")

    def dtype(self, var: Any) -> np.dtype:
        return self.read(var).dtype

    def shape(self, var: Any) -> tuple[int, ...]:
        return self.read(var).shape

    def device(self, var: Any) -> str:
        return "cpu"

    def read(self, var: Any) -> np.ndarray:
        # `_value`, not `.value`: the optimizer's own reads are not the loss reading it.
        return var._value if isinstance(var, Variable) else var

    def to_numpy(self, var_or_array: Any) -> np.ndarray:
        if isinstance(var_or_array, Variable):
            var_or_array = var_or_array._value
        return np.array(var_or_array, copy=True)

    def as_numpy_view(self, var_or_array: Any) -> np.ndarray | None:
        value = var_or_array._value if isinstance(var_or_array, Variable) else var_or_array
        return value if isinstance(value, np.ndarray) else None

    def signature(self, var: Any) -> Any:
        array = var._value if isinstance(var, Variable) else var
        return (id(array), array.shape, array.strides, array.dtype, array.flags.writeable)

    def signature_anchor(self, var: Any) -> Any:
        return var._value if isinstance(var, Variable) else var

    def memory_owner(self, var_or_array: Any) -> Any:
        array = var_or_array._value if isinstance(var_or_array, Variable) else var_or_array
        base = getattr(array, "base", False)
        if base is None:  # an array without a base owns its memory
            return id(array)
        if type(base) is np.ndarray and base.base is None:
            return id(base)  # NumPy collapses chains of views onto the owning array
        return None  # memory owned by another object (a buffer, a mapping): not known

    def span(self, var_or_array: Any) -> tuple[int, int] | None:
        array = var_or_array._value if isinstance(var_or_array, Variable) else var_or_array
        if not isinstance(array, np.ndarray):
            return None
        start = memory.address(array)
        if array.flags.c_contiguous:
            return (start, start + array.nbytes) if array.size else None
        return memory.strided_span(start, array.shape, array.strides, array.itemsize)

    def overlaps_itself(self, var: Any) -> bool:
        return memory.overlaps_itself(self.read(var))

    def shares_memory(self, a: Any, b: Any) -> bool:
        return bool(np.shares_memory(self.read(a), self.read(b)))

    def copy(self, array: Any) -> np.ndarray:
        return np.array(array, copy=True)

    def write(self, var: Any, array: Any) -> None:
        np.copyto(self.read(var), array, casting="unsafe")

    def write_rows(self, var: Any, indices: np.ndarray, rows: np.ndarray) -> None:
        self.read(var)[indices] = rows

    def new_slot(self, var: Any, name: str, initial: np.ndarray) -> Variable:
        return Variable(initial, name=name, dtype=initial.dtype, trainable=False)

    # --- gradients ---------------------------------------------------------------------
    def _as_array(self, value: Any, var: Any, what: str) -> np.ndarray:
        if isinstance(value, Variable):
            value = value._value
        return checked_host_array(value, self.dtype(var), lambda: self.describe(var), what)

    def gradient(self, grad: Any, var: Any) -> DenseGrad | SparseGrad:
        if type(grad) is np.ndarray:
            # The usual case, decided in a few attribute reads (it runs for every gradient of
            # every step); anything else, mismatches included, takes the checks below.
            array = self.read(var)
            if grad.dtype == array.dtype and grad.shape == array.shape:
                return DenseGrad(grad)
        if isinstance(grad, IndexedSlices):
            return self._sparse_gradient(grad, var)
        array = self._as_array(grad, var, "Gradient")
        if array.shape != self.shape(var):
            raise ValueError(
                f"Gradient for variable {self.describe(var)} has shape {array.shape}, "
                f"but the variable has shape {self.shape(var)}"
            )
        return DenseGrad(array)

    def _sparse_gradient(self, grad: IndexedSlices, var: Any) -> SparseGrad:
        shape = self.shape(var)
        name = self.describe(var)
        if len(shape) == 0:
            raise ValueError(f"Sparse gradient for scalar variable {name}: it has no rows")
        values = self._as_array(grad.values, var, "IndexedSlices values")
        indices = checked_row_indices(grad.indices, values.shape, grad.dense_shape, shape, name)
        return SparseGrad(values, indices)

    def dedupe(self, grad: SparseGrad) -> SparseGrad:
        """Keras's `_deduplicate_indexed_slices`: `tf.unique` of the indices and
        `unsorted_segment_sum` of the values, which Keras runs on every sparse gradient.

        The segment sum starts each row at +0 and adds the values in index order, one
        flushed addition each in float32/float64 (TensorFlow's FTZ/DAZ; float16 keeps its
        subnormals): a subnormal value reads as 0, a partial sum that underflows becomes 0,
        and a zero or subnormal value alone in its row comes out as +0 (`0 + -0` is +0).
        """
        from nadam.kernels import reference

        indices, values = grad.indices, grad.values
        unique, first, inverse = np.unique(indices, return_index=True, return_inverse=True)
        tiny = reference.smallest_normal(values.dtype)
        zeroed, exact = values, False
        if tiny is not None and values.size:
            # Below `bound` (2**(p+1) smallest normals, p the significand's bits) lie the
            # normal values whose sums with a partial sum of opposite sign can underflow:
            # an underflowing sum of two numbers is a multiple of the smaller one's ulp.
            bound = tiny * 2.0 ** (np.finfo(values.dtype).nmant + 2)
            with np.errstate(invalid="ignore"):
                magnitude = np.abs(values)
                small = magnitude < bound
            if small.any():
                below = magnitude < tiny  # zeros and subnormals: +0 after the segment sum
                exact = bool((small & ~below).any())
                if below.any():
                    zeroed = np.where(below, values.dtype.type(0), values)
        if unique.size == indices.size:
            return grad if zeroed is values else SparseGrad(zeroed, indices)
        order = np.argsort(first, kind="stable")  # first-occurrence order, as tf.unique
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        segments = position[inverse.reshape(-1)]
        summed = np.zeros((unique.size, *values.shape[1:]), dtype=values.dtype)
        if not exact:
            # np.add.at adds in index order from zero, as TF's unsorted_segment_sum does on
            # CPU; no partial sum can underflow here, so no flush is needed between adds.
            np.add.at(summed, segments, zeroed)
            return SparseGrad(summed, unique[order])
        # Some partial sum may underflow: add rank by rank (the k-th value of every row at
        # once), flushing each partial sum, with the values flushed to zeros of their sign.
        flushed = reference.flush(values)
        by_segment = np.argsort(segments, kind="stable")
        counts = np.bincount(segments, minlength=unique.size)
        starts = np.cumsum(counts) - counts
        rank = np.arange(segments.size) - np.repeat(starts, counts)
        by_rank = by_segment[np.argsort(rank, kind="stable")]
        rank_counts = np.bincount(rank)
        offset = 0
        with np.errstate(over="ignore", invalid="ignore"):
            for count in rank_counts:
                rows = by_rank[offset : offset + count]
                offset += count
                targets = segments[rows]
                summed[targets] = reference.add(summed[targets], flushed[rows])
        return SparseGrad(summed, unique[order])

    # --- array maths used by clipping and the reference kernel ------------------------------
    def sqrt(self, array: Any) -> Any:
        return np.sqrt(array)

    def square_sum(self, array: np.ndarray) -> np.generic:
        # `tf.reduce_sum(array * array)` added in TensorFlow's (Eigen's) order, the norm
        # `tf.clip_by_norm` takes; np.sum's order differs in the last bit (see tf_reduce).
        return tf_reduce.square_sum(array)

    def half_square_sum(self, array: np.ndarray) -> np.generic:
        """`tf.nn.l2_loss(array)`, the sum of squares halved in one reduction, in
        TensorFlow's order: each tensor's share of `tf.clip_by_global_norm`'s norm."""
        return tf_reduce.l2_loss(array)

    def clip(self, array: np.ndarray, low: Any, high: Any) -> np.ndarray:
        return np.clip(array, low, high)

    def scale(self, array: np.ndarray, factor: Any) -> np.ndarray:
        return array * factor

    def divide(self, array: np.ndarray, divisor: Any) -> np.ndarray:
        return array / divisor

    def all_reduce_sum(self, arrays: list[Any]) -> list[Any]:
        return arrays  # NumPy has no process group: one replica.

    def gradients(
        self, loss: Any, variables: Sequence[Any], grad_loss: Any = None
    ) -> list[np.ndarray | None]:
        for var in variables:
            if not isinstance(var, Variable):
                raise TypeError(
                    f"minimize/get_gradients on NumPy needs nadam.Variable objects (the loss "
                    f"reads them through `.value`); got {type(var).__name__}"
                )
        if not callable(loss):
            raise TypeError(
                f"The loss must be a zero-argument callable for NumPy variables, got "
                f"{type(loss).__name__}"
            )
        autograd = _import_autograd()
        reads: set[int] = set()

        def loss_of(values: tuple[Any, ...]) -> Any:
            saved = [var._value for var in variables]
            for var, value in zip(variables, values, strict=True):
                var._value = value
            try:
                with track_reads(reads):
                    return loss()
            finally:
                for var, value in zip(variables, saved, strict=True):
                    var._value = value

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Output seems independent of input")
            vjp, value = autograd.make_vjp(loss_of)(tuple(var._value for var in variables))
            value_shape = np.shape(value)
            if grad_loss is None:
                cotangent = np.ones(value_shape, dtype=np.result_type(value))
            else:
                cotangent = np.asarray(grad_loss, dtype=np.result_type(value))
                if cotangent.shape != value_shape:
                    raise ValueError(
                        f"grad_loss has shape {cotangent.shape}, but the loss has shape "
                        f"{value_shape}"
                    )
            grads = vjp(cotangent)
        return [
            np.asarray(grad, dtype=var.dtype) if id(var) in reads else None
            for var, grad in zip(variables, grads, strict=True)
        ]


def checked_dtype(actual: Any, dtype: np.dtype, describe: Callable[[], str], what: str) -> None:
    """ValueError unless an array's dtype is its variable's (`describe()` names the variable,
    called only for the message): nothing is cast."""
    if np.dtype(actual) != dtype:
        raise ValueError(
            f"{what} for variable {describe()} has dtype {actual}, but the variable has dtype "
            f"{dtype}"
        )


def checked_host_array(
    value: Any, dtype: np.dtype, describe: Callable[[], str], what: str,
    expected: str = "a NumPy array",
) -> np.ndarray:
    """`value` (a gradient, sparse values...) as a NumPy array of its variable's `dtype`
    (`describe()` names the variable in messages):
    an array of that dtype as it is, Python numbers and lists converted to it; TypeError for
    anything else (a masked array, whose mask would be ignored; non-numbers), ValueError for
    an array of another dtype.

    Example:
        >>> checked_host_array([1, 2], np.dtype("float32"), lambda: "'w'", "Gradient")
        array([1., 2.], dtype=float32)
    """
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{what} for variable {describe()} is a masked array; its mask would be ignored. "
            "Pass a plain array (e.g. `.filled(0)`)"
        )
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        checked_dtype(array.dtype, dtype, describe, what)
        return array
    if isinstance(value, bool) or not isinstance(value, int | float | list | tuple):
        raise TypeError(f"{what} for variable {describe()} must be {expected}, got "
                        f"{type(value).__name__}")
    try:
        # Python numbers carry no dtype of their own: they take the variable's.
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} for variable {describe()} is not numeric: {error}") from error


def checked_row_indices(
    indices: Any,
    values_shape: tuple[int, ...],
    dense_shape: tuple[int, ...] | None,
    shape: tuple[int, ...],
    name: str,
) -> np.ndarray:
    """The int64 row indices of a sparse gradient for variable `name` of `shape`, after
    checking them against the values' shape and `dense_shape` (any backend's host copies).

    Raises TypeError (not integers), ValueError (shapes) or IndexError (out of range).
    """
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu" and not (indices.size == 0 and indices.ndim == 1):
        raise TypeError(
            f"IndexedSlices indices for variable {name} must be integers, "
            f"got dtype {indices.dtype}"
        )
    if indices.ndim != 1:
        raise ValueError(
            f"IndexedSlices indices for variable {name} must be 1-D, got shape {indices.shape}"
        )
    expected = (indices.shape[0], *shape[1:])
    if tuple(values_shape) != expected:
        raise ValueError(
            f"IndexedSlices values for variable {name} have shape {tuple(values_shape)}, "
            f"expected {expected} ({indices.shape[0]} indices, rows of shape {shape[1:]})"
        )
    if dense_shape is not None and tuple(dense_shape) != shape:
        raise ValueError(
            f"IndexedSlices dense_shape {tuple(dense_shape)} does not match "
            f"variable {name} of shape {shape}"
        )
    if indices.size:
        low, high = indices.min(), indices.max()
        if low < 0 or high >= shape[0]:
            bad = low if low < 0 else high
            raise IndexError(
                f"IndexedSlices index {int(bad)} is out of range for variable {name} "
                f"with {shape[0]} rows"
            )
    return indices.astype(np.int64, copy=False)


NUMPY_BACKEND = NumpyBackend()
