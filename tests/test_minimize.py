"""`minimize`, `get_gradients` and `get_updates` on NumPy variables, differentiated by autograd."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest

from nadam import Nadam, Variable

M_SCALE = 1 - float(np.float32(0.9))  # after one step from zero slots, m = M_SCALE * g


def _vars():
    x = Variable(np.array([1.0, -2.0, 3.0]), name="x")
    y = Variable(np.array([[0.5, 1.0], [-1.0, 2.0]]), name="y")
    return x, y


def _loss(x, y):
    return lambda: anp.sum(x.value**2) / 2 + anp.sum(anp.sin(y.value)) + anp.sum(x.value) ** 2


def _analytic(x, y):
    xv, yv = x.numpy(), y.numpy()
    return [xv + 2 * np.sum(xv), np.cos(yv)]


def test_get_gradients_equal_the_analytic_ones():
    x, y = _vars()
    grads = Nadam().get_gradients(_loss(x, y), [x, y])
    for got, want, var in zip(grads, _analytic(x, y), (x, y), strict=True):
        assert isinstance(got, np.ndarray) and got.dtype == var.dtype
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_gradients_keep_float32():
    w = Variable(np.array([1.0, 2.0], np.float32), name="w")
    (grad,) = Nadam().get_gradients(lambda: anp.sum(w.value**3), [w])
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, [3.0, 12.0], rtol=1e-7)


def test_minimize_applies_the_analytic_gradients(spec_step):
    x, y = _vars()
    opt = Nadam(learning_rate=0.01)
    grads = _analytic(x, y)
    x0, y0 = x.numpy(), y.numpy()
    assert opt.minimize(_loss(x, y), [x, y]) == 1
    np.testing.assert_allclose(opt.get_slot(x, "m").numpy(), M_SCALE * grads[0], rtol=1e-14)
    np.testing.assert_allclose(opt.get_slot(y, "m").numpy(), M_SCALE * grads[1], rtol=1e-14)
    np.testing.assert_allclose(x.numpy(), spec_step(x0, grads[0], 0, 0, 1.0, 0, lr=0.01)[0],
                               rtol=1e-13)
    np.testing.assert_allclose(y.numpy(), spec_step(y0, grads[1], 0, 0, 1.0, 0, lr=0.01)[0],
                               rtol=1e-13)
    # The variables hold plain arrays again afterwards, not autograd boxes.
    assert type(x.value) is np.ndarray and type(y.value) is np.ndarray


def test_var_list_may_be_a_callable():
    x, y = _vars()
    opt = Nadam()
    calls = []

    def var_list():
        calls.append(1)
        return [x]

    opt.minimize(_loss(x, y), var_list)
    assert calls == [1]
    assert len(opt.weights) == 4
    x0 = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(opt.get_slot(x, "m").numpy(), M_SCALE * (x0 + 2 * x0.sum()),
                               rtol=1e-14)


def test_grad_loss_weights_a_vector_loss():
    x = Variable(np.array([1.0, 2.0, 3.0]), name="x")
    opt = Nadam()
    opt.minimize(lambda: x.value**2, [x], grad_loss=np.array([1.0, -1.0, 0.5]))
    np.testing.assert_allclose(opt.get_slot(x, "m").numpy(),
                               M_SCALE * np.array([2.0, -4.0, 3.0]), rtol=1e-14)


def test_grad_loss_shape_must_match_the_loss():
    x = Variable(np.array([1.0, 2.0, 3.0]), name="x")
    opt = Nadam()
    with pytest.raises(ValueError, match="grad_loss"):
        opt.minimize(lambda: x.value**2, [x], grad_loss=np.ones(2))
    assert opt.weights == [] and x.numpy().tolist() == [1.0, 2.0, 3.0]


def test_minimize_warns_about_a_variable_the_loss_does_not_read():
    x, y = _vars()
    y0 = y.numpy()
    opt = Nadam()
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['y'\]"):
        opt.minimize(lambda: anp.sum(x.value**2), [x, y])
    np.testing.assert_array_equal(y.numpy(), y0)
    np.testing.assert_allclose(opt.get_slot(x, "m").numpy(),
                               M_SCALE * 2 * np.array([1.0, -2.0, 3.0]), rtol=1e-14)


def test_a_loss_reading_a_variable_without_using_it_gets_zeros():
    x, y = _vars()
    (_, grad_y) = Nadam().get_gradients(lambda: anp.sum(x.value) + 0.0 * anp.sum(y.value),
                                        [x, y])
    np.testing.assert_array_equal(grad_y, np.zeros((2, 2)))


def test_minimize_rejects_raw_ndarrays():
    raw = np.array([1.0, 2.0])
    opt = Nadam()
    with pytest.raises(TypeError, match="nadam.Variable"):
        opt.minimize(lambda: anp.sum(raw**2), [raw])
    np.testing.assert_array_equal(raw, [1.0, 2.0])
    assert opt.weights == []


def test_minimize_rejects_a_non_callable_loss():
    x, _ = _vars()
    opt = Nadam()
    with pytest.raises(TypeError, match="callable"):
        opt.minimize(anp.sum(x.value), [x])
    assert opt.weights == []


def test_docstring_example():
    # Keras's Nadam docstring: lr=0.2, x=10, loss = x**2 / 2, one step gives 9.78871.
    x = Variable(10.0)
    opt = Nadam(learning_rate=0.2)
    assert opt.minimize(lambda: x.value**2 / 2, [x]) == 1
    assert x.dtype == np.float32
    assert round(float(x), 5) == 9.78871


def test_get_updates_computes_and_applies():
    x, y = _vars()
    twin_x, twin_y = _vars()
    opt, twin = Nadam(), Nadam()
    assert opt.get_updates(_loss(x, y), [x, y]) == [1]
    twin.apply_gradients(zip(_analytic(twin_x, twin_y), (twin_x, twin_y), strict=True))
    np.testing.assert_array_equal(x.numpy(), twin_x.numpy())
    np.testing.assert_array_equal(y.numpy(), twin_y.numpy())
    assert opt.get_updates(_loss(x, y), [x, y]) == [2]


def test_repeated_minimize_descends(spec_step):
    w = Variable(np.array([2.0, -3.0]), name="w")
    opt = Nadam(learning_rate=0.1)
    want, m, v, cache = w.numpy(), 0.0, 0.0, 1.0
    for it in range(10):
        grad = 2 * want  # d/dw sum(w^2)
        want, m, v, cache = spec_step(want, grad, m, v, cache, it, lr=0.1)
        opt.minimize(lambda: anp.sum(w.value**2), [w])
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    assert np.all(np.abs(w.numpy()) < [2.0, 3.0])


def test_a_failing_loss_restores_the_variables():
    x = Variable(np.array([1.0, 2.0]), name="x")
    held = x.value
    opt = Nadam()

    def loss():
        _ = x.value * 2
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.minimize(loss, [x])
    assert x.value is held and type(x.value) is np.ndarray
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])
    assert opt.weights == []
