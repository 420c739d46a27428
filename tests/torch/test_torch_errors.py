"""Bad input on torch tensors: a documented exception naming the culprit, and nothing changed.

Each failing call follows a successful step (so there is state to protect) and lists a valid
pair before the bad one, so a half-applied step would show.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch_helpers import parameter, unchanged

from nadam import IndexedSlices, Nadam
from nadam.torch import Nadam as TorchNadam

NAME = r"Parameter\(shape=\(6, 3\), dtype=torch.float32, device=cpu\)"


@pytest.fixture
def trained():
    """An optimizer after one step on a (3,) and a (6, 3) float32 parameter."""
    rng = np.random.default_rng(0)
    good = parameter(rng.standard_normal(3).astype(np.float32))
    table = parameter(rng.standard_normal((6, 3)).astype(np.float32))
    opt = Nadam()
    opt.apply_gradients([(torch.ones(3), good), (torch.ones(6, 3), table)])
    return opt, good, table


def _bad_variable_cases():
    leaf = torch.nn.Parameter(torch.ones(6, 3))
    return [
        ("not a leaf", leaf * 2, ValueError, r"Variable Tensor\(shape=\(6, 3\).*not a leaf"),
        ("no grad", torch.ones(6, 3), ValueError, r"Tensor\(shape=\(6, 3\).*does not require grad"),
        ("integer", torch.ones(6, 3, dtype=torch.int64), TypeError, r"dtype torch.int64"),
        ("complex", torch.ones(6, 3, dtype=torch.complex64, requires_grad=True), TypeError,
         r"dtype torch.complex64; Nadam trains only float16, float32 and float64"),
        ("bfloat16", torch.ones(6, 3, dtype=torch.bfloat16, requires_grad=True), TypeError,
         r"dtype torch.bfloat16"),
        ("meta device", torch.empty(6, 3, device="meta", requires_grad=True), TypeError,
         r"device=meta\) is on device 'meta'; nadam updates tensors on the CPU and on CUDA"),
        ("sparse variable", torch.ones(6, 3).to_sparse().requires_grad_(), TypeError,
         r"layout torch.sparse_coo; nadam trains dense"),
    ]


@pytest.mark.parametrize("case", _bad_variable_cases(), ids=lambda c: c[0])
def test_bad_variables_raise_and_change_nothing(trained, case):
    opt, good, table = trained
    _, bad, error, message = case
    with unchanged(opt, [good, table]), pytest.raises(error, match=message):
        opt.apply_gradients([(torch.ones(3), good), (torch.ones(6, 3), bad)])
    with unchanged(opt, [good, table]), pytest.raises(error, match=message):
        opt.build([good, bad])


def _bad_gradient_cases():
    ones = np.ones((6, 3), np.float32)
    unchecked = torch.sparse_coo_tensor(
        torch.tensor([[0, 6]]), torch.ones(2, 3), (6, 3), check_invariants=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        csr = torch.ones(6, 3).to_sparse_csr()
    return [
        ("dtype", torch.ones(6, 3, dtype=torch.float64), ValueError,
         rf"Gradient for variable {NAME} has dtype torch.float64, but the variable has dtype "
         r"torch.float32"),
        ("device", torch.ones(6, 3, device="meta"), ValueError,
         rf"Gradient for variable {NAME} is on device 'meta', but the variable is on 'cpu'"),
        ("shape", torch.ones(3, 6), ValueError,
         rf"Gradient for variable {NAME} has shape \(3, 6\), but the variable has shape"),
        ("numpy", ones, TypeError, rf"Gradient for variable {NAME} must be a torch tensor, got "
         r"ndarray"),
        ("python list", [1.0] * 3, TypeError, r"must be a torch tensor, got list"),
        ("index out of range", unchecked, IndexError,
         rf"Sparse gradient index 6 is out of range for variable {NAME} with 6 rows"),
        ("negative index", IndexedSlices(torch.ones(1, 3), torch.tensor([-1])), IndexError,
         r"index -1 is out of range"),
        ("element sparse", torch.ones(6, 3).to_sparse(2), ValueError,
         r"is sparse in 2 dimensions; nadam takes row-sparse gradients"),
        ("coo shape", torch.ones(7, 3).to_sparse(1), ValueError,
         r"Sparse gradient for variable .* has shape \(7, 3\)"),
        ("slices dtype", IndexedSlices(torch.ones(1, 3, dtype=torch.float64), [0]), ValueError,
         r"IndexedSlices values for variable .* has dtype torch.float64"),
        ("slices rows", IndexedSlices(torch.ones(2, 4), [0, 1]), ValueError,
         r"have shape \(2, 4\), expected \(2, 3\)"),
        ("float indices", IndexedSlices(torch.ones(1, 3), torch.tensor([0.0])), TypeError,
         r"indices for variable .* must be integers, got dtype torch.float32"),
        ("2-D indices", IndexedSlices(torch.ones(1, 3), torch.tensor([[0]])), ValueError,
         r"must be 1-D"),
        ("dense_shape", IndexedSlices(torch.ones(1, 3), [0], (5, 3)), ValueError,
         r"dense_shape \(5, 3\) does not match"),
        ("csr", csr, TypeError, r"layout torch.sparse_csr"),
    ]


@pytest.mark.parametrize("case", _bad_gradient_cases(), ids=lambda c: c[0])
def test_bad_gradients_raise_naming_the_tensor_and_change_nothing(trained, case):
    opt, good, table = trained
    _, grad, error, message = case
    with unchanged(opt, [good, table]), pytest.raises(error, match=message):
        opt.apply_gradients([(torch.ones(3), good), (grad, table)])


def test_the_same_tensor_twice_is_refused(trained):
    opt, good, table = trained
    with unchanged(opt, [good, table]), pytest.raises(ValueError, match=r"appears twice"):
        opt.apply_gradients([(torch.ones(3), good), (torch.ones(3), good)])


def test_bad_losses_raise_and_change_nothing(trained):
    opt, good, table = trained
    with unchanged(opt, [good, table]), pytest.raises(TypeError, match=r"got float"):
        opt.minimize(lambda: 1.0, [good])
    with unchanged(opt, [good, table]), pytest.raises(ValueError, match=r"grad_loss has shape"):
        opt.minimize(lambda: good * 2, [good], grad_loss=torch.ones(2))
    with unchanged(opt, [good, table]), pytest.raises(ValueError, match=r"not a leaf"):
        opt.minimize(lambda: (good * 2).sum(), [good * 1])
    with unchanged(opt, [good, table]), pytest.raises(ValueError, match=r"mixes variables"):
        opt.minimize(lambda: good.sum(), [good, np.ones(2)])


# --- the torch.optim face ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, r"defaults: Expected lr >= 0, received: -1.0"),
        ({"lr": float("nan")}, ValueError, r"Expected lr >= 0, received: nan"),
        ({"betas": (1.0, 0.9)}, ValueError, r"Expected betas\[0\] in \[0, 1\), received: 1.0"),
        ({"betas": (0.9, -0.1)}, ValueError, r"Expected betas\[1\] in \[0, 1\)"),
        ({"betas": 0.9}, TypeError, r"betas must be a pair"),
        ({"eps": -1e-8}, ValueError, r"Expected eps >= 0"),
        ({"schedule_decay": -1}, ValueError, r"Expected schedule_decay >= 0"),
        ({"decay": -0.5}, ValueError, r"Expected decay >= 0"),
        ({"clipnorm": -1.0}, ValueError, r"Expected clipnorm >= 0"),
        ({"clipvalue": "1"}, TypeError, r"clipvalue must be a number or None"),
        ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, r"both `clipnorm` and"),
        ({"lr": torch.ones(2)}, ValueError, r"lr must be a scalar"),
    ],
)
def test_torch_face_refuses_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        TorchNadam([torch.nn.Parameter(torch.ones(2))], **kwargs)


@pytest.fixture
def stepped():
    """A torch-face optimizer after one step on two float32 parameters."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(6, 3))
    opt = TorchNadam([a, b])
    a.grad, b.grad = torch.ones(3), torch.ones(6, 3)
    opt.step()
    return opt, a, b


@pytest.mark.parametrize(
    ("group", "error", "message"),
    [
        (lambda: {"params": [torch.ones(2, dtype=torch.int32)]}, TypeError,
         r"param_groups\[1\]\['params'\]\[0\]: Variable Tensor\(shape=\(2,\), "
         r"dtype=torch.int32.*has dtype torch.int32"),
        (lambda: {"params": [torch.nn.Parameter(torch.ones(2)) * 2]}, ValueError,
         r"param_groups\[1\]\['params'\]\[0\] Tensor\(shape=\(2,\).* is not a leaf"),
        (lambda: {"params": [torch.empty(2, device="meta", requires_grad=True)]}, TypeError,
         r"param_groups\[1\]\['params'\]\[0\].*device 'meta'"),
        (lambda: {"params": [torch.nn.Parameter(torch.ones(2))], "betas": (0.8, 0.999)},
         ValueError, r"param_groups\[1\] has betas\[0\]=0.8 but param_groups\[0\] has 0.9"),
        (lambda: {"params": [torch.nn.Parameter(torch.ones(2))], "lr": -2}, ValueError,
         r"param_groups\[1\]: Expected lr >= 0"),
    ],
)
def test_torch_face_add_param_group_refuses_bad_groups(stepped, group, error, message):
    opt, a, b = stepped
    with unchanged(opt, [a, b]), pytest.raises(error, match=message):
        opt.add_param_group(group())
    assert len(opt.param_groups) == 1


def test_torch_face_refuses_a_tensor_twice_in_a_group():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] .* appears twice"):
        TorchNadam([p, p])


def test_torch_face_step_checks_everything_before_changing_anything(stepped):
    opt, a, b = stepped
    b.grad = torch.ones(6, 3).to_sparse(2)
    a.grad = torch.ones(3)
    with unchanged(opt, [a, b]), pytest.raises(
        ValueError, match=r"param_groups\[0\]\['params'\]\[1\]: Sparse gradient for variable "
        r"Parameter\(shape=\(6, 3\).* is sparse in 2 dimensions"
    ):
        opt.step()
    b.grad = torch.sparse_coo_tensor(
        torch.tensor([[9]]), torch.ones(1, 3), (6, 3), check_invariants=False
    )
    with unchanged(opt, [a, b]), pytest.raises(IndexError, match=r"\['params'\]\[1\]: .*index 9"):
        opt.step()
    b.grad = torch.ones(6, 3)
    opt.param_groups[0]["lr"] = -1.0  # e.g. a broken scheduler
    with unchanged(opt, [a, b]), pytest.raises(
        ValueError, match=r"param_groups\[0\]: Expected lr >= 0"
    ):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    opt.param_groups[1]["betas"] = (0.5, 0.999)
    with unchanged(opt, [a, b]), pytest.raises(ValueError, match=r"momentum schedule"):
        opt.step()


def test_torch_face_set_weights_and_load_state_dict_check_first(stepped):
    opt, a, b = stepped
    weights = opt.get_weights()
    with unchanged(opt, [a, b]), pytest.raises(
        ValueError, match=r"with a weight list of length 5, but the optimizer was expecting 6"
    ):
        opt.set_weights(weights[:5])
    with unchanged(opt, [a, b]), pytest.raises(
        ValueError, match=r"Optimizer weight shape \(3,\) not compatible with provided weight "
        r"shape \(4,\)"
    ):
        opt.set_weights([*weights[:2], np.ones(4, np.float32), *weights[3:]])
    state = opt.state_dict()
    broken = {"state": {**state["state"], 1: {"m": torch.ones(2), "v": torch.ones(2), "round": 0}},
              "param_groups": state["param_groups"]}
    with unchanged(opt, [a, b]), pytest.raises(ValueError, match=r"has m of shape \(2,\)"):
        opt.load_state_dict(broken)
    broken = {"state": state["state"],
              "param_groups": [{**state["param_groups"][0], "betas": (2.0, 0.9)}]}
    with unchanged(opt, [a, b]), pytest.raises(ValueError, match=r"loaded param_groups\[0\]"):
        opt.load_state_dict(broken)
