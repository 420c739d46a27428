"""The JAX backend: `nadam.Variable`s holding `jax.Array`s, updated by swapping their values.

A JAX array is immutable, so a variable here is the `nadam.Variable` object that holds one: a
step computes new arrays and the variable (and each slot, itself a `Variable` holding a JAX
array on the variable's devices) is given them. A bare `jax.Array` cannot be trained (nothing
could be updated in place); it is refused with a message that says to wrap it.

What immutability means for the memory checks of the `Backend` protocol: no two variables can
share an element (writing one never changes another), so a variable's "memory" is its holder:
`span` is one byte at the `Variable`'s address, which keeps the engine's checks that a
variable is not passed twice and is not the optimizer's own state, and gradients never need a
defensive copy (`span` of an array is None).

Exactness: eager JAX arithmetic is not always TensorFlow's (XLA:CPU rewrites `x / s` into
`x * (1 / s)`, and contracts `a * b + c` under jit), so every piece of arithmetic the engine
asks of this backend outside the kernels (clipping's sums, scales and divisions, the sums of
repeated sparse rows) runs on NumPy views of the arrays, exactly as the NumPy backend computes
it, and comes back as a JAX array. The step itself is the XLA kernel
(`nadam.kernels.jax_variables`), guarded to Keras 2's bits. Inside
`nadam.kernels.reference_only()` the readable formula runs instead, as eager JAX ops, which XLA
does rewrite: close to Keras (measured: up to 4 units in the last place after 20 float32 steps),
not bit for bit; the reference's ground truth is NumPy's, which the XLA kernel is tested
against. Gradients for `minimize` come from `jax.vjp` over the variables' values.

float64 variables need JAX's 64-bit mode on while they are stepped (else every JAX op would
silently compute in float32): a TypeError says so.

Example:
    >>> import jax.numpy as jnp
    >>> import nadam
    >>> w = nadam.Variable(jnp.array([1.0, -2.0, 3.0]))
    >>> nadam.Nadam().apply_gradients([(jnp.array([0.1, -0.5, 2.0]), w)])
    1
    >>> w.numpy()
    array([ 0.99894357, -1.9989436 ,  2.9989436 ], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nadam.backends.base import DenseGrad, SparseGrad
from nadam.backends.numpy import (
    NUMPY_BACKEND,
    TRAINABLE_DTYPES,
    checked_dtype,
    checked_host_array,
    checked_row_indices,
)
from nadam.variables import IndexedSlices, Variable, track_reads


def is_jax_array(obj: object) -> bool:
    """Whether `obj` is a `jax.Array` (a concrete one: tracers are not trainable)."""
    return isinstance(obj, jax.Array) and not isinstance(obj, jax.core.Tracer)


def _host(array: Any) -> np.ndarray:
    """A NumPy array of `array`'s value: a read-only view of a CPU JAX array, else a copy."""
    return np.asarray(array)


class JaxBackend:
    """Backend for `nadam.Variable`s whose value is a `jax.Array`."""

    name = "jax"

    def owns(self, obj: object) -> bool:
        # A bare jax.Array is owned too, so that `check_variable` can say why it cannot train.
        if isinstance(obj, Variable):
            return is_jax_array(obj._value)
        return is_jax_array(obj)

    def describe(self, var: Any) -> str:
        if isinstance(var, Variable):
            return f"'{var.name}'"
        return f"jax.Array(shape={tuple(var.shape)}, dtype={var.dtype})"

    def check_variable(self, var: Any) -> None:
        if not isinstance(var, Variable):
            raise TypeError(
                f"Variable {self.describe(var)} is a bare JAX array, which is immutable and "
                "cannot be updated in place: wrap it in nadam.Variable(array) (the optimizer "
                "then swaps in each new value), or use the optax face nadam.optax.nadam"
            )
        dtype = self.dtype(var)
        if dtype not in TRAINABLE_DTYPES:
            # bfloat16 is JAX's usual low precision, and Keras 2 never ran Nadam in it.
            hint = (" (Keras 2 had no bfloat16 Nadam to match: train a float32 copy)"
                    if dtype.name == "bfloat16" else "")
            raise TypeError(
                f"Variable {self.describe(var)} has dtype {dtype}; Nadam trains only float16, "
                f"float32 and float64 variables{hint}"
            )
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            # Every JAX op would silently compute in float32 (gradients, clipping, the step).
            raise TypeError(
                f"Variable {self.describe(var)} is float64, but JAX's 64-bit mode is off, so "
                "JAX would compute in float32: jax.config.update('jax_enable_x64', True), or "
                "step inside `with jax.enable_x64(True):`"
            )

    def dtype(self, var: Any) -> np.dtype:
        return np.dtype(self.read(var).dtype)

    def shape(self, var: Any) -> tuple[int, ...]:
        return tuple(self.read(var).shape)

    def device(self, var: Any) -> str:
        # A sharded array lives on several devices: its sharding is its place.
        return str(self.read(var).sharding)

    def read(self, var: Any) -> Any:
        # `_value`, not `.value`: the optimizer's own reads are not the loss reading it.
        return var._value if isinstance(var, Variable) else var

    def to_numpy(self, var_or_array: Any) -> np.ndarray:
        return np.array(self.read(var_or_array), copy=True)

    def signature(self, var: Any) -> Any:
        # The value is swapped every step; what the checks depend on is the holder (the
        # caller's identity check) and the value's shape, dtype and devices.
        array = self.read(var)
        return (array.shape, array.dtype, array.sharding)

    def signature_anchor(self, var: Any) -> Any:
        # The signature names no memory; keeping the value would pin a buffer the step could
        # otherwise donate (kernels.jax_variables), or keep a replaced one alive.
        return None

    def span(self, var_or_array: Any) -> tuple[int, int] | None:
        if isinstance(var_or_array, Variable):
            return (id(var_or_array), id(var_or_array) + 1)
        return None  # an immutable array is never written, so it aliases nothing

    def memory_owner(self, var_or_array: Any) -> Any:
        return id(var_or_array) if isinstance(var_or_array, Variable) else None

    def overlaps_itself(self, var: Any) -> bool:
        return False  # an immutable value has no aliased elements to update twice

    def shares_memory(self, a: Any, b: Any) -> bool:
        return a is b

    def copy(self, array: Any) -> Any:
        return array  # immutable: the array is its own copy

    def write(self, var: Any, array: Any) -> None:
        old = self.read(var)
        var._value = jax.device_put(jnp.asarray(array, dtype=old.dtype), old.sharding)

    def write_rows(self, var: Any, indices: Any, rows: Any) -> None:
        old = self.read(var)
        var._value = old.at[jnp.asarray(indices)].set(jnp.asarray(rows, dtype=old.dtype))

    def new_slot(self, var: Any, name: str, initial: np.ndarray) -> Variable:
        value = jax.device_put(jnp.asarray(initial, dtype=self.dtype(var)), self.read(var).sharding)
        return Variable(value, name=name, trainable=False)

    # --- gradients ---------------------------------------------------------------------
    def _as_array(self, value: Any, var: Any, what: str) -> Any:
        if isinstance(value, Variable):
            value = value._value
        dtype = self.dtype(var)

        def name() -> str:
            return self.describe(var)

        if is_jax_array(value):
            checked_dtype(value.dtype, dtype, name, what)
            return value
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{what} for variable {name()} is a traced value: apply_gradients runs eagerly "
                "(call it outside jax.jit), or use nadam.optax.nadam under jit"
            )
        return jnp.asarray(checked_host_array(value, dtype, name, what, "a JAX or NumPy array"))

    def gradient(self, grad: Any, var: Any) -> DenseGrad | SparseGrad:
        if isinstance(grad, IndexedSlices):
            return self._sparse_gradient(grad, var)
        array = self._as_array(grad, var, "Gradient")
        if tuple(array.shape) != self.shape(var):
            raise ValueError(
                f"Gradient for variable {self.describe(var)} has shape {tuple(array.shape)}, "
                f"but the variable has shape {self.shape(var)}"
            )
        return DenseGrad(array)

    def _sparse_gradient(self, grad: IndexedSlices, var: Any) -> SparseGrad:
        shape = self.shape(var)
        name = self.describe(var)
        if len(shape) == 0:
            raise ValueError(f"Sparse gradient for scalar variable {name}: it has no rows")
        values = self._as_array(grad.values, var, "IndexedSlices values")
        indices = grad.indices._value if isinstance(grad.indices, Variable) else grad.indices
        if isinstance(indices, jax.core.Tracer):
            raise TypeError(
                f"IndexedSlices indices for variable {name} are a traced value: "
                "apply_gradients runs eagerly (call it outside jax.jit)"
            )
        # Checked on the host (they are read there to check the range anyway).
        host = checked_row_indices(
            _host(indices), tuple(values.shape), grad.dense_shape, shape, name
        )
        return SparseGrad(values, jnp.asarray(host))

    def dedupe(self, grad: SparseGrad) -> SparseGrad:
        """Keras's sum of repeated rows, on the host in TensorFlow's order (the NumPy
        backend's `dedupe`), back as JAX arrays."""
        unique = NUMPY_BACKEND.dedupe(SparseGrad(_host(grad.values), _host(grad.indices)))
        return SparseGrad(jnp.asarray(unique.values), jnp.asarray(unique.indices))

    # --- array maths used by clipping: on the host, as the NumPy backend computes it --------
    def sqrt(self, array: Any) -> Any:
        return jnp.asarray(np.sqrt(_host(array)))

    def square_sum(self, array: Any) -> np.generic:
        return NUMPY_BACKEND.square_sum(_host(array))

    def half_square_sum(self, array: Any) -> np.generic:
        return NUMPY_BACKEND.half_square_sum(_host(array))

    def clip(self, array: Any, low: Any, high: Any) -> Any:
        return jnp.asarray(np.clip(_host(array), low, high))

    def scale(self, array: Any, factor: Any) -> Any:
        return jnp.asarray(_host(array) * factor)

    def divide(self, array: Any, divisor: Any) -> Any:
        # Not jnp's `/`: XLA turns a division by a scalar into a multiplication by its
        # reciprocal, which changes the last bit.
        return jnp.asarray(_host(array) / divisor)

    def all_reduce_sum(self, arrays: list[Any]) -> list[Any]:
        return arrays  # one process: a sharded array is summed by XLA where it is made

    # --- autodiff --------------------------------------------------------------------
    def gradients(
        self, loss: Any, variables: Sequence[Any], grad_loss: Any = None
    ) -> list[Any | None]:
        for var in variables:
            if not isinstance(var, Variable):
                raise TypeError(
                    f"minimize/get_gradients on JAX needs nadam.Variable objects (the loss "
                    f"reads them through `.value`); got {type(var).__name__}"
                )
        if not callable(loss):
            raise TypeError(
                f"The loss must be a zero-argument callable for JAX variables, got "
                f"{type(loss).__name__}"
            )
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

        value, vjp = jax.vjp(loss_of, tuple(var._value for var in variables))
        value = jnp.asarray(value)
        if grad_loss is None:
            cotangent = jnp.ones_like(value)
        else:
            cotangent = jnp.asarray(grad_loss, dtype=value.dtype)
            if cotangent.shape != value.shape:
                raise ValueError(
                    f"grad_loss has shape {tuple(cotangent.shape)}, but the loss has shape "
                    f"{tuple(value.shape)}"
                )
        (grads,) = vjp(cotangent)
        return [
            grad if id(var) in reads else None
            for var, grad in zip(variables, grads, strict=True)
        ]


JAX_BACKEND = JaxBackend()
