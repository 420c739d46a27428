"""`nadam.kernels.tf_ops` (the TensorFlow backend's step) against the plain reference, in this
process: the scalars against `step_scalars.nadam_scalars`, the dense and sparse steps against
`kernels.reference`, bit for bit, in float32 and float64, eagerly and in `tf.function`, with
subnormal inputs and underflowing products among the elements."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from nadam.kernels import reference, tf_ops  # noqa: E402
from nadam.step_scalars import decayed_learning_rate, nadam_scalars  # noqa: E402

DTYPES = ("float32", "float64")
HYPERS = (0.0123, 0.87, 0.9973, 3e-7, 0.006)  # lr, beta_1, beta_2, epsilon, schedule_decay


def _elements(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values with some tiny ones: subnormal, and ones whose products underflow."""
    tiny = np.finfo(dtype).tiny
    values = rng.standard_normal(shape) * 10 ** rng.uniform(-4, 1, shape)
    small = rng.random(shape) < 0.3
    scaled = values * float(tiny) * 10 ** rng.uniform(-6, 12, shape)
    return np.where(small, scaled, values).astype(dtype)


def _bits(a: object) -> bytes:
    return np.asarray(a).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("iterations", [0, 1, 109, 110, 111, 400, 975, 976, 5000])
def test_scalars_are_the_hosts(dtype: str, iterations: int) -> None:
    lr, beta_1, beta_2, epsilon, schedule_decay = HYPERS
    for cache in (1.0, 0.37, 1e-30, 0.0):
        host_cache = np.dtype(dtype).type(cache)
        expected, prod = nadam_scalars(dtype, iterations, host_cache, lr, beta_1, beta_2,
                                       epsilon, schedule_decay)
        decayed = tf_ops.decayed_learning_rate(lr, 0.0, tf.constant(iterations, tf.int64),
                                               dtype)
        ours, our_prod = tf_ops.nadam_scalars(
            tf.constant(iterations, tf.int64), tf.constant(host_cache), decayed, beta_1,
            beta_2, epsilon, schedule_decay, dtype)
        for name, a, b in zip(expected._fields, ours, expected, strict=True):
            assert _bits(a.numpy()) == _bits(b), (name, a.numpy(), b)
        assert _bits(our_prod.numpy()) == _bits(prod)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decayed_learning_rate_is_the_hosts(dtype: str) -> None:
    for iterations in (0, 1, 7, 12345):
        expected = decayed_learning_rate(np.asarray(np.float32(0.01)),
                                         np.asarray(np.float32(0.003)), iterations,
                                         np.dtype(dtype))
        ours = tf_ops.decayed_learning_rate(0.01, 0.003, tf.constant(iterations, tf.int64),
                                            dtype)
        assert _bits(ours.numpy()) == _bits(expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("traced", [False, True])
def test_dense_and_sparse_steps_are_the_references(dtype: str, traced: bool) -> None:
    rng = np.random.default_rng(5)
    s, _ = nadam_scalars(dtype, 130, np.dtype(dtype).type(0.01), *HYPERS)
    x, g = _elements(rng, (64, 5), dtype), _elements(rng, (64, 5), dtype)
    m, v = _elements(rng, (64, 5), dtype), np.abs(_elements(rng, (64, 5), dtype))
    dense = tf.function(tf_ops.dense_update) if traced else tf_ops.dense_update
    sparse = tf.function(tf_ops.sparse_update) if traced else tf_ops.sparse_update
    tf_s = type(s)(*(tf.constant(value) for value in s))

    ours = dense(tf.constant(x), tf.constant(g), tf.constant(m), tf.constant(v), tf_s)
    expected = reference.dense_step(x, g, m, v, s, np.sqrt)
    for name, a, b in zip("xmv", ours, expected, strict=True):
        assert _bits(a.numpy()) == _bits(b), name

    indices = np.array([7, 3, 7, 60, 0, 3, 7], np.int64)  # repeats, summed in order first
    values = _elements(rng, (len(indices), 5), dtype)
    ours = sparse(tf.constant(x), tf.constant(indices), tf.constant(values), tf.constant(m),
                  tf.constant(v), tf_s)
    unique = np.array([7, 3, 60, 0])
    rows = np.zeros((len(unique), 5), dtype)
    for index, row in zip(indices, values, strict=True):
        position = int(np.flatnonzero(unique == index)[0])
        rows[position] = reference.add(reference.flush(rows[position]), reference.flush(row))
    new_rows, m_decayed, m_rows, v_decayed, v_rows = reference.sparse_step(
        x[unique], rows, m, v, unique, s, np.sqrt)
    x_expected, m_expected, v_expected = x.copy(), m_decayed.copy(), v_decayed.copy()
    x_expected[unique], m_expected[unique], v_expected[unique] = new_rows, m_rows, v_rows
    for name, a, b in zip("xmv", ours, (x_expected, m_expected, v_expected), strict=True):
        assert _bits(a.numpy()) == _bits(b), name
