"""torch's own generic optimizer inputs (`torch.testing._internal.common_optimizers`) on ours.

That module ships in the torch wheel, but it imports torch's test utilities, which need the
`expecttest` package (a PyTorch test dependency, not a dependency of ours): without it these
tests are skipped. They describe `nadam.torch.Nadam` the way torch describes its optimizers
(an `OptimizerInfo`) and run torch's list of error inputs that every optimizer must reject,
with our documented deviations spelled out.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

from nadam.torch import Nadam  # noqa: E402

OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum
OptimizerInput = common_optimizers.OptimizerInput

# Where we differ from torch's generic expectations on purpose (keyed by torch's `desc`).
OUR_ERRORS = {
    # torch warns and drops the duplicate; Keras applied it twice; we refuse (SPEC 4.4).
    "a param group cannot have duplicate parameters": (ValueError, "appears twice in the group"),
    # the same ValueError, in our words for every setting
    "Tensor lr must be 1-element": (ValueError, "lr must be a scalar"),
}


def _inputs(device, dtype=None):
    """Our settings, one at a time, as `OptimizerInfo.optim_inputs_func` lists them."""
    settings = [
        ({}, "default"),
        ({"lr": 0.01}, "non-default lr"),
        ({"lr": torch.tensor(0.01)}, "tensor lr"),
        ({"betas": (0.8, 0.99)}, "non-default betas"),
        ({"eps": 1e-4}, "non-default eps"),
        ({"schedule_decay": 0.04}, "non-default schedule_decay"),
        ({"decay": 0.1}, "time-inverse lr decay"),
        ({"clipnorm": 0.5}, "clipnorm"),
        ({"clipvalue": 0.1}, "clipvalue"),
        ({"global_clipnorm": 0.5}, "global_clipnorm"),
    ]
    return [OptimizerInput(params=None, kwargs=kwargs, desc=desc) for kwargs, desc in settings]


NADAM_INFO = common_optimizers.OptimizerInfo(
    Nadam,
    optim_inputs_func=_inputs,
    optim_error_inputs_func=common_optimizers.get_error_inputs_for_all_optims,
    supported_impls=(),  # no foreach / fused / differentiable flags: kernels by capability
    not_og_supported_flags=(),
    supports_sparse=True,  # with Keras's sparse rule, not torch's
    supports_complex=False,
)


def test_torch_generic_error_inputs():
    errors = NADAM_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)
    assert errors, "torch lists generic error inputs for the CPU"
    for error in errors:
        optim_input = error.optimizer_error_input
        expected, pattern = OUR_ERRORS.get(optim_input.desc, (error.error_type, error.error_regex))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning we do not expect fails the test
            if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                with pytest.raises(expected, match=pattern):
                    Nadam(optim_input.params, **optim_input.kwargs)
            else:
                opt = Nadam(optim_input.params, **optim_input.kwargs)
                with pytest.raises(expected, match=pattern):
                    opt.step()


@pytest.mark.parametrize("optim_input", _inputs("cpu"), ids=lambda i: i.desc)
def test_every_listed_setting_goes_the_right_direction(optim_input):
    inputs = common_optimizers._get_optim_inputs_including_global_cliquey_kwargs(
        "cpu", torch.float32, NADAM_INFO
    )
    assert [i.desc for i in inputs] == [i.desc for i in _inputs("cpu")]  # no flags added
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=generator))
    bias = torch.nn.Parameter(torch.randn(10, generator=generator))
    data = torch.randn(5, generator=generator)
    opt = NADAM_INFO.optim_cls([weight, bias], **optim_input.kwargs)

    def closure():
        opt.zero_grad()
        loss = (weight.mv(data) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
    assert closure().item() < initial
