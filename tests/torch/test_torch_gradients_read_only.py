"""A step reads gradients and never writes them: their autograd version counters stay put.

A graph may save `p.grad` (a second loss built from the gradients, a gradient penalty with
`create_graph=True`); backward through it after `step()` must work, as with torch.optim.NAdam.
Parameters and slots, which the step does write, still count as written (their versions move).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_helpers import DTYPES, PATHS, TORCH_DTYPES, on_path

from nadam import IndexedSlices
from nadam import Nadam as KerasFaceNadam
from nadam.backends.torch import TORCH_BACKEND
from nadam.torch import Nadam


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).to(TORCH_DTYPES[dtype])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", [Nadam, torch.optim.NAdam], ids=["ours", "torch"])
def test_backward_through_a_graph_that_saved_p_grad_works_after_step(optimizer, dtype, path):
    model = _model(dtype)
    data = torch.randn(5, 4, dtype=TORCH_DTYPES[dtype])
    model(data).pow(2).sum().backward()
    weights = [torch.randn_like(p, requires_grad=True) for p in model.parameters()]
    # (p.grad * w).sum() saves p.grad for the gradient of w.
    second = sum((p.grad * w).sum() for p, w in zip(model.parameters(), weights, strict=True))
    grad_versions = [p.grad._version for p in model.parameters()]
    param_versions = [p._version for p in model.parameters()]
    opt = optimizer(model.parameters())
    with on_path(path):
        opt.step()
    assert [p.grad._version for p in model.parameters()] == grad_versions
    assert all(p._version > v for p, v in zip(model.parameters(), param_versions, strict=True))
    second.backward()  # raised "modified by an inplace operation" when step bumped p.grad
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(w.grad, p.grad)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_create_graph_gradients_stay_differentiable_through_step(dtype, path):
    # A gradient penalty: p.grad has history (create_graph=True), and its norm is taken after
    # the step. The step uses the gradient's values and leaves its graph intact.
    model = _model(dtype)
    data = torch.randn(5, 4, dtype=TORCH_DTYPES[dtype])
    params = list(model.parameters())
    grads = torch.autograd.grad(model(data).pow(3).sum(), params, create_graph=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    penalty = sum(p.grad.pow(2).sum() for p in model.parameters())
    versions = [p.grad._version for p in model.parameters()]
    opt = Nadam(model.parameters())
    with on_path(path):
        opt.step()
    assert [p.grad._version for p in model.parameters()] == versions
    assert all(opt.state[p]["m"].abs().sum() > 0 for p in model.parameters())
    penalty.backward()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_rows_and_indices_are_read_without_bumping_their_versions(dtype, path):
    torch_dtype = TORCH_DTYPES[dtype]
    table = torch.nn.Parameter(torch.ones(6, 2, dtype=torch_dtype))
    values = torch.arange(8, dtype=torch_dtype).reshape(4, 2)
    indices = torch.tensor([1, 4, 0, 5])
    coo = torch.sparse_coo_tensor(
        indices.reshape(1, -1), values, (6, 2), check_invariants=True
    )
    table.grad = coo
    opt, keras_face = Nadam([table]), KerasFaceNadam()
    other = torch.nn.Parameter(torch.ones(6, 2, dtype=torch_dtype))
    before = (values._version, indices._version, coo._values()._version)
    table_version = table._version
    with on_path(path):
        opt.step()
        keras_face.apply_gradients([(IndexedSlices(values, indices), other)])
    assert (values._version, indices._version, coo._values()._version) == before
    assert table._version > table_version
    assert torch.equal(table.detach(), other.detach())


def test_read_only_view_shares_memory_without_counting_as_a_write():
    t = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    t = t.detach().requires_grad_()
    version = t._version
    view = TORCH_BACKEND.as_read_only_numpy_view(t)
    assert isinstance(view, np.ndarray) and not view.flags.writeable
    assert view.ctypes.data == t.data_ptr() and view.shape == (2, 3)
    assert t._version == version
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1.0
    # Cached like writable views: the same read-only view while the memory is the same.
    assert TORCH_BACKEND.as_read_only_numpy_view(t) is view
    writable = TORCH_BACKEND.as_numpy_view(t)
    assert writable.flags.writeable and writable is not view and t._version == version + 1
    assert TORCH_BACKEND.as_read_only_numpy_view(t) is view
    assert TORCH_BACKEND.as_numpy_view(t) is writable
    with torch.no_grad():
        t.data = torch.zeros(3, 2)
    moved = TORCH_BACKEND.as_read_only_numpy_view(t)
    assert moved is not view and moved.shape == (3, 2) and not moved.flags.writeable
    assert TORCH_BACKEND.as_read_only_numpy_view(t.detach().t()) is None  # not contiguous
    assert TORCH_BACKEND.as_read_only_numpy_view(np.zeros(3)) is None
