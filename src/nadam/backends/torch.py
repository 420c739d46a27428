"""The PyTorch backend: `torch.Tensor`s and `nn.Parameter`s, updated in place.

Variables are leaf tensors that require grad, on the CPU or a CUDA device, of dtype float16,
float32 or float64. Their slots are tensors on the same device with the same dtype. Every write
goes through `copy_` or an in-place index op under `torch.no_grad()`, so the parameter object,
its storage and `param.data` are never replaced.

Two places where torch's own ops would break bit-identity with Keras, and what we do instead:

- torch's vectorized CPU `sqrt` is not correctly rounded on some CPUs (AVX-512 builds differ from
  IEEE `sqrt` in the last bit for a sizeable fraction of inputs), so on the CPU `sqrt`, the sum
  of squares behind clipping and the duplicate-row sums of sparse gradients run in NumPy on
  zero-copy views: the same code as the NumPy backend, hence the same bits.
- torch's CUDA division by a host (Python) scalar multiplies by its reciprocal, so on CUDA we
  divide by a 0-d tensor on the device instead (see also `nadam.kernels.torch_foreach`).

Gradients for `minimize` come from `torch.autograd.grad`; data-parallel sums use
`torch.distributed` when a process group is initialized.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nadam import memory
from nadam.backends import torch_shards
from nadam.backends.base import DenseGrad, SparseGrad
from nadam.backends.numpy import NUMPY_BACKEND
from nadam.variables import IndexedSlices

_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}
_VIEWABLE_DTYPES = frozenset((*_NUMPY_DTYPES, torch.int32, torch.int64))
# Exact types whose views the cache serves without the full checks: a subclass (a DTensor, a
# user's tensor subclass) may lay out its memory in its own way, so it takes them every time.
_TENSOR_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")


def _is_cpu(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (strided views allowed); copies only a lazy negation."""
    return tensor.detach().resolve_conj().resolve_neg().numpy()


class _ViewCache:
    """The same NumPy views for a tensor's memory every time it is lent.

    The fused CPU kernel caches its address tables under the identity of the views it gets
    (`nadam.kernels.cpu`), so a parameter or slot that is lent a fresh view every step would
    rebuild its table every step. A tensor has up to two views: a writable one and a read-only
    one (a view of the first, for gradients). They are reused while the tensor lives and still
    has the same memory, dtype and shape; the entry goes when the tensor is freed. A tensor
    whose `.data` was replaced keeps its old storage alive until its next lending replaces the
    views.
    """

    def __init__(self) -> None:
        # id(tensor) -> [weakref, data_ptr, dtype, shape, strides, writable view, read-only
        # view or None]
        self._entries: dict[int, list[Any]] = {}

    def cached(self, tensor: torch.Tensor, writable: bool = True) -> np.ndarray | None:
        """The view lent before, if `tensor` still has the same memory, dtype, shape and
        strides (and no lazy negation); None otherwise. Costs a few attribute reads."""
        entry = self._entries.get(id(tensor))
        if (
            entry is None
            or entry[0]() is not tensor
            or tensor.layout is not torch.strided
            or tensor.data_ptr() != entry[1]
            or tensor.dtype is not entry[2]
            or tensor.shape != entry[3]
            or tensor.stride() != entry[4]
            or tensor.is_neg()
        ):
            return None
        if writable:
            return entry[5]
        read_only = entry[6]
        if read_only is None:
            read_only = entry[5].view()
            read_only.flags.writeable = False
            entry[6] = read_only
        return read_only

    def view_of(self, tensor: torch.Tensor, writable: bool = True) -> np.ndarray:
        """The view of a tensor that NumPy can see as it is (`TorchBackend._viewable`)."""
        view = self.cached(tensor, writable)
        if view is None:
            self._new_entry(tensor)
            view = self.cached(tensor, writable)
        return view

    def _new_entry(self, tensor: torch.Tensor) -> None:
        entries = self._entries
        key = id(tensor)

        def forget(ref: Any, key: int = key) -> None:
            if entries.get(key, (None,))[0] is ref:
                del entries[key]

        entries[key] = [
            weakref.ref(tensor, forget), tensor.data_ptr(), tensor.dtype, tensor.shape,
            tensor.stride(), tensor.detach().numpy(), None,
        ]


@torch.compiler.disable
def _view_outside_the_graph(backend: TorchBackend, tensor: torch.Tensor) -> np.ndarray | None:
    """A read-only view lent while dynamo traces a step (a compiled function calling `step()`).

    Traced, the NumPy calls behind a view would become tensor operations and the fused kernel
    would not get an ndarray; here dynamo breaks the graph and the view is made eagerly. Only
    the traced path pays for this: eagerly, `torch.compiler.is_compiling()` is one cheap call.
    """
    return backend._views.view_of(tensor, writable=False) if backend._viewable(tensor) else None


class TorchBackend:
    """Backend for `torch.Tensor` and `nn.Parameter` variables on the CPU and CUDA."""

    name = "torch"

    def __init__(self) -> None:
        self._views = _ViewCache()

    def owns(self, obj: object) -> bool:
        return isinstance(obj, torch.Tensor)

    def describe(self, var: Any) -> str:
        kind = "Parameter" if isinstance(var, torch.nn.Parameter) else type(var).__name__
        return (
            f"{kind}(shape={tuple(var.shape)}, dtype={var.dtype}, device={var.device})"
        )

    def check_variable(self, var: Any) -> None:
        self.check_tensor(var)
        if not var.requires_grad:
            raise ValueError(
                f"Variable {self.describe(var)} does not require grad; nadam trains tensors "
                "created with requires_grad=True (e.g. nn.Parameter)"
            )
        if not var.is_leaf:
            raise ValueError(
                f"Variable {self.describe(var)} is not a leaf tensor (it was computed from "
                "other tensors); pass the leaf parameters themselves"
            )

    def check_tensor(self, var: Any) -> None:
        """The checks every trainable tensor passes, leaf and requires_grad aside."""
        if var.layout is not torch.strided:
            raise TypeError(
                f"Variable {self.describe(var)} has layout {var.layout}; nadam trains dense "
                "(strided) tensors"
            )
        if var.dtype not in _NUMPY_DTYPES:
            raise TypeError(
                f"Variable {self.describe(var)} has dtype {var.dtype}; Nadam trains only "
                "float16, float32 and float64 variables"
            )
        # `is_cpu` first: reading `.device` builds a new object, which shows at every step.
        if not var.is_cpu and var.device.type not in SUPPORTED_DEVICE_TYPES:
            raise TypeError(
                f"Variable {self.describe(var)} is on device '{var.device}'; nadam updates "
                "tensors on the CPU and on CUDA devices only (it never copies a parameter "
                "elsewhere)"
            )

    def dtype(self, var: Any) -> np.dtype:
        try:
            return _NUMPY_DTYPES[var.dtype]
        except KeyError:
            raise TypeError(f"Tensor {self.describe(var)} has no NumPy float dtype") from None

    def shape(self, var: Any) -> tuple[int, ...]:
        return tuple(var.shape)

    def device(self, var: Any) -> str:
        return str(var.device)

    def read(self, var: Any) -> torch.Tensor:
        # A detached alias: same storage, no autograd history for the optimizer's arithmetic.
        return var.detach()

    def as_numpy_view(self, var_or_array: Any) -> np.ndarray | None:
        """A writable zero-copy NumPy view of a contiguous CPU tensor, else None.

        Fused CPU kernels use it to update parameters and slots in place. Lending a writable
        view counts as an in-place write for autograd: the tensor's version counter is bumped,
        so a backward pass through a graph that saved it fails loudly, as it would after
        torch's own in-place ops.

        Example:
            >>> t = torch.zeros(3)
            >>> TORCH_BACKEND.as_numpy_view(t)[0] = 1.0
            >>> t.tolist()
            [1.0, 0.0, 0.0]
        """
        view = self._views.cached(var_or_array) if type(var_or_array) in _TENSOR_TYPES else None
        if view is None:
            if not self._viewable(var_or_array):
                return None
            view = self._views.view_of(var_or_array)
        torch.autograd.graph.increment_version(var_or_array)
        return view

    def mark_written(self, tensors: Sequence[torch.Tensor]) -> None:
        """Count a write to each tensor through a view lent earlier (autograd's version
        counters), as `as_numpy_view` does at the lending itself."""
        torch.autograd.graph.increment_version(tensors)

    def as_read_only_numpy_view(self, array: Any) -> np.ndarray | None:
        """A read-only zero-copy NumPy view of a contiguous CPU tensor, else None.

        For what a kernel only reads (gradients, sparse indices). It is not a write, so the
        tensor's version counter stays as it is: a graph that saved the gradient (a loss built
        from `p.grad`, a gradient penalty) can still be differentiated after the step.

        Example:
            >>> g = torch.ones(3)
            >>> view = TORCH_BACKEND.as_read_only_numpy_view(g)
            >>> view.flags.writeable, g._version
            (False, 0)
        """
        if torch.compiler.is_compiling():
            return _view_outside_the_graph(self, array)
        view = self._views.cached(array, False) if type(array) in _TENSOR_TYPES else None
        if view is None and self._viewable(array):
            view = self._views.view_of(array, writable=False)
        return view

    @staticmethod
    def _viewable(tensor: Any) -> bool:
        """Whether NumPy can see `tensor`'s memory as it is: a contiguous CPU tensor of a
        NumPy dtype, with no lazy negation or conjugation pending."""
        return (
            isinstance(tensor, torch.Tensor)
            and tensor.layout is torch.strided
            and tensor.is_cpu
            and tensor.dtype in _VIEWABLE_DTYPES
            and tensor.is_contiguous()
            and not tensor.is_neg()
            and not tensor.is_conj()
        )

    def signature(self, var: Any) -> Any:
        return (
            var.data_ptr(), var.shape, var.stride(), var.dtype, var.requires_grad, var.is_leaf,
            var.layout,
        )

    def signature_anchor(self, var: Any) -> Any:
        # An alias of the storage, not the tensor: `p.data = other` must not free the memory
        # whose address the signature remembers.
        return self.read(var)

    def span(self, var_or_array: Any) -> tuple[int, int] | None:
        tensor = var_or_array
        if type(tensor) not in _TENSOR_TYPES and torch_shards.is_sharded(tensor):
            tensor = tensor._local_tensor  # a DTensor (a slot) lives where its shard does
        if not isinstance(tensor, torch.Tensor) or tensor.layout is not torch.strided:
            return None
        itemsize = tensor.element_size()
        return memory.strided_span(
            tensor.data_ptr(), tensor.shape, [s * itemsize for s in tensor.stride()], itemsize
        )

    def memory_owner(self, var_or_array: Any) -> Any:
        return None  # a storage's identity costs as much as the span: compare spans

    def overlaps_itself(self, var: Any) -> bool:
        return memory.strided_self_overlap(var.shape, var.stride(), 1)

    def shares_memory(self, a: Any, b: Any) -> bool:
        if a.is_cpu and b.is_cpu and a.dtype in _VIEWABLE_DTYPES and b.dtype in _VIEWABLE_DTYPES:
            return bool(np.shares_memory(_numpy_view(a), _numpy_view(b)))
        return True  # on a device: the byte spans meet, which is all that can be told cheaply

    def copy(self, array: Any) -> torch.Tensor:
        return array.detach().clone()

    def to_numpy(self, var_or_array: Any) -> np.ndarray:
        """A NumPy copy; of a DTensor, this rank's local shard."""
        tensor = var_or_array
        if type(tensor) not in _TENSOR_TYPES and torch_shards.is_sharded(tensor):
            tensor = tensor._local_tensor
        return tensor.detach().to("cpu", copy=True).resolve_neg().numpy()

    @staticmethod
    def _as_tensor(array: Any) -> torch.Tensor:
        if isinstance(array, torch.Tensor):
            return array
        array = np.asarray(array)
        if not array.flags.writeable:  # torch.from_numpy warns about read-only arrays
            array = array.copy()
        return torch.from_numpy(array)

    def write(self, var: Any, array: Any) -> None:
        with torch.no_grad():
            var.copy_(self._as_tensor(array))

    def write_rows(self, var: Any, indices: Any, rows: Any) -> None:
        with torch.no_grad():
            var.index_copy_(0, self._as_tensor(indices), self._as_tensor(rows))

    def new_slot(self, var: Any, name: str, initial: np.ndarray) -> torch.Tensor:
        slot = torch.empty(initial.shape, dtype=var.dtype, device=var.device)
        slot.copy_(torch.from_numpy(np.array(initial, order="C")))
        return slot

    # --- gradients ---------------------------------------------------------------------
    def _check_grad_tensor(self, tensor: Any, var: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{what} for variable {self.describe(var)} must be a torch tensor, got "
                f"{type(tensor).__name__}"
            )
        if tensor.dtype is not var.dtype:  # torch dtypes are singletons
            raise ValueError(
                f"{what} for variable {self.describe(var)} has dtype {tensor.dtype}, but the "
                f"variable has dtype {var.dtype}"
            )
        if not (tensor.is_cpu and var.is_cpu) and tensor.device != var.device:
            raise ValueError(
                f"{what} for variable {self.describe(var)} is on device '{tensor.device}', but "
                f"the variable is on '{var.device}'"
            )
        # Detached only if it has history (create_graph=True): keeping the same tensor object
        # from step to step lets the fused kernel reuse its NumPy view.
        return tensor.detach() if tensor.requires_grad else tensor

    def gradient(self, grad: Any, var: Any) -> DenseGrad | SparseGrad:
        if isinstance(grad, IndexedSlices):
            return self._slices_gradient(grad, var)
        tensor = self._check_grad_tensor(grad, var, "Gradient")
        layout = tensor.layout
        if layout is torch.sparse_coo:
            return self._coo_gradient(tensor, var)
        if layout is not torch.strided:
            raise TypeError(
                f"Gradient for variable {self.describe(var)} has layout {tensor.layout}; "
                "expected a dense tensor or a sparse COO tensor of rows"
            )
        if tensor.shape != var.shape:
            raise ValueError(
                f"Gradient for variable {self.describe(var)} has shape {tuple(tensor.shape)}, "
                f"but the variable has shape {tuple(var.shape)}"
            )
        return DenseGrad(tensor)

    def _coo_gradient(self, grad: torch.Tensor, var: torch.Tensor) -> SparseGrad:
        name = self.describe(var)
        if tuple(grad.shape) != tuple(var.shape):
            raise ValueError(
                f"Sparse gradient for variable {name} has shape {tuple(grad.shape)}, but the "
                f"variable has shape {tuple(var.shape)}"
            )
        if grad.sparse_dim() != 1:
            raise ValueError(
                f"Sparse gradient for variable {name} is sparse in {grad.sparse_dim()} "
                "dimensions; nadam takes row-sparse gradients (sparse_dim() == 1, as "
                "nn.Embedding(sparse=True) produces) or dense ones (use .to_dense())"
            )
        # _indices/_values keep an uncoalesced tensor's order, which decides how repeated rows
        # are summed (in order of appearance, as Keras does).
        return self._rows(grad._values(), grad._indices()[0], var)

    def _slices_gradient(self, grad: IndexedSlices, var: torch.Tensor) -> SparseGrad:
        name = self.describe(var)
        if var.dim() == 0:
            raise ValueError(f"Sparse gradient for scalar variable {name}: it has no rows")
        values = self._check_grad_tensor(grad.values, var, "IndexedSlices values")
        indices = grad.indices
        if isinstance(indices, torch.Tensor):
            if indices.dtype.is_floating_point or indices.dtype.is_complex or (
                indices.dtype == torch.bool
            ):
                raise TypeError(
                    f"IndexedSlices indices for variable {name} must be integers, got dtype "
                    f"{indices.dtype}"
                )
            indices = indices.detach().to(device=var.device, dtype=torch.int64)
        else:
            array = np.asarray(indices)
            if array.dtype.kind not in "iu" and not (array.size == 0 and array.ndim == 1):
                raise TypeError(
                    f"IndexedSlices indices for variable {name} must be integers, got dtype "
                    f"{array.dtype}"
                )
            indices = torch.as_tensor(array.astype(np.int64), device=var.device)
        if indices.dim() != 1:
            raise ValueError(
                f"IndexedSlices indices for variable {name} must be 1-D, got shape "
                f"{tuple(indices.shape)}"
            )
        expected = (indices.shape[0], *var.shape[1:])
        if tuple(values.shape) != expected:
            raise ValueError(
                f"IndexedSlices values for variable {name} have shape {tuple(values.shape)}, "
                f"expected {expected} ({indices.shape[0]} indices, rows of shape "
                f"{tuple(var.shape[1:])})"
            )
        if grad.dense_shape is not None and tuple(grad.dense_shape) != tuple(var.shape):
            raise ValueError(
                f"IndexedSlices dense_shape {tuple(grad.dense_shape)} does not match variable "
                f"{name} of shape {tuple(var.shape)}"
            )
        return self._rows(values, indices, var)

    def _rows(self, values: torch.Tensor, indices: torch.Tensor, var: torch.Tensor) -> SparseGrad:
        if indices.numel():
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= var.shape[0]:
                bad = low if low < 0 else high
                raise IndexError(
                    f"Sparse gradient index {bad} is out of range for variable "
                    f"{self.describe(var)} with {var.shape[0]} rows"
                )
        return SparseGrad(values, indices.to(torch.int64))

    def dedupe(self, grad: SparseGrad) -> SparseGrad:
        values, indices = grad.values, grad.indices
        if _is_cpu(values):
            # NumPy's sequential np.add.at is Keras's summation order; torch's index_add_
            # is not in float16. Zero-copy views in, new tensors out.
            views = SparseGrad(_numpy_view(values), _numpy_view(indices))
            unique = NUMPY_BACKEND.dedupe(views)
            if unique is views:  # no repeated index and nothing to flush
                return grad
            return SparseGrad(torch.from_numpy(unique.values), torch.from_numpy(unique.indices))
        from nadam.kernels import reference

        tiny = reference.smallest_normal(values.dtype)
        unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
        if unique.numel() == indices.numel():
            if tiny is None:
                return grad
            # TensorFlow's segment sum adds each value to +0: zeros and subnormals give +0.
            return SparseGrad(values.masked_fill(values.abs() < tiny, 0), indices)
        positions = torch.arange(indices.numel(), device=indices.device)
        first = torch.full_like(unique, indices.numel()).scatter_reduce_(
            0, inverse, positions, reduce="amin"
        )
        order = torch.argsort(first, stable=True)  # first-occurrence order, as tf.unique
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        summed = values.new_zeros((unique.numel(), *values.shape[1:]))
        # On CUDA index_add_ sums with atomics: the order of repeated rows is not fixed, and
        # its partial sums are not flushed; the values it reads and its sums are (FTZ/DAZ).
        if tiny is not None:
            values = reference.flush(values)
        summed.index_add_(0, rank[inverse], values)
        if tiny is not None:
            summed = reference.flush(summed)
        return SparseGrad(summed, unique[order])

    # --- array maths used by clipping and the reference kernel ------------------------------
    def sqrt(self, array: Any) -> torch.Tensor:
        if _is_cpu(array):
            return torch.from_numpy(np.asarray(np.sqrt(_numpy_view(array))))
        return torch.sqrt(array)

    def square_sum(self, array: Any) -> np.generic:
        if _is_cpu(array):
            return NUMPY_BACKEND.square_sum(_numpy_view(array))  # TensorFlow's order, exact
        # A device tensor is summed where it lives, in torch's order: within an ulp or so of
        # TensorFlow's, not bit for bit (copying it to the host would cost more than the step).
        return _NUMPY_DTYPES[array.dtype].type((array * array).sum().item())

    def half_square_sum(self, array: Any) -> np.generic:
        """`tf.nn.l2_loss(array)`: exact on the CPU, torch's order on a device."""
        if _is_cpu(array):
            return NUMPY_BACKEND.half_square_sum(_numpy_view(array))
        return _NUMPY_DTYPES[array.dtype].type(((array * array) * 0.5).sum().item())

    def clip(self, array: Any, low: Any, high: Any) -> torch.Tensor:
        return torch.clamp(array, min=float(low), max=float(high))

    def scale(self, array: Any, factor: Any) -> torch.Tensor:
        return array * float(factor)

    def divide(self, array: Any, divisor: Any) -> torch.Tensor:
        if _is_cpu(array):
            return array / float(divisor)
        # A device tensor, not a host scalar: CUDA would multiply by the reciprocal instead.
        return array / torch.tensor(float(divisor), dtype=array.dtype, device=array.device)

    # --- autodiff --------------------------------------------------------------------
    def gradients(
        self, loss: Any, variables: Sequence[Any], grad_loss: Any = None
    ) -> list[Any | None]:
        for var in variables:
            self.check_variable(var)
        if callable(loss) and not isinstance(loss, torch.Tensor):
            with torch.enable_grad():
                value = loss()
        else:
            value = loss
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                "The loss must be a zero-argument callable returning a torch tensor, or a "
                f"tensor with a graph; got {type(value).__name__}"
            )
        if grad_loss is None:
            cotangent = torch.ones_like(value)
        else:
            cotangent = torch.as_tensor(grad_loss, dtype=value.dtype, device=value.device)
            if tuple(cotangent.shape) != tuple(value.shape):
                raise ValueError(
                    f"grad_loss has shape {tuple(cotangent.shape)}, but the loss has shape "
                    f"{tuple(value.shape)}"
                )
        if value.grad_fn is None and not value.requires_grad:
            return [None] * len(variables)  # the loss reads no variable
        grads = torch.autograd.grad(
            value, list(variables), grad_outputs=cotangent, allow_unused=True
        )
        return list(grads)

    # --- data parallel ---------------------------------------------------------------
    def all_reduce_sum(self, arrays: list[Any]) -> list[Any]:
        """Sum gradients over the ranks of the default process group (identity without one).

        Dense gradients are summed with one `all_reduce(SUM)` per device and dtype on a flat
        copy (the caller's tensors are never changed); sparse rows are all-gathered, values
        and indices concatenated in rank order, and summed later where duplicates are.
        """
        if not _distributed_world():
            return arrays
        result = list(arrays)
        buckets: dict[tuple[str, torch.dtype], list[int]] = {}
        for position, grad in enumerate(arrays):
            if isinstance(grad, SparseGrad):
                result[position] = _all_gather_rows(grad)
                continue
            tensor = grad.array if isinstance(grad, DenseGrad) else grad
            buckets.setdefault((str(tensor.device), tensor.dtype), []).append(position)
        for positions in buckets.values():
            tensors = [_dense(arrays[p]) for p in positions]
            flat = torch.cat([t.reshape(-1) for t in tensors])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            for position, tensor, piece in zip(
                positions, tensors, flat.split([t.numel() for t in tensors]), strict=True
            ):
                summed = piece.view(tensor.shape)
                result[position] = DenseGrad(summed) if isinstance(
                    arrays[position], DenseGrad
                ) else summed
        return result


def _dense(grad: Any) -> torch.Tensor:
    return grad.array if isinstance(grad, DenseGrad) else grad


def _distributed_world() -> bool:
    """Whether a torch.distributed process group with more than one rank is running."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_rows(grad: SparseGrad) -> SparseGrad:
    dist = torch.distributed
    world = dist.get_world_size()
    values, indices = grad.values, grad.indices
    count = torch.tensor([indices.numel()], dtype=torch.int64, device=indices.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    # all_gather needs equal shapes: pad every rank's rows to the longest, then trim.
    padded_values = values.new_zeros((longest, *values.shape[1:]))
    padded_values[: indices.numel()] = values
    padded_indices = indices.new_zeros(longest)
    padded_indices[: indices.numel()] = indices
    gathered_values = [torch.empty_like(padded_values) for _ in range(world)]
    gathered_indices = [torch.empty_like(padded_indices) for _ in range(world)]
    dist.all_gather(gathered_values, padded_values)
    dist.all_gather(gathered_indices, padded_indices)
    return SparseGrad(
        torch.cat([v[:n] for v, n in zip(gathered_values, sizes, strict=True)]),
        torch.cat([i[:n] for i, n in zip(gathered_indices, sizes, strict=True)]),
    )


TORCH_BACKEND = TorchBackend()
