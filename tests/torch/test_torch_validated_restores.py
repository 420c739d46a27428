"""`nadam.torch.Nadam` refuses restored state that no run can produce (SPEC 4.8).

`set_weights` and `load_state_dict` check `iterations` (a non-negative int64: before,
`set_weights` cast NaN and 1e30 to -2**63 and `load_state_dict` died in torch on 2**63),
`momentum_cache` (a 0-d float tensor in [0, 1]; a shape (1,) tensor used to pass), a missing
`momentum_cache` once steps were taken (the schedule used to restart at 1 silently) and a
Python number where a tensor belongs. Each refusal is a ValueError raised before anything
changes. The checks of load_state_dict that predate these: test_torch_optim_contract.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import Parameter

from nadam.torch import Nadam


def _stepped(steps: int = 3) -> tuple[Nadam, list[Parameter]]:
    params = [Parameter(torch.ones(3)), Parameter(torch.ones(2, 2))]
    opt = Nadam(params, lr=0.01)
    for step in range(steps):
        for param in params:
            param.grad = torch.full_like(param, 0.1 * (step + 1))
        opt.step()
    return opt, params


def _state(opt: Nadam) -> list[bytes]:
    return [w.dtype.str.encode() + w.tobytes() for w in opt.get_weights()]


def _settings(opt: Nadam) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} | {"params": list(map(id, g["params"]))}
            for g in opt.param_groups]


def _steps_on(opt: Nadam, params: list[Parameter], iterations: int) -> None:
    for param in params:
        param.grad = torch.ones_like(param)
    opt.step()
    assert opt.iterations == iterations + 1
    assert all(torch.isfinite(p).all() for p in params)


# --- set_weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("position, value, match", [
    (0, np.int64(-1), r"iterations \(weight 0 given to set_weights\) in \[0, 2\*\*63 - 1\]"),
    (0, np.float64("nan"), r"iterations .* to be a whole number, received: nan"),
    (0, np.float64(1e30), r"iterations .* received: 1e\+30"),
    (0, np.float64(2.5), r"whole number, received: 2.5"),
    (0, np.uint64(2**63), r"received: 9223372036854775808"),
    (1, np.float32("nan"), r"momentum_cache \(weight 1 given to set_weights\) in \[0, 1\]"),
    (1, np.float32(1.5), r"momentum_cache .* in \[0, 1\], received: 1.5"),
    (1, np.float32(-0.5), r"momentum_cache .* received: -0.5"),
])
def test_set_weights_refuses_a_schedule_no_run_can_have(position, value, match):
    opt, params = _stepped()
    weights = opt.get_weights()
    weights = [w * 0.5 if w.ndim else w for w in weights]
    weights[position] = value
    before = _state(opt)
    with pytest.raises(ValueError, match=match):
        opt.set_weights(weights)
    assert _state(opt) == before
    _steps_on(opt, params, 3)


def test_set_weights_takes_a_whole_float_count():
    opt, params = _stepped()
    weights = opt.get_weights()
    weights[0] = np.float64(2.0)
    opt.set_weights(weights)
    assert opt.iterations == 2 and opt.state["nadam"]["iterations"].dtype == torch.int64
    _steps_on(opt, params, 2)


# --- load_state_dict ---------------------------------------------------------------------------
def _with_schedule(opt: Nadam, **changes) -> dict:
    state_dict = copy.deepcopy(opt.state_dict())
    for name, value in changes.items():
        if value is None:
            del state_dict["state"]["nadam"][name]
        else:
            state_dict["state"]["nadam"][name] = value
    return state_dict


@pytest.mark.parametrize("changes, match", [
    ({"iterations": 2**63}, r"\['iterations'\] must be a non-negative integer .*2\*\*63 - 1"),
    ({"iterations": torch.tensor(2**63, dtype=torch.uint64)},
     r"\['iterations'\] must be a non-negative integer"),
    ({"momentum_cache": torch.tensor([0.5])},
     r"\['momentum_cache'\] must be a .* tensor in \[0, 1\] of shape \(\) \(a scalar\)"),
    ({"momentum_cache": 0.5}, r"\['momentum_cache'\] must be .*got 0.5 \(not a float tensor\)"),
])
def test_load_state_dict_refuses_a_schedule_no_run_can_have(changes, match):
    source, _ = _stepped(5)
    opt, params = _stepped()
    before, groups = _state(opt), _settings(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(_with_schedule(source, **changes))
    assert _state(opt) == before and _settings(opt) == groups
    _steps_on(opt, params, 3)


def test_load_state_dict_refuses_steps_taken_without_a_momentum_cache():
    # No slots, so no other check notices: the schedule would silently restart at 1.
    source, _ = _stepped(5)
    broken = _with_schedule(source, momentum_cache=None)
    broken["state"] = {"nadam": broken["state"]["nadam"]}
    opt, params = _stepped()
    before = _state(opt)
    with pytest.raises(ValueError, match=r"has iterations 5 but no 'momentum_cache'"):
        opt.load_state_dict(broken)
    assert _state(opt) == before
    _steps_on(opt, params, 3)


def test_load_state_dict_still_takes_a_state_without_steps():
    fresh = Nadam([Parameter(torch.ones(3)), Parameter(torch.ones(2, 2))]).state_dict()
    fresh["state"]["nadam"] = {"iterations": torch.tensor(0)}
    opt, params = _stepped()
    opt.load_state_dict(fresh)
    assert opt.iterations == 0 and opt.momentum_cache is None
    _steps_on(opt, params, 0)


@pytest.mark.parametrize("slot", ["m", "v"])
def test_load_state_dict_refuses_a_python_number_where_a_tensor_belongs(slot):
    source, _ = _stepped(5)
    broken = copy.deepcopy(source.state_dict())
    broken["state"][0][slot] = 0.5
    opt, params = _stepped()
    before = _state(opt)
    with pytest.raises(ValueError, match=rf"has {slot} 0.5 of type float, where a tensor of "
                       r"shape \(3,\) belongs"):
        opt.load_state_dict(broken)
    assert _state(opt) == before
    _steps_on(opt, params, 3)
