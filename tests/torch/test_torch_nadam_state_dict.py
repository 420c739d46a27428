"""A `torch.optim.NAdam` state dict loads into `nadam.torch.Nadam` by conversion.

torch's NAdam computes the same maths with per-parameter counters: `exp_avg` is m,
`exp_avg_sq` v, `step` iterations and `mu_product` the momentum cache. A run switched mid-way
must continue exactly as our optimizer does from that state (and, the maths being the same,
close to torch's own continuation); what has no equivalent (parameters at different steps,
weight decay, maximize) is a ValueError that changes nothing. Before, such a state dict
loaded and the next step raised `KeyError: 'clipnorm'`, or `load_state_dict` refused it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import Parameter

from nadam.torch import Nadam

SHAPES = [(4, 3), (3,)]


def _params(seed: int = 0, dtype=torch.float32) -> list[Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in SHAPES]


def _grads(step: int, params) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)


def _torch_run(steps: int, **settings) -> tuple[torch.optim.NAdam, list[Parameter]]:
    params = _params()
    opt = torch.optim.NAdam(params, **settings)
    for step in range(steps):
        _grads(step, params)
        opt.step()
    return opt, params


def _copies(params) -> list[Parameter]:
    return [Parameter(p.detach().clone()) for p in params]


def test_a_run_switched_mid_way_continues_as_ours_from_the_converted_state():
    settings = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-7, "momentum_decay": 0.01}
    theirs, params = _torch_run(6, **settings)
    switched = _copies(params)
    ours = Nadam(switched)  # our defaults; the state dict's settings replace them
    ours.load_state_dict(theirs.state_dict())

    group = ours.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["schedule_decay"]) == (
        0.01, (0.9, 0.99), 1e-7, 0.01)
    assert "momentum_decay" not in group and "foreach" not in group and group["decay"] == 0.0
    state = theirs.state
    assert ours.iterations == 6
    assert ours.momentum_cache == float(state[params[0]]["mu_product"])
    for p, q in zip(params, switched, strict=True):
        assert torch.equal(ours.state[q]["m"], state[p]["exp_avg"])
        assert torch.equal(ours.state[q]["v"], state[p]["exp_avg_sq"])

    # Our optimizer given the same state by hand, with the same settings:
    by_hand = _copies(params)
    reference = Nadam(by_hand, lr=0.01, betas=(0.9, 0.99), eps=1e-7, schedule_decay=0.01)
    reference.build()
    reference.set_weights(
        [np.int64(6), state[params[0]]["mu_product"].numpy()]
        + [state[p]["exp_avg"].numpy() for p in params]
        + [state[p]["exp_avg_sq"].numpy() for p in params]
    )
    for step in range(6, 16):
        for opt, group_params in ((ours, switched), (reference, by_hand), (theirs, params)):
            _grads(step, group_params)
            opt.step()
    for a, b, c in zip(switched, by_hand, params, strict=True):
        assert torch.equal(a, b)  # bit for bit as ours from the converted state
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)  # and the same maths as torch's
    assert ours.get_weights()[0] == 16


def test_a_state_dict_of_an_unstepped_nadam_converts_its_settings():
    theirs = torch.optim.NAdam(_params(), lr=0.02, momentum_decay=0.005)
    params = _params()
    ours = Nadam(params)
    ours.load_state_dict(theirs.state_dict())
    assert ours.iterations == 0 and ours.momentum_cache is None
    assert ours.param_groups[0]["schedule_decay"] == 0.005
    _grads(0, params)
    ours.step()
    assert ours.iterations == 1


def test_decoupled_weight_decay_that_is_off_converts():
    theirs, params = _torch_run(2, decoupled_weight_decay=True)
    ours = Nadam(_copies(params))
    ours.load_state_dict(theirs.state_dict())
    assert ours.iterations == 2


def _refused(state_dict, match: str) -> None:
    params = _params(seed=5)
    ours = Nadam(params, lr=0.01)
    _grads(0, params)
    ours.step()
    before = [w.tobytes() for w in ours.get_weights()]
    settings = [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(state_dict)
    assert [w.tobytes() for w in ours.get_weights()] == before
    assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == settings
    _grads(1, params)
    ours.step()
    assert ours.iterations == 2


def test_parameters_at_different_steps_are_refused():
    params = _params()
    theirs = torch.optim.NAdam(params)
    for step in range(3):
        _grads(step, params)
        if step == 0:
            params[1].grad = None  # the second parameter starts one step later
        theirs.step()
    _refused(theirs.state_dict(), r"NAdam state: param_groups\[0\]\['params'\]\[1\] is at step "
             r"2 .* but param_groups\[0\]\['params'\]\[0\] at step 3 .*per parameter")


@pytest.mark.parametrize("settings, match", [
    ({"weight_decay": 0.01}, r"NAdam param_groups\[0\] has weight_decay=0.01: nadam's Nadam "
     "has no weight_decay"),
    ({"weight_decay": 0.01, "decoupled_weight_decay": True}, "has weight_decay=0.01"),
    ({"maximize": True}, r"has maximize=True"),
])
def test_settings_we_do_not_have_are_refused(settings, match):
    theirs, _ = _torch_run(2, **settings)
    _refused(theirs.state_dict(), match)


def test_a_state_that_is_not_whole_is_refused():
    theirs, _ = _torch_run(2)
    broken = copy.deepcopy(theirs.state_dict())
    del broken["state"][1]["mu_product"]
    _refused(broken, r"params'\]\[1\] lacks \['mu_product'\]")


def test_a_step_that_no_run_counts_is_refused():
    theirs, _ = _torch_run(2)
    broken = copy.deepcopy(theirs.state_dict())
    for entry in broken["state"].values():
        entry["step"] = torch.tensor(2.5)
    _refused(broken, r"Expected the step in the loaded torch.optim.NAdam state of "
             r"param_groups\[0\]\['params'\]\[0\] to be a whole number, received: "
             r"tensor\(2.5000\)")
