"""Data-parallel steps on torch.distributed: 2 gloo processes on loopback.

With `experimental_aggregate_gradients=True` every rank must end with exactly the parameters
and optimizer state of one process stepping on the summed gradients (SUM, as Keras; dense
ones all-reduced, sparse rows all-gathered; clipping after the sum). With False each rank
steps on its own gradients. Under DistributedDataParallel (which averages) with False, the
ranks agree with one process stepping on the averaged gradients.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch_distributed_worker as worker
from torch_helpers import assert_all_bit_equal

from nadam import IndexedSlices, Nadam

WORLD = 2
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Run both ranks once; the tests read what they saved."""
    out = tmp_path_factory.mktemp("gloo")
    context = mp.start_processes(
        worker.run, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} gloo processes did not finish in {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()  # only the processes this fixture started
                process.join(5)
    return out


def _load(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _single_process(grads_per_step) -> list[np.ndarray]:
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in worker.initial_arrays()]
    opt = Nadam(global_clipnorm=worker.CLIP)
    for grads in grads_per_step:
        opt.apply_gradients(zip(grads, params, strict=True))
    return [p.detach().numpy() for p in params] + opt.get_weights()


def _summed(step: int) -> list[object]:
    per_rank = [worker.rank_gradients(rank, step) for rank in range(WORLD)]
    dense = [sum(grads[i] for grads in per_rank[1:]) + per_rank[0][i] for i in range(2)]
    # All-gathered rows in rank order; duplicates are summed at the update, as for one process.
    rows = IndexedSlices(
        torch.cat([grads[2].values for grads in per_rank]),
        torch.cat([grads[2].indices for grads in per_rank]),
        (6, 3),
    )
    return [*dense, rows]


def test_every_rank_equals_one_process_stepping_on_the_summed_gradients(results):
    expected = _single_process([_summed(step) for step in range(worker.STEPS)])
    for rank in range(WORLD):
        ranked = _load(results / f"aggregate_True_rank{rank}.npz")
        assert_all_bit_equal(ranked, expected, f"rank {rank}")
    # The sum really was taken: it differs from rank 0's own run.
    alone = _single_process([worker.rank_gradients(0, step) for step in range(worker.STEPS)])
    assert not np.array_equal(expected[0], alone[0])


def test_without_aggregation_each_rank_steps_on_its_own_gradients(results):
    for rank in range(WORLD):
        alone = _single_process(
            [worker.rank_gradients(rank, step) for step in range(worker.STEPS)]
        )
        assert_all_bit_equal(_load(results / f"aggregate_False_rank{rank}.npz"), alone)


def test_ddp_with_aggregation_off_equals_one_process_on_averaged_gradients(results):
    model, opt = worker.ddp_model(), Nadam()
    for step in range(worker.STEPS):
        per_rank = []
        for rank in range(WORLD):
            data, target = worker.ddp_batch(rank, step)
            loss = torch.nn.functional.mse_loss(model(data), target)
            per_rank.append(torch.autograd.grad(loss, list(model.parameters())))
        averaged = [(a / WORLD + b / WORLD) for a, b in zip(*per_rank, strict=True)]
        opt.apply_gradients(zip(averaged, model.parameters(), strict=True))
    expected = [p.detach().numpy() for p in model.parameters()]
    ranks = [_load(results / f"ddp_rank{rank}.npz") for rank in range(WORLD)]
    assert_all_bit_equal(ranks[0], ranks[1], "rank 0 vs rank 1")
    # DDP divides by the world size (2: exact) and sums two terms: bit for bit again.
    assert_all_bit_equal(ranks[0], expected, "DDP")
