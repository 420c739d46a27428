"""`nadam.Variable` and `nadam.IndexedSlices` (SPEC section 3)."""

from __future__ import annotations

import numpy as np
import pytest

from nadam import IndexedSlices, Variable

# --- construction --------------------------------------------------------------------------


@pytest.mark.parametrize("initial", [1.5, [1.0, 2.0], [[0.5], [0.25]]])
def test_python_floats_become_float32(initial):
    v = Variable(initial)
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v.numpy(), np.asarray(initial, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_arrays_keep_their_dtype(dtype):
    v = Variable(np.arange(4).astype(dtype))
    assert v.dtype == dtype
    assert v.shape == (4,)


def test_numpy_scalar_keeps_its_dtype_and_shape():
    v = Variable(np.float64(2.5))
    assert v.dtype == np.float64
    assert v.shape == () and v.ndim == 0 and v.size == 1
    assert float(v) == 2.5


def test_explicit_dtype_converts():
    v = Variable([1, 2, 3], dtype=np.float64)
    assert v.dtype == np.float64
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0, 3.0])


def test_python_ints_stay_integers():
    assert Variable([1, 2]).dtype.kind == "i"


def test_construction_copies_the_input_array():
    source = np.array([1.0, 2.0, 3.0], np.float32)
    v = Variable(source)
    source[0] = 100.0
    assert v.numpy()[0] == 1.0
    v.assign_add(np.ones(3, np.float32))
    np.testing.assert_array_equal(source, [100.0, 2.0, 3.0])


def test_construction_from_callable_and_from_variable():
    a = Variable(lambda: np.zeros((2, 2), np.float64), name="a")
    assert a.shape == (2, 2) and a.dtype == np.float64
    b = Variable(a)
    b.assign(np.ones((2, 2)))
    np.testing.assert_array_equal(a.numpy(), np.zeros((2, 2)))
    np.testing.assert_array_equal(b.numpy(), np.ones((2, 2)))


def test_name_and_trainable():
    assert Variable(1.0).name == "Variable"
    v = Variable(1.0, name="kernel", trainable=False)
    assert v.name == "kernel"
    assert v.trainable is False
    assert "kernel" in repr(v) and "float32" in repr(v)


@pytest.mark.parametrize("bad", ["", 3, b"w", ["w"]])
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError, match="name"):
        Variable(1.0, name=bad)


# --- reading -------------------------------------------------------------------------------


def test_value_is_live_not_a_copy():
    v = Variable(np.array([1.0, 2.0], np.float32))
    held = v.value
    assert v.value is held
    v.assign([5.0, 6.0])
    np.testing.assert_array_equal(held, [5.0, 6.0])
    v.assign_add([1.0, 1.0])
    v.assign_sub([0.5, 0.5])
    np.testing.assert_array_equal(held, [5.5, 6.5])
    assert v.read_value() is held


def test_numpy_returns_a_copy():
    v = Variable(np.array([1.0, 2.0]))
    copy = v.numpy()
    copy[0] = -1.0
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert not np.shares_memory(copy, v.value)


# --- writing -------------------------------------------------------------------------------


def test_assign_family_returns_self_and_casts():
    v = Variable(np.zeros(3, np.float32))
    assert v.assign(np.array([1.0, 2.0, 3.0], np.float64)) is v
    assert v.dtype == np.float32
    assert v.assign_add(np.array([0.5, 0.5, 0.5])) is v
    assert v.assign_sub(Variable(np.ones(3, np.float32))) is v
    np.testing.assert_array_equal(v.numpy(), np.array([0.5, 1.5, 2.5], np.float32))
    v.assign(Variable(np.full(3, 7.0)))
    np.testing.assert_array_equal(v.numpy(), [7.0, 7.0, 7.0])


def test_assign_add_scalar_broadcasts():
    v = Variable(np.zeros(3))
    v.assign_add(2.0)
    np.testing.assert_array_equal(v.numpy(), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("method", ["assign", "assign_add", "assign_sub"])
@pytest.mark.parametrize("shape", [(2,), (2, 3), (3, 1)])
def test_shape_mismatch_names_the_variable(method, shape):
    v = Variable(np.ones(3), name="bias")
    with pytest.raises(ValueError, match="'bias'"):
        getattr(v, method)(np.ones(shape))
    np.testing.assert_array_equal(v.numpy(), np.ones(3))


# --- operators -----------------------------------------------------------------------------


def test_arithmetic_operators_act_on_the_value():
    a = Variable(np.array([1.0, 2.0, 4.0]))
    b = Variable(np.array([2.0, 2.0, 2.0]))
    arr = np.array([1.0, 1.0, 1.0])
    np.testing.assert_array_equal(a + 1, [2.0, 3.0, 5.0])
    np.testing.assert_array_equal(1 + a, [2.0, 3.0, 5.0])
    np.testing.assert_array_equal(a - b, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(10 - a, [9.0, 8.0, 6.0])
    np.testing.assert_array_equal(a * b, [2.0, 4.0, 8.0])
    np.testing.assert_array_equal(arr * a, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(a / 2, [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(4 / a, [4.0, 2.0, 1.0])
    np.testing.assert_array_equal(a // 3, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(7 // a, [7.0, 3.0, 1.0])
    np.testing.assert_array_equal(a % 3, [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(a**2, [1.0, 4.0, 16.0])
    np.testing.assert_array_equal(2**a, [2.0, 4.0, 16.0])
    assert a @ b == 14.0
    assert arr @ a == 7.0
    np.testing.assert_array_equal(-a, [-1.0, -2.0, -4.0])
    np.testing.assert_array_equal(+a, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(abs(Variable(np.array([-1.0, 2.0]))), [1.0, 2.0])
    # ndarray <op> Variable must give an ndarray, not an object array of Variables.
    result = arr + a
    assert isinstance(result, np.ndarray) and result.dtype == np.float64


def test_comparisons_are_elementwise():
    a = Variable(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(a == 2.0, [False, True, False])
    np.testing.assert_array_equal(a != 2.0, [True, False, True])
    np.testing.assert_array_equal(a < 2.0, [True, False, False])
    np.testing.assert_array_equal(a <= 2.0, [True, True, False])
    np.testing.assert_array_equal(a > 2.0, [False, False, True])
    np.testing.assert_array_equal(a >= 2.0, [False, True, True])
    np.testing.assert_array_equal(a == Variable(np.array([1.0, 0.0, 3.0])), [True, False, True])


def test_array_protocol_and_conversions():
    v = Variable(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    as_array = np.asarray(v)
    assert as_array.dtype == np.float32
    np.testing.assert_array_equal(as_array, [[1.0, 2.0], [3.0, 4.0]])
    converted = np.asarray(v, dtype=np.float64)
    assert converted.dtype == np.float64
    copied = np.array(v)
    copied[0, 0] = 99.0
    assert v.numpy()[0, 0] == 1.0
    assert np.sum(v) == 10.0
    np.testing.assert_allclose(np.sqrt(v), np.sqrt([[1.0, 2.0], [3.0, 4.0]]))
    assert len(v) == 2
    np.testing.assert_array_equal(v[1], [3.0, 4.0])
    scalar = Variable(np.int64(3))
    assert int(scalar) == 3 and float(scalar) == 3.0 and bool(scalar)
    assert [10, 20, 30, 40][scalar] == 40


def test_hash_is_identity():
    a = Variable(np.array([1.0, 2.0]))
    b = Variable(np.array([1.0, 2.0]))
    assert hash(a) == id(a)
    table = {a: "a", b: "b"}
    assert table[a] == "a" and table[b] == "b"
    assert len({a, b, a}) == 2


# --- IndexedSlices -------------------------------------------------------------------------


def test_indexed_slices_holds_its_parts():
    values = np.ones((2, 3), np.float32)
    indices = np.array([0, 4])
    g = IndexedSlices(values, indices, dense_shape=np.array([5, 3]))
    assert g.values is values
    assert g.indices is indices
    assert g.dense_shape == (5, 3)
    assert all(type(d) is int for d in g.dense_shape)
    assert "dense_shape=(5, 3)" in repr(g)


def test_indexed_slices_dense_shape_defaults_to_none():
    g = IndexedSlices(np.zeros((1, 2)), [3])
    assert g.dense_shape is None
    assert "indices=1" in repr(g)
