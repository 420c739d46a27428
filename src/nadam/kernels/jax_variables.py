"""The Nadam step for `nadam.Variable`s holding JAX arrays: `kernels.xla` under `jax.jit`.

The Keras face runs eagerly: the step's scalars come from the engine (`nadam.step_scalars`,
computed on the host from the concrete iteration count) as 0-d arrays of the variables' dtype,
and only the element-wise update runs on the device, as one jitted call per group of
variables (dense) or per variable (sparse). `kernels.xla` guards that update against XLA's
rewrites that would change its bits (fused multiply-adds, a division turned into a
multiplication by a reciprocal), so it is Keras 2's step bit for bit.

float16 is the exception: XLA may keep float16 intermediates in float32 (its "excess
precision"), so a float16 group is stepped on the host by the NumPy kernels (exact as the NumPy
face, float16 being rare and small) and its results put back on the variables' devices.

The slots are the optimizer's own arrays, so their old buffers are donated to the new ones
(no second copy of m and v while the step runs); a slot's array that is also another argument
of the call is copied first. A variable's buffer is donated only when nothing but the
`Variable` holds its array (CPython's reference count says so): a caller may still hold
`var.value` from before the step (a loss closed over it, a logged copy), and a donated buffer
would be deleted under it, so then the step writes a new buffer and the old value stays valid
— TensorFlow's rule for a variable's buffer too (updated in place only when nothing else
references it). Donating matters: a fresh 64 MB buffer per step costs its page faults, about
as much as the step itself at 16M parameters. Each result is swapped into its `Variable` only
after the whole call returned; every check ran before it (the engine), so what is left to fail
is XLA's run itself (out of memory), after which the donated slots and variables are gone: the
one way a step of this face is not all or nothing.

Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from nadam import Variable
    >>> from nadam.backends.jax import JAX_BACKEND
    >>> from nadam.step_scalars import nadam_scalars
    >>> s, _ = nadam_scalars(np.dtype("float32"), iterations=0, momentum_cache=1.0)
    >>> x, m, v = (Variable(jnp.full(2, value)) for value in (1.0, 0.0, 0.0))
    >>> apply_dense(JAX_BACKEND, [x], [jnp.ones(2)], [m], [v], s)
    >>> x.numpy()
    array([0.99894357, 0.99894357], dtype=float32)
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nadam.backends.jax import is_jax_array
from nadam.kernels import KernelChoice, NadamScalars, reference, xla

# Steps in float16 run on the host (see above): XLA does not round each op back to float16.
_ON_THE_HOST = frozenset((np.dtype(np.float16),))

NAME = "jax-xla"


def _unpacked(packed: Any) -> NadamScalars:
    # Elements of an argument: run-time values under jit, as kernels.xla's guards need.
    return NadamScalars(*(packed[i] for i in range(len(NadamScalars._fields))))


def _dense_group(
    xs: list[Any], gs: list[Any], ms: list[Any], vs: list[Any], packed: Any
) -> tuple[list[Any], list[Any], list[Any]]:
    s = _unpacked(packed)
    results = [xla.dense_update(x, g, m, v, s) for x, g, m, v in zip(xs, gs, ms, vs, strict=True)]
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def _dense_split(
    donated_xs: list[Any], kept_xs: list[Any], order: tuple[bool, ...], gs: list[Any],
    ms: list[Any], vs: list[Any], packed: Any,
) -> tuple[list[Any], list[Any], list[Any]]:
    # The variables in their order again: `order[i]` says whether the i-th one is donated.
    donated, kept = iter(donated_xs), iter(kept_xs)
    xs = [next(donated) if is_donated else next(kept) for is_donated in order]
    return _dense_group(xs, gs, ms, vs, packed)


def _sparse_one(
    x: Any, indices: Any, values: Any, m: Any, v: Any, packed: Any
) -> tuple[Any, Any, Any]:
    return xla.sparse_update(x, indices, values, m, v, _unpacked(packed))


# m and v are donated always, the variables whose arrays nobody else holds as well (the
# first argument of the dense call, the first of the sparse one's donating twin).
_dense_jitted = jax.jit(_dense_split, static_argnums=(2,), donate_argnums=(0, 4, 5))
_sparse_jitted = jax.jit(_sparse_one, donate_argnums=(3, 4))
_sparse_jitted_donating_x = jax.jit(_sparse_one, donate_argnums=(0, 3, 4))

# References to a variable's array while `_held_only_by_its_variable` looks at it: the
# Variable's `_value`, the caller's list of values and `sys.getrefcount`'s own argument.
_OWN_REFERENCES = 3


def _held_only_by_its_variable(values: list[Any], index: int) -> bool:
    """Whether `values[index]` (read from its Variable) is referenced by nothing else, so that
    its buffer can be donated without deleting an array someone holds."""
    return sys.getrefcount(values[index]) <= _OWN_REFERENCES


def _precision(dtype: np.dtype) -> contextlib.AbstractContextManager[Any]:
    """float64 arrays keep float64 arithmetic even where the caller switched x64 on only
    around making them (the optimizer refuses that case up front; a direct call may not)."""
    if dtype != np.float64 or jax.config.jax_enable_x64:
        return contextlib.nullcontext()
    return jax.enable_x64(True)


def device_scalars(s: NadamScalars, dtype: np.dtype) -> Any:
    """The engine's host scalars packed in one JAX vector of `dtype` (bits unchanged): one
    transfer per step instead of one per scalar."""
    return jnp.asarray(np.array(s, dtype=dtype))


def _donatable(slots: Sequence[Any], others: Sequence[Any]) -> list[Any]:
    """`slots` ready to donate: an array that is also another argument of the call (the same
    array as two slots, or a slot's array also passed as a variable's value or a gradient)
    is copied first, so that donating it deletes nothing anyone else holds."""
    seen = {id(array) for array in others}
    result = []
    for array in slots:
        result.append(array if id(array) not in seen else jnp.array(array, copy=True))
        seen.add(id(array))
    return result


def apply_dense(
    backend: Any, xs: Sequence[Any], gs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
    s: NadamScalars,
) -> None:
    """One dense step of a group of variables of one dtype, in one jitted call."""
    if not xs:
        return
    dtype = backend.dtype(xs[0])
    if dtype in _ON_THE_HOST:
        _dense_on_the_host(backend, xs, gs, ms, vs, s)
        return
    with _precision(dtype):
        read = backend.read
        x_values, g_values = [read(x) for x in xs], [read(g) for g in gs]
        slots = _donatable([read(m) for m in ms] + [read(v) for v in vs], x_values + g_values)
        order = tuple(_held_only_by_its_variable(x_values, i) for i in range(len(x_values)))
        donated = [value for value, is_donated in zip(x_values, order, strict=True) if is_donated]
        kept = [value for value, is_donated in zip(x_values, order, strict=True)
                if not is_donated]
        del x_values  # the lists above now hold the only references the call needs
        new_xs, new_ms, new_vs = _dense_jitted(
            donated, kept, order, g_values, slots[: len(ms)], slots[len(ms):],
            device_scalars(s, dtype),
        )
    for holders, values in ((xs, new_xs), (ms, new_ms), (vs, new_vs)):
        for holder, value in zip(holders, values, strict=True):
            holder._value = value  # the swap: the whole call succeeded


def _row_indices(indices: Any) -> Any:
    """Indices in JAX's default integer type of the moment (int32 unless x64 is on): an
    int64 array made under x64 would be truncated, with a warning, by the ops that read it."""
    if is_jax_array(indices) and indices.dtype == jax.dtypes.canonicalize_dtype(np.int64):
        return indices
    return jnp.asarray(np.asarray(indices))


def apply_sparse(
    backend: Any, x: Any, g_rows: Any, indices: Any, m: Any, v: Any, s: NadamScalars
) -> None:
    """One sparse step of one variable over unique row `indices` (Keras's sparse rule)."""
    dtype = backend.dtype(x)
    if dtype in _ON_THE_HOST:
        _sparse_on_the_host(backend, x, g_rows, indices, m, v, s)
        return
    with _precision(dtype):
        values = [backend.read(x)]
        rows = jnp.asarray(backend.read(g_rows))
        m_value, v_value = _donatable([backend.read(m), backend.read(v)], [values[0], rows])
        sole = _held_only_by_its_variable(values, 0)
        step = _sparse_jitted_donating_x if sole else _sparse_jitted
        new_x, new_m, new_v = step(
            values.pop(), _row_indices(backend.read(indices)), rows, m_value, v_value,
            device_scalars(s, dtype),
        )
    x._value, m._value, v._value = new_x, new_m, new_v


def _dense_on_the_host(
    backend: Any, xs: Sequence[Any], gs: Sequence[Any], ms: Sequence[Any], vs: Sequence[Any],
    s: NadamScalars,
) -> None:
    from nadam.backends.numpy import NUMPY_BACKEND

    host = [[backend.to_numpy(a) for a in group] for group in (xs, ms, vs)]
    grads = [backend.to_numpy(g) for g in gs]
    reference.apply_dense(NUMPY_BACKEND, host[0], grads, *host[1:], s)
    for holders, arrays in zip((xs, ms, vs), host, strict=True):
        for holder, array in zip(holders, arrays, strict=True):
            backend.write(holder, array)


def _sparse_on_the_host(
    backend: Any, x: Any, g_rows: Any, indices: Any, m: Any, v: Any, s: NadamScalars
) -> None:
    from nadam.backends.numpy import NUMPY_BACKEND

    host = [backend.to_numpy(a) for a in (x, m, v)]
    reference.apply_sparse(NUMPY_BACKEND, host[0], backend.to_numpy(g_rows),
                           backend.to_numpy(indices), host[1], host[2], s)
    for holder, array in zip((x, m, v), host, strict=True):
        backend.write(holder, array)


@functools.cache
def _choice() -> KernelChoice:
    return KernelChoice(NAME, apply_dense, apply_sparse)


def choose(backend: Any, device: str, dtype: np.dtype) -> KernelChoice | None:
    """This kernel for groups of the JAX backend, on any device; else None."""
    if getattr(backend, "name", None) != "jax":
        return None
    return _choice()
