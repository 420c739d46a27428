"""A JAX variable's buffer is donated to its new value only when nothing else holds its array.

Donating saves a fresh buffer per step (its page faults cost about as much as the step at 16M
parameters), but a donated buffer is deleted: an array a caller kept from before the step must
stay valid and unchanged, as a value read from a TensorFlow variable does.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import nadam
from nadam.kernels import jax_variables


@pytest.fixture
def donations(monkeypatch):
    """How many variables each dense call donated, and how many it kept."""
    calls: list[tuple[int, int]] = []
    jitted = jax_variables._dense_jitted

    def spy(donated, kept, *rest):
        calls.append((len(donated), len(kept)))
        return jitted(donated, kept, *rest)

    monkeypatch.setattr(jax_variables, "_dense_jitted", spy)
    return calls


def _start(seed: int, shapes: list[tuple[int, ...]]):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    grads = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    return values, grads


def _numpy_run(values, grads, steps):
    """The same steps on NumPy variables (the fused kernel, tested against Keras elsewhere)."""
    variables = [nadam.Variable(v.copy()) for v in values]
    opt = nadam.Nadam(learning_rate=0.01)
    for _ in range(steps):
        opt.apply_gradients(list(zip(grads, variables, strict=True)))
    return [v.numpy() for v in variables], opt.get_weights()


def test_an_array_kept_from_before_the_step_stays_valid_and_unchanged(donations):
    values, grads = _start(0, [(1000,), (30, 7)])
    variables = [nadam.Variable(jnp.asarray(v)) for v in values]
    opt = nadam.Nadam(learning_rate=0.01)
    kept = variables[0].value  # the caller holds the first variable's array
    opt.apply_gradients([(jnp.asarray(g), v) for g, v in zip(grads, variables, strict=True)])

    np.testing.assert_array_equal(np.asarray(kept), values[0])  # readable, not deleted
    assert not kept.is_deleted()
    assert donations == [(1, 1)]  # the other variable's buffer was donated
    expected, state = _numpy_run(values, grads, 1)
    for variable, want in zip(variables, expected, strict=True):
        np.testing.assert_array_equal(variable.numpy(), want)
    for got, want in zip(opt.get_weights(), state, strict=True):
        np.testing.assert_array_equal(got, want)


def test_donated_and_kept_steps_give_the_same_bits_over_many_steps(donations):
    values, grads = _start(1, [(257,), (4, 5), (3,)])
    variables = [nadam.Variable(jnp.asarray(v)) for v in values]
    opt = nadam.Nadam(learning_rate=0.01)
    history = []
    for step in range(6):
        if step % 2:  # every other step the caller keeps the middle variable's array
            history.append((variables[1].value, variables[1].numpy()))
        opt.apply_gradients([(jnp.asarray(g), v) for g, v in zip(grads, variables, strict=True)])

    assert donations == [(3, 0), (2, 1)] * 3
    for kept, copy in history:
        np.testing.assert_array_equal(np.asarray(kept), copy)
    expected, state = _numpy_run(values, grads, 6)
    for variable, want in zip(variables, expected, strict=True):
        np.testing.assert_array_equal(variable.numpy(), want)
    for got, want in zip(opt.get_weights(), state, strict=True):
        np.testing.assert_array_equal(got, want)


def test_two_variables_holding_one_array_keep_it(donations):
    shared = jnp.asarray(np.linspace(-1, 1, 50, dtype=np.float32))
    a, b = nadam.Variable(shared), nadam.Variable(shared)
    assert a.value is b.value  # one array, two holders
    opt = nadam.Nadam(learning_rate=0.01)
    opt.apply_gradients([(jnp.ones(50), a)])

    assert donations == [(0, 1)]
    assert not b.value.is_deleted()
    np.testing.assert_array_equal(b.numpy(), np.linspace(-1, 1, 50, dtype=np.float32))
    assert not np.array_equal(a.numpy(), b.numpy())


def test_a_gradient_that_is_the_variables_own_array_is_not_deleted(donations):
    start = np.linspace(-1, 1, 40, dtype=np.float32)
    w = nadam.Variable(jnp.asarray(start))
    grad = w.value  # the gradient is the variable's array itself
    opt = nadam.Nadam(learning_rate=0.01)
    opt.apply_gradients([(grad, w)])

    assert donations == [(0, 1)]
    np.testing.assert_array_equal(np.asarray(grad), start)
    expected, _ = _numpy_run([start], [start], 1)
    np.testing.assert_array_equal(w.numpy(), expected[0])


@pytest.mark.parametrize("keep", [False, True])
def test_sparse_steps_donate_only_an_unheld_variable(keep):
    rng = np.random.default_rng(2)
    start = rng.standard_normal((6, 3)).astype(np.float32)
    rows = rng.standard_normal((2, 3)).astype(np.float32)
    w = nadam.Variable(jnp.asarray(start))
    opt = nadam.Nadam(learning_rate=0.01)
    kept = w.value if keep else None
    opt.apply_gradients(
        [(nadam.IndexedSlices(jnp.asarray(rows), jnp.asarray([4, 1]), (6, 3)), w)]
    )

    if keep:
        assert not kept.is_deleted()
        np.testing.assert_array_equal(np.asarray(kept), start)
    reference = nadam.Variable(start.copy())
    nadam.Nadam(learning_rate=0.01).apply_gradients(
        [(nadam.IndexedSlices(rows, np.asarray([4, 1]), (6, 3)), reference)]
    )
    np.testing.assert_array_equal(w.numpy(), reference.numpy())
