"""The Keras 2 oracle beside `nadam.Nadam` on `nadam.Variable`s holding JAX arrays.

`JaxTwin` is the conformance suite's `Twin` with our side's variables holding `jax.Array`s and
our side's gradients given as JAX arrays (dense, or `IndexedSlices` of JAX values and indices);
the oracle side is unchanged. float64 needs JAX's 64-bit mode: `precision(dtype)` switches it
on for the block only, so the rest of the test process keeps JAX's default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from conformance.oracle import Twin, tf, to_tf_gradient

from nadam import IndexedSlices, Variable


def precision(dtype: Any) -> contextlib.AbstractContextManager[Any]:
    """JAX's 64-bit mode inside the block for float64, nothing otherwise."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def to_jax(grad: Any) -> Any:
    """A NumPy gradient (array or `IndexedSlices`) as JAX arrays, keeping its dtype."""
    if grad is None:
        return None
    if isinstance(grad, IndexedSlices):
        return IndexedSlices(jnp.asarray(grad.values), jnp.asarray(grad.indices),
                             grad.dense_shape)
    return jnp.asarray(grad)


class JaxTwin(Twin):
    """`Twin` whose `nadam` side trains JAX Variables with JAX gradients."""

    def __init__(self, arrays: Sequence[np.ndarray], path: str = "default", **kwargs: Any) -> None:
        super().__init__(arrays, path, **kwargs)

    def add_variables(self, arrays: Sequence[np.ndarray]) -> None:
        for array in arrays:
            number = len(self.our_vars)
            self.our_vars.append(Variable(jnp.asarray(array), name=f"x{number}"))
            self.tf_vars.append(tf.Variable(np.array(array), name=f"x{number}"))

    def step(self, grads: Sequence[Any], which: Sequence[int] | None = None) -> None:
        which = range(len(self.our_vars)) if which is None else which
        ours = [(to_jax(g), self.our_vars[i]) for g, i in zip(grads, which, strict=True)]
        theirs = [(to_tf_gradient(g), self.tf_vars[i]) for g, i in zip(grads, which, strict=True)]
        self.ours.apply_gradients(ours)
        self.keras.apply_gradients(theirs)
