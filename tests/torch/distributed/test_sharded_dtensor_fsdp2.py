"""nadam's two faces on DTensor parameters, with gloo on 2 and 3 CPU processes.

Each rank steps its local shards (`nadam.backends.torch_shards`); the whole tensors gathered
afterwards must equal one process stepping the whole tensors: bit for bit without clipping,
within 1e-6 relative (float32) with clipnorm / global_clipnorm, whose norms are summed per
shard and then across shards (an order one process does not use). Under FSDP2
(`fully_shard`) our steps and torch.optim.NAdam's (the baseline) equal one process replaying
the same gradients; a torch.distributed.checkpoint save on 2 ranks loads into a fresh model and
optimizer that resume bit-identically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sharded_worker as worker
import torch
from gloo_processes import free_port, spawn

import nadam
import nadam.torch

CLIPPED_RTOL = 1e-6


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[int, Path]:
    """World size -> where its ranks saved their results, each world run once on demand."""
    done: dict[int, Path] = {}

    failed: dict[int, str] = {}

    def run(world: int) -> Path:
        if world in failed:  # one failed run fails every test that reads it, once
            pytest.fail(failed[world])
        if world not in done:
            out = tmp_path_factory.mktemp(f"sharded{world}")
            try:
                spawn(worker.run, world, (world, free_port(), str(out)))
            except BaseException as error:
                failed[world] = f"the {world}-rank run failed: {error}"
                raise
            done[world] = out
        return done[world]

    return run


@pytest.fixture(params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, worlds) -> tuple[int, Path]:
    return request.param, worlds(request.param)


def _load(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=True) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _one_process(face: str, clip: dict) -> list[np.ndarray]:
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in worker.initial_arrays()]
    if face == "torch":
        opt = nadam.torch.Nadam(params, lr=worker.LR, **clip)
    else:
        opt = nadam.Nadam(learning_rate=worker.LR, **clip)
    for step in range(worker.STEPS):
        grads = [torch.from_numpy(g) for g in worker.gradients(step)]
        if face == "torch":
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            opt.step()
        else:
            opt.apply_gradients(zip(grads, params, strict=True))
    arrays = [p.detach().numpy() for p in params]
    if face == "torch":
        arrays += [opt.state[p][slot].numpy() for slot in ("m", "v") for p in params]
        arrays += [np.asarray(opt.iterations), np.asarray(opt.momentum_cache, np.float32)]
    return arrays


def _assert_bit_equal(got: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    assert len(got) == len(expected), what
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: array {index}"
        assert np.array_equal(a, b), (
            f"{what}: array {index} differs, max abs {np.max(np.abs(a - b))}"
        )


def _assert_close(got: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    """Parameters within 1e-6 relative, element by element; slots (whose entries can cancel
    to near 0) within 1e-6 of their largest magnitude; the schedule bit for bit."""
    params = len(worker.LAYOUT)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: array {index}"
        if index < params:
            np.testing.assert_allclose(a, b, rtol=CLIPPED_RTOL, atol=0, err_msg=f"{what}: {index}")
        elif b.ndim:
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            np.testing.assert_allclose(a, b, rtol=0, atol=CLIPPED_RTOL * scale,
                                       err_msg=f"{what}: {index}")
        else:
            assert np.array_equal(a, b), f"{what}: {index}"


@pytest.mark.parametrize("face", ["torch", "keras"])
def test_unclipped_steps_on_shards_equal_one_process_bit_for_bit(ranks, face):
    world, out = ranks
    expected = _one_process(face, {})
    for rank in range(world if face == "torch" else 1):
        got = _load(out / f"dtensor_{face}_none_rank{rank}.npz")
        _assert_bit_equal(got[: len(expected)], expected, f"{face} face, rank {rank}")


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm", "clipvalue_and_clipnorm"])
@pytest.mark.parametrize("face", ["torch", "keras"])
def test_clipped_steps_on_shards_are_within_1e6_of_one_process(ranks, face, clip):
    world, out = ranks
    expected = _one_process(face, worker.CLIPS[clip])
    for rank in range(world if face == "torch" else 1):
        got = _load(out / f"dtensor_{face}_{clip}_rank{rank}.npz")
        _assert_close(got[: len(expected)], expected, f"{face} face, {clip}, rank {rank}")
    # Clipping really acted, with the whole tensor's norm: a shard's own norm, or no
    # clipping at all, gives a step far from this one.
    unclipped = _one_process(face, {})
    assert not np.allclose(expected[0], unclipped[0], rtol=1e-4, atol=0)


def test_slots_are_shaped_like_the_local_shards(ranks):
    world, out = ranks
    for rank in range(world):
        shapes = [str(s) for s in _load(out / f"dtensor_torch_none_rank{rank}.npz")[-1]]
        expected = []
        for shape, kind in worker.LAYOUT:
            local = list(shape)
            if kind != "replicate":
                dim = int(kind[-1])
                chunks = torch.arange(shape[dim]).chunk(world)  # torch's (uneven) split
                local[dim] = len(chunks[rank]) if rank < len(chunks) else 0
            expected.append(str(tuple(local)))
        assert shapes == expected, f"rank {rank}"


def _replay(name: str, world: int, out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One process stepping the gradients that FSDP2 produced; returns (expected, got)."""
    arrays = _load(out / f"fsdp_{name}.npz")
    count = len(list(worker.mlp().parameters()))
    initial, final = arrays[:count], arrays[-count:]
    grads = arrays[count:-count]
    assert len(grads) == count * worker.FSDP_STEPS
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in initial]
    if name == "ours":
        opt = nadam.torch.Nadam(params, lr=worker.LR)
    else:
        opt = torch.optim.NAdam(params, lr=worker.LR, eps=1e-7)
    for step in range(worker.FSDP_STEPS):
        for param, grad in zip(params, grads[step * count:(step + 1) * count], strict=True):
            param.grad = torch.from_numpy(grad)
        opt.step()
    return [p.detach().numpy() for p in params], final


@pytest.mark.parametrize("name", ["ours", "torch"])
def test_fsdp2_steps_equal_one_process_on_the_same_gradients(ranks, name):
    world, out = ranks
    expected, got = _replay(name, world, out)
    _assert_bit_equal(got, expected, f"{name} under fully_shard on {world} ranks")
    initial = _load(out / f"fsdp_{name}.npz")[: len(expected)]
    assert not np.array_equal(got[0], initial[0])  # it trained


def test_dcp_sharded_save_resumes_bit_identically_in_a_fresh_model(worlds):
    world = 2  # the checkpoint round trip runs in the 2-rank run only (time)
    out = worlds(world)
    uninterrupted = _load(out / "dcp_uninterrupted.npz")
    resumed = _load(out / "dcp_resumed.npz")
    _assert_bit_equal(resumed, uninterrupted, "resumed from torch.distributed.checkpoint")
    assert int(resumed[-2]) == worker.FSDP_STEPS + 1
    # The slots were saved sharded: one chunk per rank (the 5-row first weight).
    chunks = dict(np.load(out / "dcp_chunks.npy", allow_pickle=True).tolist())
    assert chunks["optim.state.0.weight.m"] == world
    assert chunks["optim.state.0.weight.v"] == world


@pytest.mark.parametrize("mesh", ["replicated", "sharded"])
def test_global_clipnorm_on_2d_meshes_counts_every_element_once(worlds, mesh):
    world = 2
    out = worlds(world)
    expected = _one_process("torch", worker.CLIPS["global_clipnorm"])[: len(worker.LAYOUT)]
    for rank in range(world):
        got = _load(out / f"mesh2d_{mesh}_rank{rank}.npz")
        _assert_close(got, expected, f"{mesh} 2-D mesh, rank {rank}")


ERRORS = {
    "torch: gradient placed otherwise": ("ValueError", r"has placements \(Replicate\(\),\)"),
    "torch: load a plain m": ("ValueError", r"has m that is not a DTensor laid out as"),
    "torch: set_weights": ("TypeError", r"set_weights works on whole tensors.*DTensor"),
    "torch: save_state": ("TypeError", r"save_state works on whole tensors.*checkpoint"),
    "torch: Partial placement": ("ValueError", r"placement Partial\(sum\) on mesh dim 0"),
    "keras: plain gradient": ("TypeError", r"is a Tensor; it must be a DTensor"),
    "keras: gradient placed otherwise": ("ValueError", r"has placements \(Replicate\(\),\)"),
    "keras: set_weights": ("TypeError", r"state holds DTensor shards"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_on_dtensors_raises_and_changes_nothing(worlds, case):
    import json
    import re

    out = worlds(2)
    for rank in range(2):
        kind, message, unchanged = json.loads((out / f"errors_rank{rank}.json").read_text())[case]
        expected_kind, pattern = ERRORS[case]
        assert kind == expected_kind, f"rank {rank}: {kind}: {message}"
        assert re.search(pattern, message), f"rank {rank}: {message}"
        assert unchanged, f"rank {rank}: the parameter, its slots or the schedule changed"
