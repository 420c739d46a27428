"""`Variable`, a mutable holder for an array, and `IndexedSlices`, a sparse row gradient.

NumPy arrays are updated in place so that views and fused kernels see one buffer. An immutable
array (JAX's) is swapped instead: `assign` and the optimizer's steps (`nadam.backends.jax`) give
the variable a new array. Either way the `Variable` object is the identity the optimizer keys
its slots on.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_DEFAULT_FLOAT = np.float32  # Keras's floatx: a Python float becomes float32.

# While a loss is differentiated, the backend records which variables it reads, so that a
# variable the loss never touches gets a None gradient (as in Keras) rather than zeros.
_read_logs = threading.local()


@contextmanager
def track_reads(log: set[int]) -> Iterator[None]:
    """Record in `log` the id of every Variable whose `.value` is read inside the block."""
    stack = getattr(_read_logs, "stack", None)
    if stack is None:
        stack = _read_logs.stack = []
    stack.append(log)
    try:
        yield
    finally:
        stack.pop()


def _is_jax_array(value: Any) -> bool:
    # Checked by module name so that `import nadam` never imports JAX.
    return type(value).__module__.startswith(("jax", "jaxlib"))


def _initial_array(initial_value: Any, dtype: Any) -> Any:
    if callable(initial_value):
        initial_value = initial_value()
    if isinstance(initial_value, Variable):
        initial_value = initial_value.value
    if _is_jax_array(initial_value):
        return initial_value if dtype is None else initial_value.astype(dtype)
    if dtype is None:
        if isinstance(initial_value, np.ndarray | np.generic):
            dtype = initial_value.dtype
        else:
            inferred = np.asarray(initial_value)
            dtype = _DEFAULT_FLOAT if inferred.dtype.kind == "f" else inferred.dtype
    # A copy, as tf.Variable makes: the optimizer must never write into the caller's array.
    return np.array(initial_value, dtype=dtype, copy=True)


class Variable:
    """A named, mutable array that optimizers update.

    Arithmetic, comparisons and NumPy functions act on the current value, so a `Variable`
    can be used in a loss much like an array. Equality is element-wise, as for arrays, but a
    `Variable` hashes by identity so it can key dictionaries.

    Example:
        >>> v = Variable([1.0, 2.0], name="w")
        >>> v.assign_sub([0.5, 0.5]).numpy()
        array([0.5, 1.5], dtype=float32)
    """

    __array_priority__ = 100  # so that ndarray <op> Variable defers to Variable's operators

    def __init__(
        self,
        initial_value: Any,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
        constraint: Callable[[Any], Any] | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Variable name must be a non-empty string, got {name!r}")
        if constraint is not None and not callable(constraint):
            raise TypeError(
                f"The constraint of variable '{name}' must be callable, got {constraint!r}"
            )
        self._value = _initial_array(initial_value, dtype)
        self._name = name if name is not None else "Variable"
        self.trainable = bool(trainable)
        self.constraint = constraint
        """Applied after each optimizer update, as in TF: `var.assign(constraint(var))`."""

    # --- reading -----------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The current array (not a copy): what `minimize` differentiates through."""
        stack = getattr(_read_logs, "stack", None)
        if stack:
            stack[-1].add(id(self))
        return self._value

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the current value."""
        return np.array(self._value, copy=True)

    def read_value(self) -> Any:
        """The current array, as `tf.Variable.read_value` returns it."""
        return self._value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._value.dtype)

    @property
    def name(self) -> str:
        return self._name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    # --- writing -----------------------------------------------------------------------
    def assign(self, value: Any) -> Variable:
        """Replace the value (same shape; cast to this variable's dtype). Returns self."""
        new = value.value if isinstance(value, Variable) else value
        if _is_jax_array(self._value):
            import jax.numpy as jnp

            new = jnp.asarray(new, dtype=self._value.dtype)
            if new.shape != self._value.shape:
                raise ValueError(
                    f"Cannot assign a value of shape {new.shape} to variable '{self._name}' "
                    f"of shape {self.shape}"
                )
            self._value = new
            return self
        new = np.asarray(new)
        if new.shape != self._value.shape:
            raise ValueError(
                f"Cannot assign a value of shape {new.shape} to variable '{self._name}' "
                f"of shape {self.shape}"
            )
        self._value[...] = new
        return self

    def assign_add(self, delta: Any) -> Variable:
        """Add `delta` to the value in place. Returns self."""
        return self.assign(self._combined(operator.add, delta))

    def assign_sub(self, delta: Any) -> Variable:
        """Subtract `delta` from the value in place. Returns self."""
        return self.assign(self._combined(operator.sub, delta))

    def _combined(self, op: Callable[[Any, Any], Any], delta: Any) -> Any:
        delta = _unwrap(delta)
        try:
            return op(self._value, delta)
        except ValueError as error:  # NumPy's broadcast error does not say which variable
            raise ValueError(
                f"Cannot update variable '{self._name}' of shape {self.shape} with a value of "
                f"shape {np.shape(delta)}: {error}"
            ) from error

    # --- conversions -------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = np.asarray(self.value)
        if dtype is not None:
            array = array.astype(dtype)
        return array.copy() if copy else array

    def __float__(self) -> float:
        return float(self._value)

    def __int__(self) -> int:
        return int(self._value)

    def __index__(self) -> int:
        return operator.index(self._value.item() if hasattr(self._value, "item") else self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __getitem__(self, key: Any) -> Any:
        return self._value[key]

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<nadam.Variable '{self._name}' shape={self.shape} dtype={self.dtype.name}>"


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else value


def _binary(op: Callable[[Any, Any], Any]) -> Callable[[Variable, Any], Any]:
    def forward(self: Variable, other: Any) -> Any:
        return op(self.value, _unwrap(other))

    return forward


def _reflected(op: Callable[[Any, Any], Any]) -> Callable[[Variable, Any], Any]:
    def backward(self: Variable, other: Any) -> Any:
        return op(_unwrap(other), self.value)

    return backward


for _name, _op in {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
}.items():
    setattr(Variable, f"__{_name}__", _binary(_op))
    setattr(Variable, f"__r{_name}__", _reflected(_op))
for _name, _op in {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}.items():
    setattr(Variable, f"__{_name}__", _binary(_op))
Variable.__neg__ = lambda self: -self.value  # type: ignore[method-assign]
Variable.__pos__ = lambda self: +self.value  # type: ignore[method-assign]
Variable.__abs__ = lambda self: abs(self.value)  # type: ignore[method-assign]


class IndexedSlices:
    """A sparse gradient: `values[i]` is the gradient of row `indices[i]` of a variable.

    Indices may repeat; their values are summed before the update, as in Keras.

    Example:
        >>> g = IndexedSlices(np.ones((2, 3), np.float32), np.array([0, 4]), dense_shape=(5, 3))
        >>> g.values.shape, g.indices.tolist()
        ((2, 3), [0, 4])
    """

    def __init__(self, values: Any, indices: Any, dense_shape: Any = None) -> None:
        self.values = values
        self.indices = indices
        self.dense_shape = None if dense_shape is None else _checked_dense_shape(dense_shape)

    def __repr__(self) -> str:
        shape = getattr(self.values, "shape", None)
        count = np.size(self.indices) if not hasattr(self.indices, "numel") else (
            self.indices.numel()
        )
        return (
            f"IndexedSlices(values shape={tuple(shape) if shape is not None else None}, "
            f"indices={count}, dense_shape={self.dense_shape})"
        )


def _checked_dense_shape(dense_shape: Any) -> tuple[int, ...]:
    """A shape of non-negative integers; (4.7, 3) is a TypeError, not (4, 3)."""
    if hasattr(dense_shape, "tolist"):  # an array or tensor of dimensions
        dense_shape = dense_shape.tolist()
    try:
        dims = list(dense_shape)
    except TypeError:
        raise TypeError(
            f"IndexedSlices dense_shape must be a sequence of integers, got {dense_shape!r}"
        ) from None
    shape = []
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
            raise TypeError(
                f"IndexedSlices dense_shape must hold integers, got {dense_shape!r}"
            )
        if dim < 0:
            raise ValueError(f"IndexedSlices dense_shape must be >= 0, got {dense_shape!r}")
        shape.append(int(dim))
    return tuple(shape)
