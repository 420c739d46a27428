"""Both faces on torch tensors: a step happens completely or not at all (SPEC 4.6, 4.7)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch_helpers import unchanged

import nadam
from nadam.torch import Nadam as TorchNadam


def _params():
    return (torch.nn.Parameter(torch.linspace(-1, 1, 6)),
            torch.nn.Parameter(torch.linspace(2, 3, 4)))


def _torch_face_stepped():
    a, b = _params()
    opt = TorchNadam([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.001)
    a.grad, b.grad = torch.full((6,), 0.5), torch.full((4,), 0.25)
    opt.step()
    return opt, a, b


def test_torch_face_data_replaced_by_another_shape_in_a_later_group():
    opt, a, b = _torch_face_stepped()
    b.data = torch.zeros(5)
    b.grad = torch.ones(5)
    with unchanged(opt, [a]), pytest.raises(
        ValueError, match=r"param_groups\[1\]\['params'\]\[0\].*shape \(5,\).*\(4,\)"
    ):
        opt.step()
    assert b.detach().tolist() == [0.0] * 5


def test_keras_face_data_replaced_by_another_shape():
    a, b = _params()
    opt = nadam.Nadam()
    opt.apply_gradients([(torch.ones(6), a), (torch.ones(4), b)])
    b.data = torch.zeros(3)
    with unchanged(opt, [a]), pytest.raises(ValueError, match=r"shape \(3,\)"):
        opt.apply_gradients([(torch.ones(6), a), (torch.ones(3), b)])


def _expanded_leaf():
    return torch.zeros(1).expand(3).requires_grad_()


def test_an_expanded_leaf_is_refused_by_both_faces():
    leaf = _expanded_leaf()
    assert leaf.is_leaf and leaf.stride() == (0,)
    opt = nadam.Nadam()
    with pytest.raises(ValueError, match="overlaps itself"):
        opt.apply_gradients([(torch.ones(3), leaf)])
    assert opt.weights == [] and leaf.detach().tolist() == [0.0] * 3
    torch_opt = TorchNadam([leaf])
    leaf.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"\['params'\]\[0\].*overlaps itself"):
        torch_opt.step()
    assert torch_opt.iterations == 0 and leaf.detach().tolist() == [0.0] * 3


def _overlapping_leaves():
    storage = torch.zeros(8)
    return (storage[:5].detach().requires_grad_(), storage[3:].detach().requires_grad_())


def test_overlapping_leaf_views_are_refused_by_both_faces():
    first, second = _overlapping_leaves()
    opt = nadam.Nadam()
    with pytest.raises(ValueError, match="share memory"):
        opt.apply_gradients([(torch.ones(5), first), (torch.ones(5), second)])
    assert opt.weights == []
    torch_opt = TorchNadam([first, second])
    first.grad, second.grad = torch.ones(5), torch.ones(5)
    with pytest.raises(ValueError, match="share memory"):
        torch_opt.step()
    assert torch_opt.iterations == 0
    assert first.detach().tolist() == [0.0] * 5


def test_interleaved_leaf_views_are_distinct():
    storage = torch.zeros(8)
    evens = storage[::2].detach().requires_grad_()
    odds = storage[1::2].detach().requires_grad_()
    opt = TorchNadam([evens, odds], lr=0.1)
    evens.grad, odds.grad = torch.ones(4), -torch.ones(4)
    opt.step()
    assert (storage[::2] < 0).all() and (storage[1::2] > 0).all()


def test_a_gradient_that_is_a_parameters_memory_reads_as_before_the_step():
    a, b = _params()
    a2, b2 = (torch.nn.Parameter(p.detach().clone()) for p in (a, b))
    a.grad, b.grad = torch.ones(6), a.detach()[:4]  # b's gradient is a's memory
    a2.grad, b2.grad = torch.ones(6), a2.detach()[:4].clone()
    first, second = TorchNadam([a, b], lr=0.1), TorchNadam([a2, b2], lr=0.1)
    first.step()
    second.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_two_threads_stepping_the_torch_face_serialize():
    start = torch.linspace(-1, 1, 200_000)
    param = torch.nn.Parameter(start.clone())
    param.grad = torch.full((200_000,), 0.3)
    opt = TorchNadam([param], lr=0.01)
    steps = 30
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        for _ in range(steps):
            opt.step()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    twin = torch.nn.Parameter(start.clone())
    twin.grad = torch.full((200_000,), 0.3)
    twin_opt = TorchNadam([twin], lr=0.01)
    for _ in range(2 * steps):
        twin_opt.step()
    assert opt.iterations == 2 * steps
    assert torch.equal(param, twin)
    for ours, theirs in zip(opt.get_weights(), twin_opt.get_weights(), strict=True):
        assert np.array_equal(ours, theirs)
