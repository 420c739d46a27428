"""Gradient clipping by value, per-tensor norm and global norm (SPEC section 3), hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from nadam import IndexedSlices, Nadam, Variable, clipping
from nadam.backends import NUMPY_BACKEND as NP
from nadam.backends import DenseGrad, SparseGrad


def _dense(values, dtype=np.float32) -> DenseGrad:
    return DenseGrad(np.array(values, dtype=dtype))


def _sparse(values, indices, dtype=np.float32) -> SparseGrad:
    return SparseGrad(np.array(values, dtype=dtype), np.array(indices, np.int64))


# --- the clip functions ----------------------------------------------------------------------


def test_clip_by_value_dense_and_sparse():
    grad = _dense([-3.0, 0.5, 2.0, -0.25])
    clipped = clipping.clip_by_value(NP, grad, 1.0)
    np.testing.assert_array_equal(clipped.array, [-1.0, 0.5, 1.0, -0.25])
    assert clipped.array.dtype == np.float32
    np.testing.assert_array_equal(grad.array, [-3.0, 0.5, 2.0, -0.25])  # input untouched

    sparse = _sparse([[5.0, -5.0], [0.1, 0.2]], [3, 1], np.float64)
    clipped = clipping.clip_by_value(NP, sparse, 0.15)
    assert isinstance(clipped, SparseGrad)
    np.testing.assert_array_equal(clipped.values, [[0.15, -0.15], [0.1, 0.15]])
    np.testing.assert_array_equal(clipped.indices, [3, 1])


def test_clip_by_norm_scales_only_above_the_threshold():
    clipped = clipping.clip_by_norm(NP, _dense([3.0, 4.0], np.float64), 1.0)  # norm 5
    np.testing.assert_allclose(clipped.array, [0.6, 0.8], rtol=1e-15)
    unclipped = clipping.clip_by_norm(NP, _dense([3.0, 4.0], np.float64), 10.0)
    np.testing.assert_array_equal(unclipped.array, [3.0, 4.0])
    matrix = clipping.clip_by_norm(NP, _dense([[1.0, 2.0], [2.0, 4.0]]), 2.5)  # norm 5
    np.testing.assert_allclose(matrix.array, [[0.5, 1.0], [1.0, 2.0]], rtol=1e-7)
    assert matrix.array.dtype == np.float32


def test_clip_by_norm_sparse_uses_the_values_norm():
    sparse = _sparse([[3.0, 0.0], [0.0, 4.0]], [0, 7], np.float64)
    clipped = clipping.clip_by_norm(NP, sparse, 2.0)
    np.testing.assert_allclose(clipped.values, [[1.2, 0.0], [0.0, 1.6]], rtol=1e-15)
    np.testing.assert_array_equal(clipped.indices, [0, 7])


def test_clip_by_norm_of_a_zero_gradient_stays_zero():
    with np.errstate(all="raise"):
        clipped = clipping.clip_by_norm(NP, _dense([0.0, 0.0, 0.0]), 1.0)
    np.testing.assert_array_equal(clipped.array, [0.0, 0.0, 0.0])


def test_global_norm_and_clip_by_global_norm():
    items = [(NP, _dense([3.0, 4.0], np.float64)), (NP, _sparse([[12.0]], [2], np.float64))]
    assert clipping.global_norm(items) == pytest.approx(13.0, rel=1e-15)
    clipped = clipping.clip_by_global_norm(items, 1.0)
    np.testing.assert_allclose(clipped[0].array, [3 / 13, 4 / 13], rtol=1e-15)
    np.testing.assert_allclose(clipped[1].values, [[12 / 13]], rtol=1e-15)
    np.testing.assert_array_equal(clipped[1].indices, [2])
    untouched = clipping.clip_by_global_norm(items, 26.0)
    np.testing.assert_allclose(untouched[0].array, [3.0, 4.0], rtol=1e-15)
    np.testing.assert_allclose(untouched[1].values, [[12.0]], rtol=1e-15)


def test_global_norm_of_mixed_dtypes():
    items = [(NP, _dense([3.0], np.float32)), (NP, _dense([4.0], np.float64))]
    norm = clipping.global_norm(items)
    assert norm.dtype == np.float64 and norm == 5.0
    clipped = clipping.clip_by_global_norm(items, 1.0)
    assert clipped[0].array.dtype == np.float32 and clipped[1].array.dtype == np.float64
    np.testing.assert_allclose(clipped[0].array, [0.6], rtol=1e-7)
    np.testing.assert_allclose(clipped[1].array, [0.8], rtol=1e-15)


def test_zero_global_norm_stays_zero():
    items = [(NP, _dense([0.0, 0.0])), (NP, _dense([0.0]))]
    clipped = clipping.clip_by_global_norm(items, 1.0)
    for grad in clipped:
        np.testing.assert_array_equal(grad.array, np.zeros_like(grad.array))


def test_infinite_global_norm_gives_nan_everywhere():
    # As Keras (tf.clip_by_global_norm): a non-finite global norm poisons every gradient.
    items = [(NP, _dense([np.inf, 1.0])), (NP, _dense([1.0, 2.0]))]
    clipped = clipping.clip_by_global_norm(items, 1.0)
    assert all(np.isnan(grad.array).all() for grad in clipped)


# --- the norms are TensorFlow's sums -------------------------------------------------------------
# x * x = [2^24, 1, 0, 0, 0, 1, 0, 0, 1]: TensorFlow (Eigen) adds lane i to lane i+4 first, so the
# two middle 1s meet before they meet 2^24, and the sum is 2^24 + 4 (tests/test_tf_reduce.py has
# the step by step); NumPy's order loses every 1 (2^24). The norms differ in the last bit.
_ORDER_SENSITIVE = [4096.0, 1, 0, 0, 0, 1, 0, 0, 1]


def test_clip_by_norm_sums_in_tensorflows_order():
    x = np.array(_ORDER_SENSITIVE, np.float32)
    assert np.sum(x * x) == np.float32(2.0**24)
    norm = np.sqrt(np.float32(2.0**24 + 4))
    assert norm != np.float32(4096)
    clipped = clipping.clip_by_norm(NP, DenseGrad(x), 1.0)
    np.testing.assert_array_equal(clipped.array, x * np.float32(1) / norm, strict=True)


def test_global_norm_sums_l2_losses_in_tensorflows_order():
    # Each tensor's l2_loss (squares halved, then summed: 2^23 + 2 here), the l2_losses summed,
    # doubled, rooted.
    x = np.array(_ORDER_SENSITIVE, np.float32)
    assert NP.half_square_sum(x) == np.float32(2.0**23 + 2)
    items = [(NP, DenseGrad(x)), (NP, SparseGrad(np.ones((1, 2), np.float32), np.array([0])))]
    expected = np.sqrt((np.float32(2.0**23 + 2) + np.float32(1)) * np.float32(2))
    np.testing.assert_array_equal(clipping.global_norm(items), expected, strict=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_torch_cpu_tensors_give_the_numpy_bits(dtype):
    torch = pytest.importorskip("torch")
    from nadam.backends.torch import TORCH_BACKEND

    rng = np.random.default_rng(4)
    array = (rng.standard_normal((40, 33)) * 3).astype(dtype)
    tensor = torch.from_numpy(array)
    for view, numpy_view in ((tensor, array), (tensor[:, ::3].T, array[:, ::3].T)):
        assert TORCH_BACKEND.square_sum(view).tobytes() == NP.square_sum(numpy_view).tobytes()
        assert (TORCH_BACKEND.half_square_sum(view).tobytes()
                == NP.half_square_sum(numpy_view).tobytes())


# --- inside apply_gradients ------------------------------------------------------------------
# After one step from zero slots m = (1 - beta_1) * g, so the m slot shows the clipped gradient.


def _first_m(opt: Nadam, grads: list, shapes: list) -> list[np.ndarray]:
    variables = [Variable(np.zeros(shape), name=f"w{i}") for i, shape in enumerate(shapes)]
    opt.apply_gradients(list(zip(grads, variables, strict=True)))
    return [opt.get_slot(v, "m").numpy() / (1 - float(np.float32(0.9))) for v in variables]


def test_clipvalue_in_apply_gradients():
    (m,) = _first_m(Nadam(clipvalue=0.5), [np.array([2.0, -0.1, -7.0])], [(3,)])
    np.testing.assert_allclose(m, [0.5, -0.1, -0.5], rtol=1e-12)


def test_clipnorm_is_per_tensor():
    grads = [np.array([3.0, 4.0]), np.array([0.3, 0.4])]
    m1, m2 = _first_m(Nadam(clipnorm=1.0), grads, [(2,), (2,)])
    np.testing.assert_allclose(m1, [0.6, 0.8], rtol=1e-12)
    np.testing.assert_allclose(m2, [0.3, 0.4], rtol=1e-12)


def test_global_clipnorm_scales_all_together():
    grads = [np.array([3.0, 4.0]), np.array([12.0])]
    m1, m2 = _first_m(Nadam(global_clipnorm=2.6), grads, [(2,), (1,)])
    np.testing.assert_allclose(m1, [0.6, 0.8], rtol=1e-12)
    np.testing.assert_allclose(m2, [2.4], rtol=1e-12)


def test_order_is_value_then_norm():
    # value first: [1, 0.5] -> norm sqrt(1.25) -> [0.894.., 0.447..];
    # norm first would give [0.986.., 0.164..] and the value clip would then do nothing.
    (m,) = _first_m(Nadam(clipvalue=1.0, clipnorm=1.0), [np.array([3.0, 0.5])], [(2,)])
    np.testing.assert_allclose(m, np.array([1.0, 0.5]) / np.sqrt(1.25), rtol=1e-12)


def test_order_is_value_then_global_norm():
    grads = [np.array([3.0, 0.5]), np.array([-4.0])]
    m1, m2 = _first_m(Nadam(clipvalue=1.0, global_clipnorm=1.0), grads, [(2,), (1,)])
    norm = np.sqrt(1.0 + 0.25 + 1.0)  # after the value clip: [1, 0.5] and [-1]
    np.testing.assert_allclose(m1, np.array([1.0, 0.5]) / norm, rtol=1e-12)
    np.testing.assert_allclose(m2, [-1.0 / norm], rtol=1e-12)


def test_sparse_gradients_are_clipped_on_their_values():
    emb = Variable(np.zeros((5, 2)), name="emb")
    opt = Nadam(clipnorm=1.0)
    # Duplicates are clipped before they are summed (the norm is over the values as given):
    # norm sqrt(18), each row becomes [1/sqrt(2), 0], the sum [sqrt(2), 0]. Summing first
    # would give [6, 0] -> [1, 0].
    grad = IndexedSlices(np.array([[3.0, 0.0], [3.0, 0.0]]), np.array([1, 1]), (5, 2))
    opt.apply_gradients([(grad, emb)])
    m = opt.get_slot(emb, "m").numpy() / (1 - float(np.float32(0.9)))
    np.testing.assert_allclose(m, [[0, 0], [np.sqrt(2), 0], [0, 0], [0, 0], [0, 0]],
                               rtol=1e-12, atol=1e-15)
    assert (emb.numpy()[[0, 2, 3, 4]] == 0).all()


def test_clipping_leaves_the_callers_gradient_alone():
    g = np.array([3.0, 4.0])
    Nadam(clipnorm=1.0, clipvalue=2.0).apply_gradients([(g, Variable(np.zeros(2)))])
    np.testing.assert_array_equal(g, [3.0, 4.0])


def test_clip_settings_are_assignable():
    opt = Nadam()
    opt.clipvalue = 0.5
    (m,) = _first_m(opt, [np.array([2.0, -0.1])], [(2,)])
    np.testing.assert_allclose(m, [0.5, -0.1], rtol=1e-12)
    opt.clipvalue = None
    assert opt.clipvalue is None and "clipvalue" not in opt.get_config()
