"""`nadam.Nadam` on JAX arrays against the live Keras 2 oracle, bit for bit.

The same contract as the NumPy face's conformance tests: variables, both slots, the momentum
cache, `iterations` and `get_weights()` equal `tf_keras.optimizers.legacy.Nadam`'s after every
step, dense and sparse (repeated rows summed as Keras sums them), in float32 and float64, with
each kind of clipping, other hyperparameters and a learning-rate schedule, on random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras
from conformance.oracle import DTYPES, random_array, random_sparse

from nadam import Nadam, schedules

from .jax_twin import JaxTwin, precision

SHAPES = [(), (3, 4, 2), (17,), (5, 3)]
SEEDS = [11, 2027]
CASES = {
    "plain": {},
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.05},
    "global_clipnorm": {"global_clipnorm": 1.0},
    "hyperparameters": {"learning_rate": 0.0123, "beta_1": 0.85, "beta_2": 0.99, "epsilon": 1e-4},
}


def _twin(arrays: list[np.ndarray], case: str) -> JaxTwin:
    """A twin for a case. Keras 2's Nadam refuses schedule objects, so its side of the
    schedule case is a callable learning rate evaluating Keras's own schedule at its step
    count, which is how Keras 2 users ran one."""
    if case != "schedule":
        return JaxTwin(arrays, **CASES[case])
    keras_schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.7)
    keras = tf_keras.optimizers.legacy.Nadam(
        learning_rate=lambda: keras_schedule(keras.iterations)
    )
    ours = Nadam(learning_rate=schedules.ExponentialDecay(0.01, 4, 0.7))
    return JaxTwin(arrays, ours=ours, keras=keras)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", [*CASES, "schedule"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_trajectory_equals_keras(dtype, case, seed):
    rng = np.random.default_rng(seed)
    with precision(dtype):
        twin = _twin([random_array(rng, s, dtype) for s in SHAPES], case)
        for _ in range(12):
            twin.step([random_array(rng, s, dtype) for s in SHAPES])
            twin.check()
    assert all(type(v._value).__module__.startswith("jax") for v in twin.our_vars)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clipnorm", [None, 0.3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sparse_trajectory_equals_keras(dtype, clipnorm, seed):
    # An embedding-like table and a dense vector in one call; the table's gradient has
    # repeated rows (one at least three times) and sometimes no dense_shape.
    rng = np.random.default_rng(seed)
    kwargs = {} if clipnorm is None else {"clipnorm": clipnorm}
    table, vector = (9, 3), (4,)
    with precision(dtype):
        twin = JaxTwin([random_array(rng, table, dtype), random_array(rng, vector, dtype)],
                       **kwargs)
        for step in range(10):
            sparse = random_sparse(rng, table, dtype, with_dense_shape=bool(step % 2))
            twin.step([sparse, random_array(rng, vector, dtype)])
            twin.check()


@pytest.mark.parametrize(("dtype", "steps"), [(np.float32, 130), (np.float64, 1000)],
                         ids=["float32", "float64"])
def test_past_the_momentum_cache_underflow(dtype, steps):
    # The cache becomes exactly 0 in Keras (float32 ~step 111, float64 ~976): ours too, and
    # the steps after it still match.
    rng = np.random.default_rng(7)
    with precision(dtype):
        twin = JaxTwin([random_array(rng, (6,), dtype)])
        for _ in range(steps):
            twin.step([random_array(rng, (6,), dtype)])
        twin.check()
        assert float(twin.ours.momentum_cache.numpy()) == 0.0


def test_float16_trajectory_equals_keras():
    rng = np.random.default_rng(3)
    twin = JaxTwin([random_array(rng, (5, 2), np.float16), random_array(rng, (7,), np.float16)])
    for _ in range(8):
        twin.step([random_array(rng, (5, 2), np.float16),
                   random_sparse(rng, (7,), np.float16)])
        twin.check()
