"""`nadam.tf_reduce` against TensorFlow's own sums, bit for bit, at 1, 2 and 8 intra-op threads.

TensorFlow runs in a separate process per thread count (`tf_reduce_worker.py`), its intra-op
thread pool set before it runs anything. With one thread its sums depend on nothing else; with
more, Eigen's cost model cuts large sums into shards, and `tf_reduce` reproduces that given the
same thread count. The optimizer itself always uses the one-thread order (see tf_reduce).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nadam import tf_reduce

from . import tf_reduce_worker as worker

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow (the oracle)"
)

OURS = {
    "reduce_sum": tf_reduce.reduce_sum,
    "square_sum": tf_reduce.square_sum,
    "l2_loss": tf_reduce.l2_loss,
}

def tensorflow_sums(threads: int, selections: str, tmp_path_factory) -> list[np.ndarray]:
    """TensorFlow's results for `worker.cases(selections)` with `threads` intra-op threads."""
    out = tmp_path_factory.mktemp("tf_reduce") / "sums.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, str(Path(worker.__file__)), str(threads), selections, str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _mismatches(threads: int, selections: str, theirs: list[np.ndarray]) -> list[str]:
    cases = list(worker.cases(selections))
    assert len(cases) == len(theirs)
    found = []
    for (op, dtype, x), expected in zip(cases, theirs, strict=True):
        ours = OURS[op](x, threads=threads)
        if ours.dtype != expected.dtype or ours.tobytes() != expected.tobytes():
            found.append(f"{op} {np.dtype(dtype)} shape {x.shape}: TensorFlow {expected!r}, "
                         f"ours {ours!r}")
    return found


def test_first_sharded_sizes_follow_the_cost_model():
    for (op, dtype), size in worker.FIRST_SHARDED.items():
        mode = {"reduce_sum": tf_reduce.SUM, "square_sum": tf_reduce.SQUARE,
                "l2_loss": tf_reduce.HALF_SQUARE}[op]
        assert tf_reduce.first_sharded_size(dtype, mode) == size, (op, dtype)


def test_one_thread_every_size(tmp_path_factory):
    # Sizes 0 to 100k around every boundary of Eigen's order, odd and random ones, 1M to 4M,
    # and the sizes where more threads would shard: all equal to TensorFlow's single thread.
    selections = "small,large,sharded"
    theirs = tensorflow_sums(1, selections, tmp_path_factory)
    assert _mismatches(1, selections, theirs) == []


@pytest.mark.parametrize("threads", [2, 8])
def test_more_threads_shard_as_eigen_does(threads, tmp_path_factory):
    selections = "sharded,large"
    theirs = tensorflow_sums(threads, selections, tmp_path_factory)
    assert _mismatches(threads, selections, theirs) == []
    # TensorFlow's own result depends on its thread count: below the first sharded size it is
    # the one-thread result (which ours is, test above), from there on not always, not even
    # with 2 threads. This is why the optimizer pins the one-thread order.
    differ = 0
    for (op, dtype, x), result in zip(worker.cases(selections), theirs, strict=True):
        one_thread = OURS[op](x)
        if x.size < worker.FIRST_SHARDED[(op, dtype)]:
            assert one_thread.tobytes() == result.tobytes(), (op, dtype, x.size)
        differ += one_thread.tobytes() != result.tobytes()
    assert differ > 0
