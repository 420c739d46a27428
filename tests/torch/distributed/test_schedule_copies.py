"""The copies of the schedule in parameters' state entries (`nadam_schedule`), in one process.

In a multi-process run `nadam.torch.Nadam.state_dict()` puts a copy of `iterations` and
`momentum_cache` in every parameter's entry, because ZeroRedundancyOptimizer and
torch.distributed.checkpoint keep only those entries. Loading takes the schedule from
`state["nadam"]` when present, else from the copies, which must be well formed and agree; a
state written straight into `optimizer.state` (as ZeroRedundancyOptimizer's `load_state_dict`
does) is taken up before the next step. Bad copies are a ValueError that changes nothing.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nadam.torch import Nadam

STEPS = 3


def _trained(dtype: torch.dtype = torch.float32) -> tuple[list[torch.nn.Parameter], Nadam]:
    params = [torch.nn.Parameter(torch.arange(3, dtype=dtype)),
              torch.nn.Parameter(torch.ones(2, 2, dtype=dtype))]
    opt = Nadam(params, lr=0.01)
    for step in range(STEPS):
        for index, param in enumerate(params):
            param.grad = torch.full_like(param, 0.1 * (step + 1) * (index + 1))
        opt.step()
    return params, opt


def _with_copies(opt: Nadam) -> dict:
    """The state dict a multi-process run writes once the tools keep only parameter entries."""
    state_dict = copy.deepcopy(opt.state_dict())
    schedule = state_dict["state"].pop("nadam")
    cache = schedule["momentum_cache"]
    for entry in state_dict["state"].values():
        entry["nadam_schedule"] = {
            "iterations": int(schedule["iterations"]),
            "momentum_cache": float(cache),
            "momentum_cache_bits": cache.dtype.itemsize * 8,
        }
    return state_dict


def _state(params, opt) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in params] + [w.copy() for w in opt.get_weights()]


def _continue(params, opt, steps: int = 2) -> list[np.ndarray]:
    for step in range(steps):
        for param in params:
            param.grad = torch.full_like(param, -0.05 * (step + 1))
        opt.step()
    return _state(params, opt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_a_state_dict_with_only_copies_resumes_bit_identically(dtype):
    params, opt = _trained(dtype)
    saved = _with_copies(opt)
    start = [p.detach().clone() for p in params]
    expected = _continue(params, opt)
    fresh = [torch.nn.Parameter(t) for t in start]
    twin = Nadam(fresh, lr=0.01)
    twin.load_state_dict(saved)
    assert twin.iterations == STEPS
    assert twin.state["nadam"]["momentum_cache"].dtype == dtype
    assert all("nadam_schedule" not in twin.state[p] for p in fresh)
    got = _continue(fresh, twin)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_entries_written_straight_into_state_are_taken_up_before_the_next_step():
    params, opt = _trained()
    saved = _with_copies(opt)
    start = [p.detach().clone() for p in params]
    expected = _continue(params, opt)
    fresh = [torch.nn.Parameter(t) for t in start]
    twin = Nadam(fresh, lr=0.01)
    for param, entry in zip(fresh, saved["state"].values(), strict=True):
        twin.state[param] = copy.deepcopy(entry)  # as ZeroRedundancyOptimizer loads
    assert twin.iterations == STEPS  # read before any step, too
    got = _continue(fresh, twin)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)


def test_state_nadam_wins_over_the_copies():
    params, opt = _trained()
    saved = _with_copies(opt)
    saved["state"]["nadam"] = copy.deepcopy(opt.state_dict()["state"]["nadam"])
    for entry in saved["state"].values():
        if "nadam_schedule" in entry:
            entry["nadam_schedule"]["iterations"] = 99
    twin = Nadam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.01)
    twin.load_state_dict(saved)
    assert twin.iterations == STEPS


def _disagreeing(saved: dict) -> None:
    saved["state"][1]["nadam_schedule"]["iterations"] += 1


def _malformed(saved: dict) -> None:
    saved["state"][0]["nadam_schedule"]["momentum_cache_bits"] = 8


def _missing_key(saved: dict) -> None:
    del saved["state"][0]["nadam_schedule"]["momentum_cache"]


def _out_of_range(saved: dict) -> None:
    for entry in saved["state"].values():
        entry["nadam_schedule"]["momentum_cache"] = 1.5


@pytest.mark.parametrize("breaking, pattern", [
    (_disagreeing, r"the schedule is one per optimizer, so every copy must be the same"),
    (_malformed, r"'momentum_cache_bits' \(16, 32 or 64\)"),
    (_missing_key, r"expected a dict with 'iterations'"),
    (_out_of_range, r"momentum_cache'\] must be .* in \[0, 1\]"),
], ids=["disagreeing", "malformed", "missing key", "out of range"])
def test_bad_copies_are_a_value_error_that_changes_nothing(breaking, pattern):
    params, opt = _trained()
    saved = _with_copies(opt)
    breaking(saved)
    before = _state(params, opt)
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(saved)
    assert all(np.array_equal(a, b) for a, b in zip(_state(params, opt), before, strict=True))
    # Written straight into the state, the step refuses them before anything moves.
    for param, entry in zip(params, saved["state"].values(), strict=True):
        opt.state[param] = entry
    for param in params:
        param.grad = torch.ones_like(param)
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert all(np.array_equal(p.detach().numpy(), b)
               for p, b in zip(params, before, strict=False))


def test_one_process_state_dicts_have_no_copies():
    _, opt = _trained()
    state = opt.state_dict()["state"]
    assert set(state) == {0, 1, "nadam"}
    assert all(set(state[i]) == {"m", "v", "round"} for i in (0, 1))
