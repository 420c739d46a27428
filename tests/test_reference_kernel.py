"""`kernels.reference` and `nadam_scalars` against an independent float64 reading of SPEC 2."""

from __future__ import annotations

import numpy as np
import pytest

from nadam import IndexedSlices, Nadam, Variable, kernels
from nadam.backends import NUMPY_BACKEND
from nadam.backends.base import SparseGrad
from nadam.kernels import reference
from nadam.nadam import nadam_scalars

B1, B2, BASE = (float(np.float32(c)) for c in (0.9, 0.999, 0.96))  # Keras rounds these first
LR = float(np.float32(0.01))
EPS = 1e-7


def _mu(t: int, schedule_decay: float = 0.004) -> float:
    return B1 * (1.0 - 0.5 * BASE ** (schedule_decay * t))


def _spec_sparse(x, values, indices, m, v, cache, it):
    """SPEC section 2 sparse update with plain Python loops over rows, in float64."""
    x, m, v = x.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    summed: dict[int, np.ndarray] = {}  # dicts keep first-occurrence order
    for index, row in zip(indices.tolist(), values.astype(np.float64), strict=True):
        summed[index] = summed.get(index, 0.0) + row
    t = it + 1
    mu_t, mu_t1 = _mu(t), _mu(t + 1)
    prod = cache * mu_t
    prod1 = prod * mu_t1
    m *= B1
    v *= B2
    for index, g in summed.items():
        m[index] += (1 - B1) * g
        v[index] += (1 - B2) * g * g
        m_bar = (1 - mu_t) * g / (1 - prod) + mu_t1 * m[index] / (1 - prod1)
        x[index] -= LR * m_bar / (np.sqrt(v[index] / (1 - B2**t)) + EPS)
    return x, m, v, prod


# --- nadam_scalars ---------------------------------------------------------------------------


def test_nadam_scalars_first_step_by_hand():
    s, prod = nadam_scalars(np.float64, iterations=0, momentum_cache=1.0, lr=0.01)
    mu1, mu2 = _mu(1), _mu(2)
    assert prod == pytest.approx(mu1, rel=1e-15)
    assert s.lr == LR and s.beta_1 == B1 and s.beta_2 == B2 and s.epsilon == EPS
    assert s.one_minus_beta_1 == 1 - B1 and s.one_minus_beta_2 == 1 - B2
    assert s.one_minus_mu_t == pytest.approx(1 - mu1, rel=1e-15)
    assert s.mu_t1 == pytest.approx(mu2, rel=1e-15)
    assert s.one_minus_prod == pytest.approx(1 - mu1, rel=1e-15)
    assert s.one_minus_prod1 == pytest.approx(1 - mu1 * mu2, rel=1e-15)
    assert s.v_correction == pytest.approx(1 - B2, rel=1e-15)
    assert all(type(field) is np.float64 for field in s)


def test_nadam_scalars_later_step_and_dtype():
    cache = _mu(1) * _mu(2) * _mu(3)
    s, prod = nadam_scalars(np.float32, iterations=3, momentum_cache=cache, beta_2=0.99,
                            schedule_decay=0.5)
    assert all(type(field) is np.float32 for field in s) and type(prod) is np.float32
    mu4, mu5 = _mu(4, 0.5), _mu(5, 0.5)
    b2 = float(np.float32(0.99))
    np.testing.assert_allclose(prod, cache * mu4, rtol=1e-6)
    np.testing.assert_allclose(s.one_minus_prod1, 1 - cache * mu4 * mu5, rtol=1e-6)
    np.testing.assert_allclose(s.v_correction, 1 - b2**4, rtol=1e-6)
    np.testing.assert_allclose(s.mu_t1, mu5, rtol=1e-6)


# --- dense -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-5)])
def test_dense_step_multi_step(spec_step, dtype, rtol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(dtype)
    m, v = np.zeros_like(x), np.zeros_like(x)
    want_x, want_m, want_v, want_cache = x.astype(np.float64), 0.0 * x, 0.0 * x, 1.0
    cache = dtype(1.0)
    for it in range(20):
        g = rng.standard_normal(x.shape).astype(dtype)
        s, cache = nadam_scalars(dtype, it, cache, lr=0.01)
        x, m, v = reference.dense_step(x, g, m, v, s, np.sqrt)
        want_x, want_m, want_v, want_cache = spec_step(want_x, g, want_m, want_v, want_cache,
                                                       it, lr=0.01)
        assert x.dtype == m.dtype == v.dtype == dtype
    np.testing.assert_allclose(x, want_x, rtol=rtol)
    np.testing.assert_allclose(m, want_m, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(v, want_v, rtol=rtol)
    np.testing.assert_allclose(cache, want_cache, rtol=rtol)


def test_dense_step_leaves_its_inputs_alone():
    x, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    m, v = np.array([0.1, 0.2]), np.array([0.01, 0.02])
    copies = [a.copy() for a in (x, g, m, v)]
    s, _ = nadam_scalars(np.float64, 4, 0.1)
    reference.dense_step(x, g, m, v, s, np.sqrt)
    for original, copy in zip((x, g, m, v), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_spec_reference_run_is_bit_exact_through_the_reference_kernel():
    # SPEC section 2, printed by the Keras 2 oracle.
    x = Variable(np.array([1.0, -2.0, 3.0], np.float32), name="x")
    g = np.array([0.1, -0.5, 2.0], np.float32)
    opt = Nadam()
    with kernels.reference_only():
        assert kernels.select(NUMPY_BACKEND, "cpu", np.dtype(np.float32)).name == "reference"
        for _ in range(5):
            opt.apply_gradients([(g, x)])
    np.testing.assert_array_equal(x.numpy(), np.float32([0.9959506, -1.9959507, 2.9959507]))
    np.testing.assert_array_equal(opt.momentum_cache.numpy(), np.float32(0.018498035))


# --- sparse ------------------------------------------------------------------------------------


def test_sparse_step_by_parts():
    rng = np.random.default_rng(2)
    x, m, v = rng.standard_normal((3, 6, 2))
    v = np.abs(v)
    indices = np.array([4, 1])
    g_rows = rng.standard_normal((2, 2))
    s, _ = nadam_scalars(np.float64, 2, _mu(1) * _mu(2), lr=0.01)
    new_rows, m_decayed, m_rows, v_decayed, v_rows = reference.sparse_step(
        x[indices], g_rows, m, v, indices, s, np.sqrt)
    np.testing.assert_allclose(m_decayed, B1 * m, rtol=1e-15)
    np.testing.assert_allclose(v_decayed, B2 * v, rtol=1e-15)
    np.testing.assert_allclose(m_rows, B1 * m[indices] + (1 - B1) * g_rows, rtol=1e-14)
    np.testing.assert_allclose(v_rows, B2 * v[indices] + (1 - B2) * g_rows**2, rtol=1e-14)
    want_x, _, _, _ = _spec_sparse(x, g_rows, indices, m, v, _mu(1) * _mu(2), 2)
    np.testing.assert_allclose(new_rows, want_x[indices], rtol=1e-14)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-5)])
def test_sparse_multi_step_untouched_rows_hold_while_slots_decay(dtype, rtol):
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((6, 3))
    emb = Variable(x0.astype(dtype), name="emb")
    opt = Nadam(learning_rate=0.01)
    want_x, want_m, want_v, cache = x0.astype(dtype).astype(np.float64), 0 * x0, 0 * x0, 1.0
    with kernels.reference_only():
        for it in range(8):
            indices = rng.choice([0, 1, 2, 4], size=3)  # rows 3 and 5 are never touched
            values = rng.standard_normal((3, 3)).astype(dtype)
            m_before = opt.get_slot(emb, "m").numpy() if it else np.zeros((6, 3), dtype)
            opt.apply_gradients([(IndexedSlices(values, indices, (6, 3)), emb)])
            want_x, want_m, want_v, cache = _spec_sparse(want_x, values, indices, want_m,
                                                         want_v, cache, it)
            m_after = opt.get_slot(emb, "m").numpy()
            untouched = np.setdiff1d(np.arange(6), indices)
            np.testing.assert_array_equal(m_after[untouched], m_before[untouched] * dtype(B1))
    np.testing.assert_array_equal(emb.numpy()[[3, 5]], x0.astype(dtype)[[3, 5]])
    np.testing.assert_allclose(emb.numpy(), want_x, rtol=rtol)
    np.testing.assert_allclose(opt.get_slot(emb, "m").numpy(), want_m, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(opt.get_slot(emb, "v").numpy(), want_v, rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(opt.momentum_cache.numpy(), cache, rtol=rtol)


def test_duplicates_are_summed_first():
    values = np.array([[1.0, 2.0], [0.5, 0.5], [-3.0, 1.0]])
    dupes, summed = Variable(np.ones((4, 2)), name="a"), Variable(np.ones((4, 2)), name="b")
    opt_dupes, opt_summed = Nadam(), Nadam()
    with kernels.reference_only():
        opt_dupes.apply_gradients([(IndexedSlices(values, np.array([3, 1, 3])), dupes)])
        opt_summed.apply_gradients([(IndexedSlices(np.array([[-2.0, 3.0], [0.5, 0.5]]),
                                                   np.array([3, 1])), summed)])
    np.testing.assert_array_equal(dupes.numpy(), summed.numpy())
    for got, want in zip(opt_dupes.get_weights(), opt_summed.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_dedupe_keeps_first_occurrence_order():
    grad = SparseGrad(np.array([[1.0], [10.0], [100.0], [1000.0]]), np.array([5, 2, 5, 0]))
    unique = NUMPY_BACKEND.dedupe(grad)
    np.testing.assert_array_equal(unique.indices, [5, 2, 0])
    np.testing.assert_array_equal(unique.values, [[101.0], [10.0], [1000.0]])
    assert NUMPY_BACKEND.dedupe(SparseGrad(grad.values[:2], np.array([5, 2]))).indices.tolist() \
        == [5, 2]


def test_sparse_over_every_row_matches_dense(spec_step):
    x0 = np.array([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.25]])
    dense, sparse = Variable(x0.copy(), name="d"), Variable(x0.copy(), name="s")
    opt_d, opt_s = Nadam(learning_rate=0.01), Nadam(learning_rate=0.01)
    g = np.array([[0.2, -0.4], [1.0, 0.1], [-0.3, 0.3]])
    with kernels.reference_only():
        for _ in range(3):
            opt_d.apply_gradients([(g, dense)])
            opt_s.apply_gradients([(IndexedSlices(g[[2, 0, 1]], np.array([2, 0, 1])), sparse)])
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-14)
    want = x0
    m = v = 0 * x0
    cache = 1.0
    for it in range(3):
        want, m, v, cache = spec_step(want, g, m, v, cache, it, lr=0.01)
    np.testing.assert_allclose(dense.numpy(), want, rtol=1e-13)


def test_empty_sparse_gradient_only_decays_the_slots():
    emb = Variable(np.ones((3, 2)), name="emb")
    opt = Nadam()
    opt.apply_gradients([(np.full((3, 2), 0.5), emb)])
    x_before = emb.numpy()
    m_before, v_before = opt.get_slot(emb, "m").numpy(), opt.get_slot(emb, "v").numpy()
    with kernels.reference_only():
        opt.apply_gradients([(IndexedSlices(np.zeros((0, 2)), np.zeros(0, np.int64)), emb)])
    np.testing.assert_array_equal(emb.numpy(), x_before)
    np.testing.assert_array_equal(opt.get_slot(emb, "m").numpy(), m_before * B1)
    np.testing.assert_array_equal(opt.get_slot(emb, "v").numpy(), v_before * B2)
