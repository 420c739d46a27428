"""Array backends: how the optimizer reads, writes and differentiates each array library.

The optimizer never touches an array library directly; it asks `backend_for(obj)` for the
backend that owns a variable or gradient and goes through the `Backend` protocol. Backends for
optional frameworks are imported only when an object of that framework shows up, so
`import nadam` needs NumPy alone.
"""

from __future__ import annotations

import sys

from nadam.backends.base import Backend, DenseGrad, SparseGrad
from nadam.backends.numpy import NUMPY_BACKEND
from nadam.variables import Variable

__all__ = ["Backend", "DenseGrad", "SparseGrad", "backend_for", "NUMPY_BACKEND"]


def _framework_of(obj: object) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _is_torch_tensor(obj: object) -> bool:
    # Tensor subclasses defined outside torch (a user's Parameter subclass) are torch tensors
    # too; torch is only consulted when something has imported it already.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _holds_jax_array(obj: object) -> bool:
    # By module name, so that JAX is imported only when one of its arrays shows up.
    value = obj._value if isinstance(obj, Variable) else obj
    return _framework_of(value) in ("jax", "jaxlib")


def backend_for(obj: object) -> Backend | None:
    """The backend that owns variable `obj`, or None if no backend supports it."""
    if NUMPY_BACKEND.owns(obj):
        return NUMPY_BACKEND
    if _holds_jax_array(obj):
        from nadam.backends.jax import JAX_BACKEND

        if JAX_BACKEND.owns(obj):
            return JAX_BACKEND
    if _framework_of(obj) == "torch" or _is_torch_tensor(obj):
        from nadam.backends.torch import TORCH_BACKEND

        if TORCH_BACKEND.owns(obj):
            return TORCH_BACKEND
    return None
