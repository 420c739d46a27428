"""Gradient clipping inside `apply_gradients` against the live Keras 2 oracle.

tf_keras 2.21's legacy optimizer clips inside `apply_gradients` (clipvalue, then clipnorm, then
global_clipnorm), as we do (SPEC section 3), so whole trajectories are compared directly, bit
for bit. clipnorm and global_clipnorm take sums of squares, which we add in TensorFlow's CPU
order (`nadam.tf_reduce`): with NumPy's order the norm differed in the last bit in about a
third of the steps, and gradients whose duplicate sparse rows nearly cancel amplified that ulp
far beyond any fixed tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nadam import IndexedSlices, Nadam, clipping
from nadam.backends import NUMPY_BACKEND, DenseGrad, SparseGrad

from .oracle import (
    DTYPES,
    PATHS,
    KerasNadam,
    Twin,
    random_array,
    random_sparse,
    row_shapes,
    seeds,
    tf,
    to_tf_gradient,
)

OPTIONS = [
    ("clipvalue",),
    ("clipnorm",),
    ("global_clipnorm",),
    ("clipvalue", "clipnorm"),
    ("clipvalue", "global_clipnorm"),
]

clip_constants = st.fixed_dictionaries(
    {
        "clipvalue": st.floats(0.01, 3.0),
        "clipnorm": st.floats(0.01, 5.0),
        "global_clipnorm": st.floats(0.05, 10.0),
    }
)


def _gradients(rng, step, dense_shapes, sparse_shape, dtype):
    # Every other step is 100 times larger, so clipping is active on some steps, not others.
    boost = dtype(100) if step % 2 else dtype(1)
    grads = [random_array(rng, s, dtype) * boost for s in dense_shapes]
    sparse = random_sparse(rng, sparse_shape, dtype)
    grads.append(IndexedSlices(sparse.values * boost, sparse.indices, sparse.dense_shape))
    return grads


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids="+".join)
@settings(max_examples=2, deadline=None)
@given(constants=clip_constants, sparse_shape=row_shapes, seed=seeds)
# Failed with NumPy's summation order (float32, clipvalue+clipnorm): one ulp in a norm made the
# first step of the sparse variable 0.3 % different, as its duplicate rows nearly cancel.
@example(constants={"clipvalue": 1.419921875, "clipnorm": 1.0, "global_clipnorm": 1.0},
         sparse_shape=(3, 3, 5), seed=533)
def test_clipping_in_apply_gradients_matches_keras(options, dtype, path, constants, sparse_shape,
                                                   seed):
    # One call holds dense (0-d, 3-d) and sparse (duplicate indices) gradients: per-tensor
    # clipping sees each, the global norm all of them together. Every step is compared exactly.
    rng = np.random.default_rng(seed)
    kwargs = {name: constants[name] for name in options}
    dense_shapes = [(), (3, 2, 2)]
    arrays = [random_array(rng, s, dtype) for s in [*dense_shapes, sparse_shape]]
    twin = Twin(arrays, path, learning_rate=0.01, **kwargs)
    for step in range(20):
        twin.step(_gradients(rng, step, dense_shapes, sparse_shape, dtype))
        twin.check()


@pytest.mark.parametrize("dtype", (np.float16, *DTYPES), ids=lambda d: np.dtype(d).name)
@settings(max_examples=10, deadline=None)
@given(constants=clip_constants, sparse_shape=row_shapes, seed=seeds)
def test_clip_functions_match_tensorflow_ops(dtype, constants, sparse_shape, seed):
    # The clipping functions alone, against the TF ops Keras calls, bit for bit: the norms,
    # the clipped values and the global norm.
    rng = np.random.default_rng(seed)
    dense = random_array(rng, (4, 3, 2), dtype) * dtype(10 ** rng.uniform(-1, 2))
    sparse = random_sparse(rng, sparse_shape, dtype)
    ours = [(NUMPY_BACKEND, DenseGrad(dense)), (NUMPY_BACKEND, SparseGrad(sparse.values,
                                                                          sparse.indices))]
    theirs = [tf.constant(dense), to_tf_gradient(sparse)]

    def values(grad):
        return grad.array if isinstance(grad, DenseGrad) else grad.values

    def tf_values(grad):
        return (grad.values if isinstance(grad, tf.IndexedSlices) else grad).numpy()

    c = constants["clipvalue"]
    for (backend, grad), tf_grad in zip(ours, theirs, strict=True):
        clipped = values(clipping.clip_by_value(backend, grad, c))
        np.testing.assert_array_equal(clipped, tf_values(tf.clip_by_value(tf_grad, -c, c)),
                                      strict=True)
        c_norm = constants["clipnorm"]
        with np.errstate(over="ignore", invalid="ignore"):  # float16 norms may overflow
            clipped = values(clipping.clip_by_norm(backend, grad, c_norm))
        expected = tf_values(tf.clip_by_norm(tf_grad, c_norm))
        np.testing.assert_array_equal(clipped, expected, strict=True)

    c_global = constants["global_clipnorm"]
    expected, tf_norm = tf.clip_by_global_norm(theirs, c_global)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = clipping.global_norm(ours)
        clipped = clipping.clip_by_global_norm(ours, c_global)
    np.testing.assert_array_equal(norm, tf_norm.numpy(), strict=True)
    for grad, tf_grad in zip(clipped, expected, strict=True):
        np.testing.assert_array_equal(values(grad), tf_values(tf_grad), strict=True)


def test_global_norm_is_built_from_l2_loss_as_tensorflows():
    # tf.clip_by_global_norm halves each square before summing (l2_loss): a float16 square
    # of 2**-24 halves to 0, so these gradients have global norm 0 in TensorFlow, though their
    # squares sum to 2**-22 (a norm of 2**-11 with the halving done after the sum).
    grads = [np.full(4, 2.0**-12, np.float16), np.full(3, 2.0**-12, np.float16)]
    ours = clipping.global_norm([(NUMPY_BACKEND, DenseGrad(g)) for g in grads])
    assert tf.linalg.global_norm([tf.constant(g) for g in grads]).numpy() == 0
    np.testing.assert_array_equal(ours, np.float16(0), strict=True)


def test_clipnorm_and_global_clipnorm_together_raise_as_keras():
    with pytest.raises(ValueError, match="global_clipnorm"):
        KerasNadam(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(ValueError, match="Cannot accept both `clipnorm` and `global_clipnorm`"):
        Nadam(clipnorm=1.0, global_clipnorm=1.0)


@pytest.mark.parametrize("path", PATHS)
def test_clipping_changes_the_step(path):
    # Guards the tests above against clip constants that never bite: with each option the
    # first step differs from an unclipped one, and equals Keras's.
    rng = np.random.default_rng(11)
    x0 = random_array(rng, (5,), np.float32)
    g = np.full(5, 50.0, np.float32)
    plain = Twin([x0], path)
    plain.step([g])
    for options in OPTIONS:
        twin = Twin([x0], path, **{name: 1.0 for name in options})
        twin.step([g])
        twin.check()
        assert not np.array_equal(twin.ours.get_weights()[2], plain.ours.get_weights()[2])
