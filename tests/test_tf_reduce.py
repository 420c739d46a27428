"""`nadam.tf_reduce`: TensorFlow's summation order, hand-checked and compiled-vs-reference.

The live comparison with TensorFlow is tests/conformance/test_tf_reduce_oracle.py; here the
compiled kernel is held to the NumPy reference bit for bit, without TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nadam import tf_reduce
from nadam.tf_reduce import HALF_SQUARE, SQUARE, SUM

DTYPES = (np.float16, np.float32, np.float64)
MODES = (SUM, SQUARE, HALF_SQUARE)


def same(a, b) -> bool:
    """Equal bits and dtype (NaN equals NaN, -0 differs from 0)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _compiled(x, mode, threads=1):
    return tf_reduce._reduce(x, mode, threads)


# --- the order, by hand --------------------------------------------------------------------------


def test_leaf_adds_the_tail_to_the_lane_tree():
    # Nine float32: one packet of 8 lanes and a tail of one. predux adds lane i + i+4 (here
    # 1 + 1 = 2 in lane 1), then i + i+2, then i + i+1: 2^24 + 2, exact. The tail's scalar
    # (1) is added last: 2^24 + 3 is a tie and rounds to the even 2^24 + 4. NumPy pairs
    # neighbours (2^24 + 1 rounds to 2^24) and gets 2^24; so does adding left to right.
    x = np.array([2.0**24, 1, 0, 0, 0, 1, 0, 0, 1], np.float32)
    assert same(tf_reduce.reduce_sum(x), np.float32(2.0**24 + 4))
    assert same(tf_reduce.reference(x, SUM), np.float32(2.0**24 + 4))
    assert np.sum(x) == np.float32(2.0**24)


def test_float16_lanes_are_added_in_float32():
    # Eight float16: predux adds the lanes in float32 (2048 + 7 = 2055 exactly) and rounds
    # once, to the even 2056; float16 additions would have lost every 1 (2048).
    x = np.array([2048.0] + [1.0] * 7, np.float16)
    assert same(tf_reduce.reduce_sum(x), np.float16(2056))
    assert same(tf_reduce.reference(x, SUM), np.float16(2056))


def test_four_accumulators_then_whole_packets_then_the_tail():
    # 32 + 8 + 3 float64 (packets of 4): blocks of four packets, a whole packet, a tail. The
    # reference states the order; the hand count: each lane sums its own column.
    x = np.arange(1, 44, dtype=np.float64)
    assert tf_reduce.reduce_sum(x) == sum(range(1, 44))  # exact: small integers
    assert same(tf_reduce.reduce_sum(x), tf_reduce.reference(x, SUM))


# --- compiled kernel == NumPy reference ----------------------------------------------------------


def _random(rng, n, dtype, signed=True):
    high = 1.0 if dtype is np.float16 else 3.0
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3.0, high, n)
    return (x if signed else np.abs(x)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_compiled_equals_reference(dtype):
    rng = np.random.default_rng(7)
    packet = tf_reduce.packet_size(dtype)
    tree = packet * tf_reduce.leaf_size(dtype)
    sizes = [0, 1, 2, packet - 1, packet, packet + 1, 4 * packet - 1, 4 * packet, 4 * packet + 1,
             5 * packet + 3, tree - 1, tree, tree + 1, 2 * tree + 7, 5 * tree + 3]
    sizes += rng.integers(1, 20_000, 12).tolist()
    for n in sizes:
        for mode in MODES:
            x = _random(rng, n, dtype, signed=mode != SUM or n % 2 == 0)
            assert same(_compiled(x, mode), tf_reduce.reference(x, mode)), (n, mode)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_compiled_equals_reference_in_shards(dtype):
    rng = np.random.default_rng(8)
    for mode in MODES:
        first = tf_reduce.first_sharded_size(dtype, mode)
        for n, threads in [(first, 2), (first + 1, 2), (3 * first + 1, 8), (3 * first + 1, 3)]:
            x = _random(rng, n, dtype, signed=False)
            assert tf_reduce.shards(n, dtype, mode, threads) > 1
            assert same(_compiled(x, mode, threads), tf_reduce.reference(x, mode, threads))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_special_values(dtype):
    finfo = np.finfo(dtype)
    big = np.sqrt(finfo.max)
    cases = [
        [np.inf, 1.0], [np.nan, 2.0], [-np.inf, 3.0], [0.0, -0.0], [-0.0] * 3, [-0.0] * 40,
        [big] * 5,  # squares overflow
        [big * 0.3] * 37,  # a partial sum overflows
        [finfo.tiny / 4] * 9,  # subnormal inputs
        [np.sqrt(finfo.tiny) * 1.2] * 40,  # squares normal, half squares subnormal
    ]
    for values in cases:
        x = np.array(values, dtype)
        for mode in MODES:
            with np.errstate(all="ignore"):
                assert same(_compiled(x, mode), tf_reduce.reference(x, mode)), (values, mode)


# --- TensorFlow's rules --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_to_zero(dtype):
    tiny = np.finfo(dtype).tiny
    # A square below the smallest normal is 0 (TensorFlow's Mul flushes it) ...
    assert tf_reduce.square_sum(np.full(20, np.sqrt(tiny) / 2, dtype)) == 0
    # ... and half a square below it too (l2_loss), though the square itself counts.
    x = np.full(20, np.sqrt(tiny) * 1.2, dtype)
    assert tf_reduce.l2_loss(x) == 0 and tf_reduce.square_sum(x) > 0
    # A partial sum that cancels into the subnormal range is 0.
    assert same(tf_reduce.reduce_sum(np.array([1.5 * tiny, -tiny], dtype)), dtype(0))
    # One element is copied, not added: a subnormal (or -0) survives.
    assert same(tf_reduce.reduce_sum(np.array([tiny / 4], dtype)), dtype(tiny / 4))
    assert same(tf_reduce.reduce_sum(np.array([-0.0], dtype)), dtype(-0.0))
    assert same(tf_reduce.reduce_sum(np.array([-0.0, -0.0], dtype)), dtype(0.0))


def test_float16_keeps_subnormals():
    x = np.array([6e-8, 6e-8, 1.2e-7], np.float16)  # float16 subnormals
    assert tf_reduce.reduce_sum(x) > 0
    assert tf_reduce.square_sum(np.full(8, 2e-3, np.float16)) > 0  # subnormal float16 squares


def test_any_shape_and_layout_sums_in_row_major_order():
    rng = np.random.default_rng(3)
    x = _random(rng, 6 * 7 * 9, np.float32).reshape(6, 7, 9)
    flat = tf_reduce.square_sum(x.ravel())
    assert same(tf_reduce.square_sum(x), flat)
    for view in (x.transpose(2, 0, 1), x[:, ::2], x[::-1], x[..., ::-3]):
        assert same(tf_reduce.square_sum(view), tf_reduce.square_sum(view.copy().ravel()))
    assert same(tf_reduce.square_sum(np.float32(3.0)), np.float32(9.0))  # 0-d
    assert same(tf_reduce.l2_loss(np.zeros((0, 4), np.float64)), np.float64(0))


def test_input_checks():
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        tf_reduce.square_sum(np.arange(4))
    with pytest.raises(ValueError, match="threads"):
        tf_reduce.square_sum(np.ones(4, np.float32), threads=0)


# --- the thread-count model ----------------------------------------------------------------------


def test_shards_follow_eigens_cost_model():
    # float32 reduce_sum: 4 bytes * 11/64 + 10/8 = 1.9375 cycles per element; a second thread
    # once (n * 1.9375 - 1e5) / 1e5 + 0.9 >= 2, i.e. from 108,388 elements.
    assert tf_reduce.first_sharded_size(np.float32, SQUARE) == 108_388
    assert tf_reduce.shards(108_387, np.float32, SQUARE, 64) == 1
    assert tf_reduce.shards(108_388, np.float32, SQUARE, 64) == 2
    assert tf_reduce.shards(10**9, np.float32, SQUARE, 1) == 1
    assert tf_reduce.shards(10**9, np.float32, SQUARE, 8) == 8
    # l2_loss costs two more operations per element: sharded sooner.
    assert tf_reduce.first_sharded_size(np.float32, HALF_SQUARE) == 96_000


def test_two_threads_agree_with_one_where_the_halves_are_whole_packets():
    # Two shards [0, n/2) and [n/2, n) are the tree's own halves when n/2 is a multiple of
    # the packet (powers of two: why a test on such sizes sees no thread dependence); for other
    # sizes the halves are cut elsewhere, and a remainder is added first.
    rng = np.random.default_rng(5)
    x = _random(rng, 1 << 20, np.float32)
    assert same(tf_reduce.square_sum(x, threads=2), tf_reduce.square_sum(x))
    differs = 0
    for n in (300_001, 300_003, 500_005, 700_007):
        x = _random(rng, n, np.float32)
        differs += not same(tf_reduce.square_sum(x, threads=2), tf_reduce.square_sum(x))
    assert differs > 0


def test_without_numba_the_reference_gives_the_same_bits(monkeypatch):
    def broken(name):
        raise ImportError("no numba here")

    monkeypatch.setattr(tf_reduce, "_module", None)
    monkeypatch.setattr(tf_reduce, "_failure", None)
    monkeypatch.setattr(tf_reduce.importlib, "import_module", broken)
    x = _random(np.random.default_rng(9), 20_000, np.float32)
    with pytest.warns(RuntimeWarning, match="no numba here"):
        result = tf_reduce.square_sum(x)
    assert same(result, tf_reduce.reference(x, SQUARE))
    monkeypatch.undo()
    assert same(result, tf_reduce.square_sum(x))


def test_importing_nadam_does_not_import_numba():
    code = "import sys, nadam, nadam.tf_reduce; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
