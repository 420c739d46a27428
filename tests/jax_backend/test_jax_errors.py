"""Bad input to the Keras face on JAX arrays: the documented exception, a message naming the
offending thing, and nothing changed (variables keep their very arrays, slots, `iterations` and
the momentum cache stay as they were)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nadam import IndexedSlices, Nadam, Variable


def _snapshot(opt, variables):
    """Every variable's array object and bits, every weight's bits."""
    return ([(v.value, v.numpy()) for v in variables], [w.copy() for w in opt.get_weights()])


def _assert_unchanged(opt, variables, snapshot):
    held, weights = snapshot
    for var, (array, bits) in zip(variables, held, strict=True):
        assert var.value is array  # not even swapped for an equal array
        np.testing.assert_array_equal(var.numpy(), bits, strict=True)
    now = opt.get_weights()
    assert len(now) == len(weights)
    for a, b in zip(now, weights, strict=True):
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.fixture
def trained():
    """An optimizer after two steps over three JAX variables (one row-sparse)."""
    variables = [Variable(jnp.ones((4, 3)), name="w"), Variable(jnp.ones(3), name="b"),
                 Variable(jnp.ones((6, 2)), name="table")]
    opt = Nadam(clipnorm=1.0)
    for _ in range(2):
        opt.apply_gradients([
            (jnp.full((4, 3), 0.5), variables[0]), (jnp.full(3, -0.5), variables[1]),
            (IndexedSlices(jnp.ones((2, 2)), jnp.asarray([1, 4])), variables[2]),
        ])
    return opt, variables


def _bad_third(variables, bad):
    return [(jnp.full((4, 3), 0.5), variables[0]), (jnp.full(3, -0.5), variables[1]),
            (bad, variables[2])]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (jnp.ones((6, 3)), ValueError, r"Gradient for variable 'table' has shape \(6, 3\)"),
        (jnp.ones((6, 2), jnp.float16), ValueError, "has dtype float16, but the variable"),
        (np.ones((6, 2), np.float64), ValueError, "has dtype float64, but the variable"),
        ("not a gradient", TypeError, "must be a JAX or NumPy array, got str"),
        (np.ma.masked_array(np.ones((6, 2), np.float32), mask=True), TypeError,
         "Gradient for variable 'table' is a masked array; its mask would be ignored"),
        (IndexedSlices(jnp.ones((1, 2)), jnp.asarray([6])), IndexError,
         "index 6 is out of range for variable 'table' with 6 rows"),
        (IndexedSlices(jnp.ones((1, 2)), jnp.asarray([-1])), IndexError, "index -1"),
        (IndexedSlices(jnp.ones((2, 2)), jnp.asarray([0.0, 1.0])), TypeError,
         "indices for variable 'table' must be integers"),
        (IndexedSlices(jnp.ones((2, 3)), jnp.asarray([0, 1])), ValueError,
         r"values for variable 'table' have shape \(2, 3\), expected \(2, 2\)"),
        (IndexedSlices(jnp.ones((1, 2)), jnp.asarray([0]), dense_shape=(7, 2)), ValueError,
         r"dense_shape \(7, 2\) does not match variable 'table'"),
    ],
    ids=["shape", "dtype", "numpy-dtype", "not-an-array", "masked", "index-high", "index-negative",
         "float-indices", "values-shape", "dense-shape"],
)
def test_a_bad_gradient_among_several_changes_nothing(trained, bad, error, message):
    opt, variables = trained
    before = _snapshot(opt, variables)
    with pytest.raises(error, match=message):
        opt.apply_gradients(_bad_third(variables, bad))
    _assert_unchanged(opt, variables, before)
    assert int(opt.iterations.numpy()) == 2


def test_a_bare_jax_array_is_refused(trained):
    opt, variables = trained
    before = _snapshot(opt, variables)
    with pytest.raises(TypeError, match="is a bare JAX array, which is immutable"):
        opt.apply_gradients([(jnp.ones((4, 3)), variables[0]), (jnp.ones(2), jnp.ones(2))])
    _assert_unchanged(opt, variables, before)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (jnp.ones(2, jnp.bfloat16), "has dtype bfloat16; .*train a float32 copy"),
        (jnp.ones(2, jnp.int32), "has dtype int32; Nadam trains only float16, float32"),
        (jnp.ones(2, bool), "has dtype bool"),
    ],
)
def test_untrainable_dtypes_are_type_errors(trained, value, message):
    opt, variables = trained
    before = _snapshot(opt, variables)
    odd = Variable(value, name="odd")
    with pytest.raises(TypeError, match=f"Variable 'odd' {message}"):
        opt.apply_gradients([(jnp.ones((4, 3)), variables[0]), (value, odd)])
    _assert_unchanged(opt, variables, before)


def test_float64_needs_jax_64_bit_mode(trained):
    opt, variables = trained
    with jax.enable_x64(True):
        wide = Variable(jnp.ones(2, jnp.float64), name="wide")
    before = _snapshot(opt, variables)
    with pytest.raises(TypeError, match="Variable 'wide' is float64, but JAX's 64-bit mode"):
        opt.apply_gradients([(jnp.ones((4, 3)), variables[0]), (np.ones(2), wide)])
    _assert_unchanged(opt, variables, before)


def test_the_same_variable_twice_and_a_slot_as_a_variable(trained):
    opt, variables = trained
    before = _snapshot(opt, variables)
    with pytest.raises(ValueError, match="Variable 'b' appears twice"):
        opt.apply_gradients([(jnp.ones(3), variables[1]), (jnp.ones(3), variables[1])])
    slot = opt.get_slot(variables[1], "m")
    with pytest.raises(ValueError, match="this optimizer's own state"):
        opt.apply_gradients([(jnp.ones(3), variables[1]), (jnp.ones(3), slot)])
    _assert_unchanged(opt, variables, before)


def test_a_traced_gradient_is_a_type_error(trained):
    opt, variables = trained
    before = _snapshot(opt, variables)

    @jax.jit
    def step_inside_jit(g):
        opt.apply_gradients([(g, variables[1])])
        return g

    with pytest.raises(TypeError, match="traced value: apply_gradients runs eagerly"):
        step_inside_jit(jnp.ones(3))
    _assert_unchanged(opt, variables, before)


def test_minimize_needs_variables_and_a_callable():
    w = Variable(jnp.ones(2))
    opt = Nadam()
    with pytest.raises(TypeError, match="must be a zero-argument callable for JAX"):
        opt.minimize(jnp.sum(w.value), [w])
    assert opt.get_weights() == [] and np.array_equal(w.numpy(), np.ones(2, np.float32))
