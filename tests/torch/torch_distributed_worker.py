"""What each rank of the 2-process gloo test runs, and the inputs both it and the test rebuild.

Kept apart from the test module so that spawned processes import only torch, NumPy and nadam.
Every input is a pure function of (rank, step), so the parent process can rebuild any rank's
gradients exactly.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nadam import IndexedSlices, Nadam

STEPS = 4
SHAPES = [((3, 2), np.float32), ((5,), np.float64), ((6, 3), np.float32)]  # last: sparse rows
CLIP = 2.0  # global_clipnorm, below the norm of the summed gradients


def initial_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(123)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def rank_gradients(rank: int, step: int) -> list[object]:
    """This rank's gradients at `step`: two dense, one IndexedSlices (nnz differs by rank)."""
    rng = np.random.default_rng(1000 * step + rank)
    dense = [
        torch.from_numpy(rng.standard_normal(shape).astype(dtype)) for shape, dtype in SHAPES[:2]
    ]
    count = 5 if rank == 0 else 3
    indices = torch.from_numpy(rng.integers(0, 6, size=count))
    values = torch.from_numpy(rng.standard_normal((count, 3)).astype(np.float32))
    return [*dense, IndexedSlices(values, indices, (6, 3))]


def ddp_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5000 + 1000 * step + rank)
    return (
        torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32)),
        torch.from_numpy(rng.standard_normal((4, 2)).astype(np.float32)),
    )


def ddp_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _save(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, *arrays)


def run(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Entry point of one rank (`torch.multiprocessing` passes `rank` first)."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    out = Path(out_dir)
    try:
        for aggregate in (True, False):
            params = [torch.nn.Parameter(torch.from_numpy(a)) for a in initial_arrays()]
            opt = Nadam(global_clipnorm=CLIP)
            for step in range(STEPS):
                grads = rank_gradients(rank, step)
                opt.apply_gradients(
                    zip(grads, params, strict=True), experimental_aggregate_gradients=aggregate
                )
            arrays = [p.detach().numpy() for p in params] + opt.get_weights()
            _save(out / f"aggregate_{aggregate}_rank{rank}.npz", arrays)

        # DistributedDataParallel has averaged the gradients already: no second all-reduce.
        model = torch.nn.parallel.DistributedDataParallel(ddp_model())
        opt = Nadam()
        for step in range(STEPS):
            data, target = ddp_batch(rank, step)
            model.zero_grad()
            torch.nn.functional.mse_loss(model(data), target).backward()
            opt.apply_gradients(
                [(p.grad, p) for p in model.parameters()], experimental_aggregate_gradients=False
            )
        _save(out / f"ddp_rank{rank}.npz", [p.detach().numpy() for p in model.parameters()])
        # Tear down only when every rank is done communicating: a rank that closes its gloo
        # connections while its peer still uses them makes the peer abort (seen under load).
        dist.barrier()
    finally:
        dist.destroy_process_group()
