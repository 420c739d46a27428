"""What each rank of the DTensor / FSDP2 / ZeRO gloo tests runs, and the inputs they share.

Kept apart from the test modules so that spawned processes import only torch, NumPy and nadam.
Every input is a pure function of (step, rank), so the parent process rebuilds it exactly and
steps one process on whole tensors for comparison.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import nadam
import nadam.torch

STEPS = 4
# (shape, placement on a 1-D mesh): uneven shards on dim 0 (5 and 7 rows; 1 row leaves ranks
# with an empty shard), an even split of dim 1 (2 and 3 ranks), and a replicated tensor.
LAYOUT = [((5, 3), "shard0"), ((7,), "shard0"), ((1, 4), "shard0"), ((4, 6), "shard1"),
          ((3, 2), "replicate")]
# Clipping settings, each low enough to clip at every step.
CLIPS = {
    "none": {},
    "clipnorm": {"clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 1.0},
    "clipvalue_and_clipnorm": {"clipvalue": 0.8, "clipnorm": 0.7},
}
LR = 0.01
FSDP_STEPS = 3
DCP_FIRST_STEPS = 2
ZERO_FIRST_STEPS, ZERO_MORE_STEPS = 3, 2


def initial_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(2024)
    return [rng.standard_normal(shape).astype(np.float32) for shape, _ in LAYOUT]


def gradients(step: int) -> list[np.ndarray]:
    """The whole gradients of step `step` (the same on every rank)."""
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(shape).astype(np.float32) for shape, _ in LAYOUT]


def mlp() -> torch.nn.Module:
    torch.manual_seed(11)
    # 5 and 3 output rows: uneven shards on 2 and 3 ranks; the 1-row bias leaves empty shards.
    return torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Tanh(),
        torch.nn.Linear(3, 1),
    )


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(7000 + 100 * step + rank)
    return (
        torch.from_numpy(rng.standard_normal((6, 4)).astype(np.float32)),
        torch.from_numpy(rng.standard_normal((6, 1)).astype(np.float32)),
    )


def _placements(kind: str) -> list[object]:
    from torch.distributed.tensor import Replicate, Shard

    return {"shard0": [Shard(0)], "shard1": [Shard(1)], "replicate": [Replicate()]}[kind]


def _distributed(array: np.ndarray, mesh: object, kind: str, parameter: bool) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank cuts its shard from its own (equal) copy, no collective.
    tensor = distribute_tensor(
        torch.from_numpy(array.copy()), mesh, _placements(kind), src_data_rank=None
    )
    return torch.nn.Parameter(tensor) if parameter else tensor


def _full(tensor: torch.Tensor) -> np.ndarray:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().numpy().copy()


def _dtensor_runs(rank: int, mesh: object, out: Path) -> None:
    for face in ("torch", "keras"):
        for name, clip in CLIPS.items():
            params = [
                _distributed(a, mesh, kind, True)
                for a, (_, kind) in zip(initial_arrays(), LAYOUT, strict=True)
            ]
            if face == "torch":
                opt = nadam.torch.Nadam(params, lr=LR, **clip)
            else:
                opt = nadam.Nadam(learning_rate=LR, **clip)
            for step in range(STEPS):
                grads = [
                    _distributed(g, mesh, kind, False)
                    for g, (_, kind) in zip(gradients(step), LAYOUT, strict=True)
                ]
                if face == "torch":
                    for param, grad in zip(params, grads, strict=True):
                        param.grad = grad
                    opt.step()
                else:
                    opt.apply_gradients(zip(grads, params, strict=True))
            arrays = [_full(p) for p in params]
            if face == "torch":
                arrays += [_full(opt.state[p][slot]) for slot in ("m", "v") for p in params]
                arrays += [np.asarray(opt.iterations), np.asarray(opt.momentum_cache, np.float32)]
                local_shapes = [tuple(opt.state[p]["m"]._local_tensor.shape) for p in params]
                arrays.append(np.array([str(s) for s in local_shapes]))
            if rank == 0 or face == "torch":
                np.savez(out / f"dtensor_{face}_{name}_rank{rank}.npz", *arrays)


def _fsdp_runs(rank: int, out: Path) -> None:
    """Our Nadam and torch.optim.NAdam under fully_shard; the whole gradients of every step
    are saved so that the parent can replay them in one process."""
    from torch.distributed.fsdp import fully_shard

    for name in ("ours", "torch"):
        model = mlp()
        initial = [p.detach().numpy().copy() for p in model.parameters()]
        fully_shard(model)
        params = list(model.parameters())
        if name == "ours":
            opt = nadam.torch.Nadam(params, lr=LR)
        else:
            opt = torch.optim.NAdam(params, lr=LR, eps=1e-7)
        grads = []
        for step in range(FSDP_STEPS):
            data, target = batch(step, rank)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(data), target).backward()
            grads += [_full(p.grad) for p in params]
            opt.step()
        final = [_full(p) for p in params]
        if rank == 0:
            np.savez(out / f"fsdp_{name}.npz", *initial, *grads, *final)


def _dcp_run(rank: int, out: Path) -> None:
    """Train, save with torch.distributed.checkpoint, keep training (uninterrupted); a fresh
    model and optimizer load the checkpoint and train the same steps (resumed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            data, target = batch(step, rank)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(data), target).backward()
            opt.step()

    checkpoint_dir = out / "dcp"
    model = mlp()
    fully_shard(model)
    opt = nadam.torch.Nadam(model.parameters(), lr=LR, clipnorm=0.05)
    train(model, opt, range(DCP_FIRST_STEPS))
    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=str(checkpoint_dir),
    )
    train(model, opt, range(DCP_FIRST_STEPS, FSDP_STEPS + 1))
    uninterrupted = _fsdp_state(model, opt)

    torch.manual_seed(99)  # a different start: everything must come from the checkpoint
    fresh = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Tanh(),
        torch.nn.Linear(3, 1),
    )
    fully_shard(fresh)
    fresh_opt = nadam.torch.Nadam(fresh.parameters(), lr=LR, clipnorm=0.05)
    # Reading the schedule must leave `state` empty: get_optimizer_state_dict initializes an
    # optimizer with an empty state only, and would otherwise load nothing into it.
    assert fresh_opt.iterations == 0 and not fresh_opt.state
    state = {
        "model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh, fresh_opt)
    }
    dcp.load(state, checkpoint_id=str(checkpoint_dir))
    set_model_state_dict(fresh, state["model"])
    set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
    train(fresh, fresh_opt, range(DCP_FIRST_STEPS, FSDP_STEPS + 1))
    resumed = _fsdp_state(fresh, fresh_opt)
    if rank == 0:
        metadata = dcp.FileSystemReader(str(checkpoint_dir)).read_metadata()
        chunks = {
            key: len(value.chunks) for key, value in metadata.state_dict_metadata.items()
            if hasattr(value, "chunks")
        }
        np.savez(out / "dcp_uninterrupted.npz", *uninterrupted)
        np.savez(out / "dcp_resumed.npz", *resumed)
        np.save(out / "dcp_chunks.npy", np.array(sorted(chunks.items()), dtype=object),
                allow_pickle=True)


def _error_checks(rank: int, mesh: object, out: Path) -> None:
    """Bad input on DTensor parameters: which error each case raises, and whether the
    parameter, its slots and the schedule are exactly as before (saved as JSON)."""
    import json

    from torch.distributed.tensor import DTensor, Partial

    results: dict[str, list[object]] = {}

    def snapshot(params: list[torch.Tensor], opt: object) -> list[np.ndarray]:
        arrays = [p._local_tensor.numpy().copy() for p in params]
        if isinstance(opt, nadam.torch.Nadam):
            arrays += [opt.state[p][k]._local_tensor.numpy().copy()
                       for p in params if p in opt.state for k in ("m", "v")]
            arrays += [np.asarray(opt.iterations), np.asarray(opt.momentum_cache)]
        else:
            arrays += [w.copy() for w in opt.get_weights()]
        return arrays

    def case(name: str, params: list[torch.Tensor], opt: object, action: object) -> None:
        before = snapshot(params, opt)
        try:
            action()
        except Exception as error:  # noqa: BLE001 - the type is what the test checks
            after = snapshot(params, opt)
            same = len(before) == len(after) and all(
                np.array_equal(a, b) for a, b in zip(before, after, strict=True)
            )
            results[name] = [type(error).__name__, str(error), same]
        else:
            results[name] = ["no error", "", False]

    def trained(face: str) -> tuple[list[torch.Tensor], object]:
        params = [_distributed(initial_arrays()[0], mesh, "shard0", True)]
        grads = [_distributed(gradients(0)[0], mesh, "shard0", False)]
        if face == "torch":
            opt = nadam.torch.Nadam(params, lr=LR)
            params[0].grad = grads[0]
            opt.step()
        else:
            opt = nadam.Nadam(learning_rate=LR)
            opt.apply_gradients(zip(grads, params, strict=True))
        return params, opt

    params, opt = trained("torch")
    replicated = _distributed(gradients(1)[0], mesh, "replicate", False)

    def wrong_placement() -> None:
        params[0].grad = replicated
        opt.step()

    case("torch: gradient placed otherwise", params, opt, wrong_placement)
    params[0].grad = None
    state_dict = opt.state_dict()
    broken = {**state_dict, "state": {
        0: {**state_dict["state"][0], "m": state_dict["state"][0]["m"].full_tensor()}
    }}
    case("torch: load a plain m", params, opt, lambda: opt.load_state_dict(broken))
    case("torch: set_weights", params, opt, lambda: opt.set_weights(opt.get_weights()))
    case("torch: save_state", params, opt, lambda: opt.save_state(out / "never.safetensors"))

    partial = torch.nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Partial()]))
    partial_opt = nadam.torch.Nadam([partial], lr=LR)

    def partial_step() -> None:
        partial.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()])
        partial_opt.step()

    before = partial._local_tensor.clone()
    try:
        partial_step()
        results["torch: Partial placement"] = ["no error", "", False]
    except Exception as error:  # noqa: BLE001
        same = torch.equal(before, partial._local_tensor) and not partial_opt.state
        results["torch: Partial placement"] = [type(error).__name__, str(error), same]

    params, opt = trained("keras")
    plain = torch.from_numpy(gradients(1)[0])
    case("keras: plain gradient", params, opt,
         lambda: opt.apply_gradients([(plain, params[0])]))
    case("keras: gradient placed otherwise", params, opt,
         lambda: opt.apply_gradients([(replicated, params[0])]))
    case("keras: set_weights", params, opt, lambda: opt.set_weights(opt.get_weights()))
    (out / f"errors_rank{rank}.json").write_text(json.dumps(results))


def _fsdp_state(model: torch.nn.Module, opt: nadam.torch.Nadam) -> list[np.ndarray]:
    params = list(model.parameters())
    return (
        [_full(p) for p in params]
        + [_full(opt.state[p][slot]) for slot in ("m", "v") for p in params]
        + [np.asarray(opt.iterations), np.asarray(opt.momentum_cache, np.float32)]
    )


def _mesh_2d_runs(rank: int, world_size: int, out: Path) -> None:
    """global_clipnorm on 2-D meshes spanning the world: (world, 1) with every tensor
    replicated along dim 0 (each rank holds it whole, only one copy counts towards the norm)
    and (1, world) with it sharded along dim 1."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    for name, shape in (("replicated", (world_size, 1)), ("sharded", (1, world_size))):
        mesh = init_device_mesh("cpu", shape)

        def laid_out(array: np.ndarray, mesh: object = mesh) -> torch.Tensor:
            return distribute_tensor(torch.from_numpy(array.copy()), mesh,
                                     [Replicate(), Shard(0)], src_data_rank=None)

        params = [torch.nn.Parameter(laid_out(a)) for a in initial_arrays()]
        opt = nadam.torch.Nadam(params, lr=LR, **CLIPS["global_clipnorm"])
        for step in range(STEPS):
            for param, grad in zip(params, gradients(step), strict=True):
                param.grad = laid_out(grad)
            opt.step()
        np.savez(out / f"mesh2d_{name}_rank{rank}.npz", *[_full(p) for p in params])


def _init(rank: int, world_size: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=60),
    )


def run(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Entry point of one rank of the DTensor and FSDP2 runs (`torch.multiprocessing` passes
    `rank` first)."""
    from torch.distributed.device_mesh import init_device_mesh

    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    _init(rank, world_size, port)
    out = Path(out_dir)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        _dtensor_runs(rank, mesh, out)
        _fsdp_runs(rank, out)
        if world_size == 2:
            _dcp_run(rank, out)
            _mesh_2d_runs(rank, world_size, out)
            _error_checks(rank, mesh, out)
        dist.barrier()  # every rank is done communicating before any tears down
    finally:
        dist.destroy_process_group()


# --- ZeroRedundancyOptimizer -------------------------------------------------------------------
ZERO_SHAPES = [(5, 3), (7,), (4, 2), (3,)]


def zero_initial_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(77)
    return [rng.standard_normal(shape).astype(np.float32) for shape in ZERO_SHAPES]


def zero_gradients(step: int) -> list[np.ndarray]:
    """The (already averaged) gradients of step `step`, the same on every rank."""
    rng = np.random.default_rng(300 + step)
    return [rng.standard_normal(shape).astype(np.float32) for shape in ZERO_SHAPES]


def _zero_steps(zero: object, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for param, grad in zip(params, zero_gradients(step), strict=True):
            param.grad = torch.from_numpy(grad)
        zero.step()


def _plain_model_dcp_state(out: Path, rank: int) -> None:
    """get_optimizer_state_dict of a plain (DDP-style, unsharded) model in a multi-process run:
    parameter entries only, each carrying the schedule."""
    import json

    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = torch.nn.Linear(3, 2)
    opt = nadam.torch.Nadam(model.parameters(), lr=LR)
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    state = get_optimizer_state_dict(model, opt)["state"]
    summary = {key: sorted(value) for key, value in state.items()}
    summary["schedule"] = state["weight"]["nadam_schedule"]
    (out / f"plain_dcp_rank{rank}.json").write_text(json.dumps(summary))


def run_zero(rank: int, world_size: int, ports: tuple[int, int], out_dir: str) -> None:
    """Train with ZeroRedundancyOptimizer, consolidate and save its state, train on
    (uninterrupted); then, in a new process group, a fresh optimizer loads the saved state and
    trains the same steps (resumed)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    out = Path(out_dir)
    saved = out / "zero_state.pt"
    end = ZERO_FIRST_STEPS + ZERO_MORE_STEPS
    _init(rank, world_size, ports[0])
    try:
        params = [torch.nn.Parameter(torch.from_numpy(a)) for a in zero_initial_arrays()]
        zero = ZeroRedundancyOptimizer(params, optimizer_class=nadam.torch.Nadam, lr=LR)
        _zero_steps(zero, params, range(ZERO_FIRST_STEPS))
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save(zero.state_dict(), saved)
            np.savez(out / "zero_params_saved.npz", *[_full(p) for p in params])
        _zero_steps(zero, params, range(ZERO_FIRST_STEPS, end))
        uninterrupted = [_full(p) for p in params] + [np.asarray(zero.optim.iterations)]
        _plain_model_dcp_state(out, rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()

    _init(rank, world_size, ports[1])
    try:
        with np.load(out / "zero_params_saved.npz") as data:
            arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        params = [torch.nn.Parameter(torch.from_numpy(a)) for a in arrays]
        zero = ZeroRedundancyOptimizer(params, optimizer_class=nadam.torch.Nadam, lr=LR)
        zero.load_state_dict(torch.load(saved, weights_only=True))
        loaded_iterations = zero.optim.iterations
        _zero_steps(zero, params, range(ZERO_FIRST_STEPS, end))
        resumed = [_full(p) for p in params] + [np.asarray(zero.optim.iterations)]
        np.savez(out / f"zero_rank{rank}.npz", *uninterrupted, *resumed,
                 np.asarray(loaded_iterations))
        dist.barrier()
    finally:
        dist.destroy_process_group()
