"""TensorFlow's sums of `cases(...)` with a chosen number of intra-op threads, in a fresh process.

TensorFlow fixes its thread pools the first time it runs an op, and the test process's
TensorFlow (the oracle's) has long since run with the machine's default, so
`test_tf_reduce_oracle.py` runs this file as a script:

    python tf_reduce_worker.py THREADS SELECTIONS OUT.npz

It sets the intra-op thread count before TensorFlow runs anything, computes `tf.reduce_sum(x)`,
`tf.reduce_sum(x * x)` or `tf.nn.l2_loss(x)` for every case of `cases(SELECTIONS)` and saves the
results, in order and in their dtypes, to OUT.npz. The test regenerates the same inputs from
`cases` (deterministic) rather than shipping them between processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import numpy as np

DTYPES = (np.float16, np.float32, np.float64)
OPS = ("reduce_sum", "square_sum", "l2_loss")
LARGE = (1 << 20, 1_000_003, 4_000_037)

# The first sizes at which Eigen's cost model (see nadam.tf_reduce) cuts a sum into more than
# one shard; (op, dtype) -> size. Duplicated here as numbers so that the worker needs nothing
# but NumPy and TensorFlow; the test checks them against nadam.tf_reduce.first_sharded_size.
FIRST_SHARDED = {
    ("reduce_sum", np.float16): 131_765,
    ("reduce_sum", np.float32): 108_388,
    ("reduce_sum", np.float64): 54_194,
    ("square_sum", np.float16): 131_765,
    ("square_sum", np.float32): 108_388,
    ("square_sum", np.float64): 54_194,
    ("l2_loss", np.float16): 113_899,
    ("l2_loss", np.float32): 96_000,
    ("l2_loss", np.float64): 48_000,
}


def _shape(rng: np.random.Generator, n: int) -> tuple[int, ...]:
    # Some cases are 0-d or 2-d/3-d: the sum runs over the row-major order whatever the rank.
    if n == 1 and rng.random() < 0.5:
        return ()
    for a in (3, 4, 5):
        if n % a == 0 and n > a and rng.random() < 0.3:
            return (a, n // a) if rng.random() < 0.5 else (a, 1, n // a)
    return (n,)


def _values(rng: np.random.Generator, n: int, dtype: type, op: str) -> np.ndarray:
    # Magnitudes spread over several decades, so that the order of additions shows in the
    # last bits; float16 squares stay below its overflow, except where a case wants inf.
    high = 1.0 if dtype is np.float16 else 3.0
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3.0, high, n)
    if op == "reduce_sum" and rng.random() < 0.5:
        x = np.abs(x)  # no negative summand: the compiled path
    return x.astype(dtype)


def sizes(selection: str, rng: np.random.Generator) -> list[int]:
    if selection == "small":
        # Around every boundary of the order (packets, blocks of four, leaves of the tree) and
        # many random sizes below the sharding threshold, odd ones included.
        edges = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1599, 1600,
                 1601, 3201, 4095, 4096, 4097, 8191, 8192, 8193, 16385, 33333]
        randoms = rng.integers(1, 100_000, 40).tolist()
        return edges + randoms + [2 * r + 1 for r in rng.integers(1, 50_000, 10).tolist()]
    if selection == "large":
        return list(LARGE)
    raise ValueError(selection)


def cases(selection: str) -> Iterator[tuple[str, type, np.ndarray]]:
    """(op, dtype, input) for the comma-separated selections: "small" (up to 100k elements),
    "large" (1M to 4M) and "sharded" (around the sizes where TensorFlow starts to use threads)."""
    for name in selection.split(","):
        yield from _cases(name)


def _cases(selection: str) -> Iterator[tuple[str, type, np.ndarray]]:
    rng = np.random.default_rng({"small": 1, "large": 2, "sharded": 3}[selection])
    for op in OPS:
        for dtype in DTYPES:
            if selection == "sharded":
                first = FIRST_SHARDED[(op, dtype)]
                chosen = [first - 1, first, first + 1, 2 * first + 3, 3 * first + 5,
                          int(rng.integers(first, 6 * first))]
            else:
                chosen = sizes(selection, rng)
            for n in chosen:
                yield op, dtype, _values(rng, n, dtype, op).reshape(_shape(rng, n))


def main() -> None:
    threads, selection, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    ops = {
        "reduce_sum": lambda t: tf.reduce_sum(t),
        "square_sum": lambda t: tf.reduce_sum(t * t),  # as tf.clip_by_norm
        "l2_loss": tf.nn.l2_loss,  # as tf.clip_by_global_norm
    }
    results = [ops[op](tf.constant(x)).numpy() for op, _, x in cases(selection)]
    np.savez(out, *results)


if __name__ == "__main__":
    main()
