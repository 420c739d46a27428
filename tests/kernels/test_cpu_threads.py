"""The fused CPU kernel on several threads (`kernels._chunk_pool`): the same bits for any thread
count, no step waiting for helpers that have not started, and a pool whose helpers stall.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from kernel_helpers import (
    BIG,
    assert_bitwise_equal,
    assert_fused_equals_reference,
    random_sparse,
    random_variables,
)

from nadam.kernels import cpu
from nadam.nadam import nadam_scalars


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_any_number_of_threads_gives_the_same_bits(threads):
    shapes = [(BIG,), (BIG // 2, 3), (9,)]
    before = cpu.get_num_threads()
    cpu.set_num_threads(threads)
    try:
        assert_fused_equals_reference(
            random_variables(shapes, np.float32),
            lambda rng, step: [rng.standard_normal(shapes[0]).astype(np.float32),
                               random_sparse(rng, shapes[1], np.float32, 5_000),
                               rng.standard_normal(shapes[2]).astype(np.float32)],
        )
    finally:
        cpu.set_num_threads(before)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match="positive integer"):
        cpu.set_num_threads(threads)


def test_a_step_never_waits_for_helpers_that_have_not_started():
    # Both helpers are kept busy, as if the other cores belonged to another process: the
    # calling thread claims every chunk itself and returns, long before they are free; when
    # they finally read the job, nothing is left for them to do.
    from nadam.kernels import _chunk_pool, _cpu_numba

    pool = _chunk_pool.ChunkPool(threads=3)
    pool._ensure_helpers(2)
    gate = threading.Event()
    for _ in range(2):
        pool._jobs.put((gate.wait, (30,)))
    rng = np.random.default_rng(0)
    x, g, m, v = (rng.standard_normal(BIG).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    expected = [a.copy() for a in (x, m, v)]
    s, _ = nadam_scalars(np.float32, iterations=2, momentum_cache=0.5)
    scalars = np.array(s, np.float32)
    table = np.array([[a.ctypes.data for a in (x, g, m, v)]], np.int64)
    offsets = np.array([0, BIG], np.int64)
    exp_table = np.array([[a.ctypes.data for a in (expected[0], g, expected[1], expected[2])]],
                         np.int64)
    _cpu_numba.dense_serial(exp_table, offsets, scalars)
    chunks = _cpu_numba.chunk_count(BIG, _cpu_numba.CHUNK)
    start = time.perf_counter()
    pool.run(_cpu_numba.dense_chunks, (table, offsets, scalars), chunks,
             _cpu_numba.finished_chunks)
    assert time.perf_counter() - start < 10  # the gate stays shut for 30 s
    for ours, theirs in zip((x, m, v), expected, strict=True):
        assert_bitwise_equal(ours, theirs, "done by the calling thread")
    gate.set()
    deadline = time.perf_counter() + 10
    while not pool._jobs.empty() and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the helpers claim past the end and leave the arrays alone
    for ours, theirs in zip((x, m, v), expected, strict=True):
        assert_bitwise_equal(ours, theirs, "untouched by late helpers")


def test_a_pool_whose_helpers_stall_runs_alone_for_a_while():
    # A fake job whose chunks a "preempted helper" finishes late: the pool notices the long
    # wait and runs the following calls without helpers, then tries them again.
    from nadam.kernels import _chunk_pool

    pool = _chunk_pool.ChunkPool(threads=2)
    queued: list[Any] = []
    pool._ensure_helpers = lambda count: None  # no real threads: record what would be sent
    pool._jobs = type("Jobs", (), {"put": staticmethod(queued.append)})()
    late = {"until": 0.0}

    def kernel(counters: np.ndarray) -> None:
        counters[0] = 1

    def finished(counters: np.ndarray) -> int:  # all 4 chunks are done once "late" is over
        return 4 if time.perf_counter() >= late["until"] else 3

    late["until"] = time.perf_counter() + 5 * pool.STALL_SECONDS
    pool.run(kernel, (), chunks=4, finished=finished)
    assert pool.stalls == 1 and len(queued) == 1
    for _ in range(2):  # the next calls go without helpers
        pool.run(kernel, (), chunks=4, finished=finished)
    assert len(queued) == 1
    pool.run(kernel, (), chunks=4, finished=finished)  # and then helpers are tried again
    assert len(queued) == 2 and pool.stalls == 1
