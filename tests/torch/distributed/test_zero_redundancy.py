"""ZeroRedundancyOptimizer over nadam.torch.Nadam keeps the optimizer-wide schedule.

`consolidate_state_dict` gathers only each parameter's entry of every rank's optimizer, and
its `load_state_dict` writes those entries straight into the rank's optimizer state; in a
multi-process run each entry carries a copy of `iterations` and `momentum_cache`
(`nadam_schedule`), which the optimizer takes up before its next step. A run resumed from the
consolidated state, in a new process group with a fresh optimizer, must equal the
uninterrupted run bit for bit (2 gloo processes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sharded_worker as worker
import torch
from gloo_processes import free_port, spawn

import nadam.torch

WORLD = 2


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    ports = (free_port(), free_port())
    spawn(worker.run_zero, WORLD, (WORLD, ports, str(out)))
    return out


def _load(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(out):
    count = len(worker.ZERO_SHAPES) + 1  # the parameters, then the rank's iterations
    end = worker.ZERO_FIRST_STEPS + worker.ZERO_MORE_STEPS
    for rank in range(WORLD):
        arrays = _load(out / f"zero_rank{rank}.npz")
        uninterrupted, resumed = arrays[:count], arrays[count:2 * count]
        assert int(arrays[-1]) == worker.ZERO_FIRST_STEPS, f"rank {rank}: loaded iterations"
        assert int(resumed[-1]) == int(uninterrupted[-1]) == end, f"rank {rank}"
        for index, (a, b) in enumerate(zip(resumed, uninterrupted, strict=True)):
            assert np.array_equal(a, b), f"rank {rank}, array {index}"


def test_uninterrupted_zero_run_equals_one_process(out):
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in worker.zero_initial_arrays()]
    opt = nadam.torch.Nadam(params, lr=worker.LR)
    for step in range(worker.ZERO_FIRST_STEPS + worker.ZERO_MORE_STEPS):
        for param, grad in zip(params, worker.zero_gradients(step), strict=True):
            param.grad = torch.from_numpy(grad)
        opt.step()
    uninterrupted = _load(out / "zero_rank0.npz")[: len(params)]
    for index, (param, got) in enumerate(zip(params, uninterrupted, strict=True)):
        assert np.array_equal(param.detach().numpy(), got), f"array {index}"


def test_the_consolidated_state_carries_the_schedule_in_every_entry(out):
    state = torch.load(out / "zero_state.pt", weights_only=True)["state"]
    assert sorted(state) == list(range(len(worker.ZERO_SHAPES)))
    one = nadam.torch.Nadam([torch.nn.Parameter(torch.zeros(1))])
    one.param_groups[0]["params"][0].grad = torch.ones(1)
    for _ in range(worker.ZERO_FIRST_STEPS):
        one.step()
    for index, entry in state.items():
        assert entry["nadam_schedule"] == {
            "iterations": worker.ZERO_FIRST_STEPS,
            "momentum_cache": one.momentum_cache,
            "momentum_cache_bits": 32,
        }, f"parameter {index}"


def test_a_plain_model_state_dict_goes_through_get_optimizer_state_dict(out):
    import json

    for rank in range(WORLD):
        summary = json.loads((out / f"plain_dcp_rank{rank}.json").read_text())
        schedule = summary.pop("schedule")
        assert summary == {name: ["m", "nadam_schedule", "round", "v"]
                           for name in ("weight", "bias")}, f"rank {rank}"
        assert schedule["iterations"] == 2 and schedule["momentum_cache_bits"] == 32
