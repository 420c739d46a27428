"""A step happens completely or not at all (SPEC 4.6), and a plain array is its memory (4.7).

Each failing case checks the documented error, that it names the variable, and that the
variables, the slots, `iterations` and `momentum_cache` are exactly as before.
"""

from __future__ import annotations

import copy
import gc
import pickle

import numpy as np
import pytest

import nadam
from nadam import Nadam, Variable


def _snapshot(opt: Nadam, variables: list) -> tuple:
    return (
        [np.array(v, copy=True) for v in variables],
        opt.get_weights(),
        [id(w) for w in opt.weights],
    )


def _assert_same(before: tuple, after: tuple) -> None:
    for got, want in zip(after[0], before[0], strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert len(after[1]) == len(before[1])
    for got, want in zip(after[1], before[1], strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert after[2] == before[2]


def _fails_cleanly(opt, variables, call, error, *words):
    before = _snapshot(opt, variables)
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))
    _assert_same(before, _snapshot(opt, variables))


def _g(shape, value=0.5, dtype=np.float32):
    return np.full(shape, value, dtype)


def _stepped(*variables):
    opt = Nadam(learning_rate=0.01)
    opt.apply_gradients([(_g(np.shape(v)), v) for v in variables])
    return opt


# --- arrays changed behind the optimizer's back ---------------------------------------------
def test_a_variable_whose_array_was_replaced_by_another_shape():
    w = Variable(np.ones(3, np.float32), name="w")
    other = Variable(np.ones(2, np.float32), name="other")
    opt = _stepped(w, other)
    w._value = np.ones(4, np.float32)  # as a JAX-style swap, or a user reaching in, would
    _fails_cleanly(
        opt, [w, other], lambda: opt.apply_gradients([(_g(2), other), (_g(4), w)]),
        ValueError, "'w'", "shape (4,)", "(3,)",
    )


def test_a_variable_whose_array_was_reshaped_in_place():
    w = Variable(np.ones(6, np.float32), name="w")
    opt = _stepped(w)
    w.value.shape = (2, 3)
    _fails_cleanly(opt, [w], lambda: opt.apply_gradients([(_g((2, 3)), w)]), ValueError, "'w'")


def test_a_plain_array_reshaped_in_place():
    a = np.ones(6, np.float32)
    b = np.ones(2, np.float32)
    opt = _stepped(a, b)
    a.shape = (3, 2)
    _fails_cleanly(
        opt, [a, b], lambda: opt.apply_gradients([(_g(2), b), (_g((3, 2)), a)]),
        ValueError, "reshaped or re-typed in place", "shape=(3, 2)",
    )


def test_a_plain_array_retyped_in_place():
    a = np.ones(4, np.float32)
    opt = _stepped(a)
    a.dtype = np.float64  # the same 16 bytes, now two float64s
    _fails_cleanly(
        opt, [a], lambda: opt.apply_gradients([(_g(2, dtype=np.float64), a)]),
        ValueError, "reshaped or re-typed in place",
    )


# --- which memory is a variable -----------------------------------------------------------------
def test_fresh_views_of_one_array_are_one_variable():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    twin = w.copy()
    opt, twin_opt = Nadam(learning_rate=0.01), Nadam(learning_rate=0.01)
    rng = np.random.default_rng(0)
    for step in range(6):
        g = rng.standard_normal((3, 4)).astype(np.float32)
        view = w[:] if step % 2 else w.reshape(3, 4)
        opt.apply_gradients([(g, view)])
        twin_opt.apply_gradients([(g, twin)])
        assert len(opt.weights) == 4  # iterations, momentum_cache, m, v: nothing accumulates
    assert w.tobytes() == twin.tobytes()
    for ours, theirs in zip(opt.get_weights(), twin_opt.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()
    assert opt.get_slot(w[:], "m") is opt.get_slot(w, "m")


def test_the_same_memory_twice_in_one_step():
    w = np.ones(4, np.float32)
    opt = Nadam()
    _fails_cleanly(
        opt, [w], lambda: opt.apply_gradients([(_g(4), w), (_g(4), w[:])]),
        ValueError, "appears twice",
    )


@pytest.mark.parametrize("stepped", [False, True])
def test_overlapping_views_in_one_step(stepped):
    buffer = np.ones(10, np.float32)
    first, second = buffer[:6], buffer[4:]
    opt = _stepped(first) if stepped else Nadam()
    _fails_cleanly(
        opt, [buffer], lambda: opt.apply_gradients([(_g(6), first), (_g(6), second)]),
        ValueError, "share memory",
    )
    if not stepped:
        assert opt.weights == []


def test_interleaved_views_are_distinct_variables():
    buffer = np.zeros(8, np.float32)
    evens, odds = buffer[::2], buffer[1::2]
    opt = Nadam(learning_rate=0.1)
    opt.apply_gradients([(_g(4, 1.0), evens), (_g(4, -1.0), odds)])
    assert (evens < 0).all() and (odds > 0).all()


def test_a_variable_that_overlaps_itself():
    base = np.ones(1, np.float32)
    repeated = np.lib.stride_tricks.as_strided(base, shape=(3,), strides=(0,), writeable=True)
    opt = Nadam()
    _fails_cleanly(
        opt, [base], lambda: opt.apply_gradients([(_g(3), repeated)]),
        ValueError, "overlaps itself",
    )
    assert opt.weights == []


def test_the_optimizers_own_state_is_not_a_variable():
    w = Variable(np.ones(3, np.float32), name="w")
    opt = _stepped(w)
    for own in (opt.get_slot(w, "m"), opt.get_slot(w, "v").value, opt.momentum_cache):
        shape = np.shape(own)
        _fails_cleanly(
            opt, [w], lambda own=own, shape=shape: opt.apply_gradients([(_g(shape), own)]),
            ValueError, "own state",
        )


@pytest.mark.parametrize("path", ["default", "reference"])
@pytest.mark.parametrize("shift", [1, -1])
def test_a_gradient_that_is_its_variable_shifted_by_one(path, shift):
    rng = np.random.default_rng(1)
    buffer = rng.standard_normal(4097).astype(np.float32)
    var, grad = (buffer[:-1], buffer[1:]) if shift == 1 else (buffer[1:], buffer[:-1])
    expected_var, expected_grad = var.copy(), grad.copy()
    twin = Nadam(learning_rate=0.01)
    twin.apply_gradients([(expected_grad, expected_var)])
    opt = Nadam(learning_rate=0.01)
    context = nadam.kernels.reference_only() if path == "reference" else _nothing()
    with context:
        opt.apply_gradients([(grad, var)])
    assert var.tobytes() == expected_var.tobytes()
    for ours, theirs in zip(opt.get_weights(), twin.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("order", ["first", "second"])
def test_a_gradient_that_is_another_variable_reads_as_before_the_step(order):
    a = np.linspace(1, 2, 5, dtype=np.float32)
    b = np.linspace(-3, 3, 5, dtype=np.float32)
    a_copy, b_copy = a.copy(), b.copy()
    pairs = [(np.ones(5, np.float32), a), (a, b)]  # b's gradient is a's memory
    twin_pairs = [(np.ones(5, np.float32), a_copy), (a_copy.copy(), b_copy)]
    if order == "second":
        pairs.reverse()
        twin_pairs.reverse()
    Nadam(learning_rate=0.1).apply_gradients(pairs)
    Nadam(learning_rate=0.1).apply_gradients(twin_pairs)
    assert a.tobytes() == a_copy.tobytes() and b.tobytes() == b_copy.tobytes()


def test_a_sparse_gradient_whose_values_are_the_variable():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    twin = w.copy()
    rows = w[1:3]  # a view of w's own rows
    Nadam(learning_rate=0.1).apply_gradients([(nadam.IndexedSlices(rows, [2, 3]), w)])
    Nadam(learning_rate=0.1).apply_gradients(
        [(nadam.IndexedSlices(twin[1:3].copy(), [2, 3]), twin)]
    )
    assert w.tobytes() == twin.tobytes()


# --- copies keep their slots ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_an_optimizer_with_its_variables_keep_their_slots(how):
    w = Variable(np.linspace(-1, 1, 5, dtype=np.float32), name="w")
    plain = np.linspace(2, 3, 4)
    opt = Nadam(learning_rate=0.01)
    for _ in range(3):
        opt.apply_gradients([(_g(5), w), (np.full(4, 0.25), plain)])
    if how == "deepcopy":
        opt2, w2, plain2 = copy.deepcopy((opt, w, plain))
    else:
        opt2, w2, plain2 = pickle.loads(pickle.dumps((opt, w, plain)))
    assert len(opt2.weights) == len(opt.weights)
    for pair_opt, pair_w, pair_plain in ((opt, w, plain), (opt2, w2, plain2)):
        pair_opt.apply_gradients([(_g(5), pair_w), (np.full(4, 0.25), pair_plain)])
    assert len(opt2.weights) == len(opt.weights) == 6
    assert w2.numpy().tobytes() == w.numpy().tobytes()
    assert plain2.tobytes() == plain.tobytes()
    for ours, theirs in zip(opt2.get_weights(), opt.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()


def test_an_unpickled_optimizer_gives_a_new_object_new_slots():
    w = Variable(np.ones(3, np.float32), name="w")
    opt = _stepped(w)
    restored = pickle.loads(pickle.dumps(opt))
    del opt, w  # the original variable's id() is free for reuse by the objects made next
    gc.collect()
    fresh = [Variable(np.ones(3, np.float32), name=f"new{i}") for i in range(50)]
    restored.apply_gradients([(_g(3), v) for v in fresh])
    # Every new variable got zero slots of its own: all moved alike, and two slots each.
    assert len(restored.weights) == 4 + 2 * len(fresh)
    first = fresh[0].numpy()
    assert all(v.numpy().tobytes() == first.tobytes() for v in fresh)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
