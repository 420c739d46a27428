"""Dense kernels bound to a group (`KernelChoice.prepared`), as the engine reuses them step to
step: bit for bit the reference's results, and never applied to memory that has moved."""

from __future__ import annotations

import numpy as np
import pytest

import nadam
from nadam import kernels
from nadam.backends import NUMPY_BACKEND
from nadam.kernels import reference
from nadam.step_scalars import nadam_scalars


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_cpu_kernel_equals_the_reference_step_after_step(dtype):
    rng = np.random.default_rng(5)
    shapes = [(), (7,), (33, 5), (0,), (1000,)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    xs, ms, vs = [a.copy() for a in start], [np.zeros_like(a) for a in start], [
        np.zeros_like(a) for a in start]
    ref = [[a.copy() for a in start], [np.zeros_like(a) for a in start],
           [np.zeros_like(a) for a in start]]
    choice = kernels.select(NUMPY_BACKEND, "cpu", np.dtype(dtype))
    assert choice.prepare_dense is not None
    step = choice.prepared(NUMPY_BACKEND, xs, ms, vs, np.dtype(dtype))
    cache = 1.0
    for it in range(5):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        s, cache = nadam_scalars(dtype, it, cache, lr=0.01)
        step(grads, s)
        reference.apply_dense(NUMPY_BACKEND, ref[0], grads, ref[1], ref[2], s)
        for ours, theirs in zip([*xs, *ms, *vs], [*ref[0], *ref[1], *ref[2]], strict=True):
            assert ours.tobytes() == theirs.tobytes()


def test_prepared_torch_group_bumps_versions_and_matches_the_reference():
    torch = pytest.importorskip("torch")
    from nadam.backends.torch import TORCH_BACKEND

    x = torch.nn.Parameter(torch.linspace(-1, 1, 50))
    m, v = torch.zeros(50), torch.zeros(50)
    choice = kernels.select(TORCH_BACKEND, "cpu", np.dtype(np.float32))
    step = choice.prepared(TORCH_BACKEND, [x], [m], [v], np.dtype(np.float32))
    twin = [x.detach().numpy().copy(), np.zeros(50, np.float32), np.zeros(50, np.float32)]
    g = torch.full((50,), 0.5)
    for it in range(3):
        before = (x._version, m._version, v._version, g._version)
        s, _ = nadam_scalars(np.float32, it, 0.5)
        step([g], s)
        reference.apply_dense(NUMPY_BACKEND, [twin[0]], [g.numpy()], [twin[1]], [twin[2]], s)
        assert x._version > before[0] and m._version > before[1] and v._version > before[2]
        assert g._version == before[3]  # gradients are only read
    assert x.detach().numpy().tobytes() == twin[0].tobytes()
    assert m.numpy().tobytes() == twin[1].tobytes()


def test_a_variable_given_a_new_array_of_the_same_shape_is_stepped_in_its_new_memory():
    w = nadam.Variable(np.ones(64, np.float32), name="w")
    opt = nadam.Nadam(learning_rate=0.1)
    g = np.ones(64, np.float32)
    opt.apply_gradients([(g, w)])
    old = w._value
    old_copy = old.copy()
    w._value = np.ones(64, np.float32)  # same shape and dtype, new memory
    opt.apply_gradients([(g, w)])
    assert old.tobytes() == old_copy.tobytes()  # the kernel bound to the old memory is gone
    assert not np.array_equal(w.numpy(), np.ones(64, np.float32))


def test_a_parameter_whose_data_moved_is_stepped_in_its_new_memory():
    torch = pytest.importorskip("torch")
    from nadam.torch import Nadam

    p = torch.nn.Parameter(torch.ones(64))
    opt = Nadam([p], lr=0.1)
    p.grad = torch.ones(64)
    opt.step()
    old = p.data
    old_copy = old.clone()
    p.data = torch.ones(64)
    opt.step()
    assert torch.equal(old, old_copy)
    assert not torch.equal(p.detach(), torch.ones(64))


def test_slots_replaced_by_a_load_are_the_ones_the_next_step_writes():
    torch = pytest.importorskip("torch")
    from nadam.torch import Nadam

    def run(load_from=None):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 32))
        opt = Nadam([p], lr=0.05)
        p.grad = torch.full((32,), 0.25)
        opt.step()
        opt.step()  # the kernel is bound to this optimizer's slots by now
        if load_from is not None:
            with torch.no_grad():
                p.copy_(load_from[0])
            opt.load_state_dict(load_from[1])
            p.grad = torch.full((32,), -0.5)
        opt.step()
        return p.detach().clone(), opt.state_dict(), opt

    other_p = torch.nn.Parameter(torch.linspace(2, 3, 32))
    other = Nadam([other_p], lr=0.05)
    other_p.grad = torch.full((32,), -0.5)
    for _ in range(5):
        other.step()
    saved = (other_p.detach().clone(), other.state_dict())
    loaded_p, _, loaded_opt = run(load_from=saved)
    other.step()  # the source continues by one step too
    assert torch.equal(loaded_p, other_p.detach())
    for ours, theirs in zip(loaded_opt.get_weights(), other.get_weights(), strict=True):
        assert np.array_equal(ours, theirs)
