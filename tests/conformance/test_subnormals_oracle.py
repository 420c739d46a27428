"""TensorFlow's flush-to-zero against the live Keras 2 oracle: whole trajectories, bit for bit.

TensorFlow's CPU kernels run with flush-to-zero and denormals-are-zero (SPEC section 2, "Traps";
`nadam.kernels.reference` says where each Nadam op flushes). Four situations where that changes
Keras's results (issue #9), each in float32 and float64 (float16 keeps its subnormals, and so
must we):

- a gradient once, then zeros: m decays below the smallest normal number and Keras makes it 0;
- subnormal gradients (and gradients whose products or squares fall below it) act as zeros;
- subnormal values of a variable become 0 at its first update (only the updated rows, sparse);
- rows of a sparse variable left alone for many steps: their m decays into 0, not subnormals.

After every step the variables, m, v and the momentum cache must have Keras's bits (a zero's sign
included), on every way in: NumPy variables through `nadam.Nadam`, CPU torch tensors through
`nadam.Nadam` and through `nadam.torch.Nadam`, each on the default kernel path (the fused one
for float32 and float64) and inside `kernels.reference_only()`. The oracle's trajectory is
computed once per situation and dtype and shared by those six runs. One more test holds the
reference kernel's model of each op (`mul`, `div`, `add`, `sub`, `sqrt`) to TensorFlow's own ops
on numbers at the edge, including the products and quotients that IEEE rounding takes up to
the smallest normal number and x86 flushes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch

import nadam
from nadam import IndexedSlices, Nadam, Variable
from nadam.kernels import reference
from nadam.torch import Nadam as TorchNadam

from .oracle import KerasNadam, on_path, tf

DTYPES = (np.float32, np.float64, np.float16)
PATHS = ("default", "reference")
FACES = ("numpy", "torch-keras-face", "torch-optim")


def _subnormal(dtype: Any, fraction: float = 0.1) -> Any:
    return np.asarray(np.finfo(dtype).tiny * fraction, dtype=dtype)[()]


# --- the situations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Situation:
    """Initial variables and, per step, one gradient per variable: an array, a sparse
    (values, indices) pair, or None (no gradient for that variable this step)."""

    initial: list[np.ndarray]
    steps: list[list[Any]]


UNDERFLOW_STEP = 25


def _gradient_then_zeros(dtype: Any, zeros: int) -> Situation:
    # m = 0.1 g after the first step, then 0.9 m every step. g is chosen so that m reaches the
    # smallest normal number after about UNDERFLOW_STEP steps (float32/float64: Keras makes it
    # 0 then; NumPy would keep subnormals for ~150 steps more); the last entry moves x normally.
    tiny = float(np.finfo(dtype).tiny)
    start = tiny * 10 / 0.9**UNDERFLOW_STEP
    g = np.array([start, -3 * start, 7 * start, 1.0], dtype)
    x = np.array([0.5, -1.0, 2.0, 0.25], dtype)
    return Situation([x], [[g]] + [[np.zeros_like(g)] for _ in range(zeros)])


def _subnormal_gradients(dtype: Any, sparse: bool) -> Situation:
    tiny = float(np.finfo(dtype).tiny)
    row = np.array([
        _subnormal(dtype), -_subnormal(dtype), np.finfo(dtype).smallest_subnormal,
        tiny, -3 * tiny,  # normal, but (1 - beta_1) g and (1 - beta_2) g * g underflow
        np.sqrt(tiny) / 2, 0.5,  # g * g underflows; an ordinary gradient
    ], dtype)
    x = np.array([0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 3.0], dtype)
    steps = []
    for k in range(10):
        g = row * dtype(-1 if k % 2 else 1)
        if k in (3, 7):  # a step of ordinary gradients between subnormal ones
            g = np.full_like(row, 0.25 if k == 3 else -0.5)
        steps.append(g)
    if not sparse:
        return Situation([x], [[g] for g in steps])
    table = np.stack([x, -x, 2 * x])  # three rows of seven
    indices = np.array([2, 0])
    return Situation([table], [[(np.stack([g, g[::-1]]), indices)] for g in steps])


def _subnormal_variables(dtype: Any, sparse: bool) -> Situation:
    values = np.array([
        _subnormal(dtype), -_subnormal(dtype), np.finfo(dtype).smallest_subnormal, 1.0,
        -_subnormal(dtype, 0.5),
    ], dtype)
    if not sparse:
        zero, ordinary = np.zeros_like(values), np.full_like(values, 0.125)
        return Situation([values], [[zero], [ordinary], [zero]])
    table = np.stack([values, values[::-1], values])
    rows = np.zeros((1, values.size), dtype)  # a zero gradient for row 1 only
    return Situation([table], [[(rows, np.array([1]))], [(rows + 0.125, np.array([0]))]])


def _rows_left_alone(dtype: Any, steps: int) -> Situation:
    # Rows 0 to 2 get a gradient at the first step only (as the first situation), row 3 at
    # every step; row 1 once more at step 45, after its m underflowed.
    tiny = float(np.finfo(dtype).tiny)
    start = tiny * 10 / 0.9**UNDERFLOW_STEP
    table = np.array([[0.5, -1.0], [2.0, 0.25], [-0.5, 1.0], [1.0, 1.0]], dtype)
    first = np.array([[start, -start], [3 * start, 1.0], [-2 * start, 0.5]], dtype)
    plan: list[list[Any]] = [[(first, np.array([0, 1, 2]))]]
    for k in range(1, steps):
        rows = np.array([[0.25 * (-1) ** k, 0.5]], dtype)
        indices = np.array([3])
        if k == 45:
            rows, indices = np.concatenate([rows, rows]), np.array([3, 1])
        plan.append([(rows, indices)])
    return Situation([table], plan)


def _two_variables_one_left_alone(dtype: Any) -> Situation:
    # A dense variable whose gradient is None for a while: Keras does not touch it at all.
    first = _gradient_then_zeros(dtype, 0)
    other = np.array([1.0, _subnormal(dtype)], dtype)
    steps = [[first.steps[0][0], np.array([1.0, 0.5], dtype)]]
    steps += [[np.zeros(4, dtype), None] for _ in range(UNDERFLOW_STEP + 15)]
    return Situation([first.initial[0], other], steps)


SITUATIONS: dict[str, Callable[[Any], Situation]] = {
    "gradient then zeros": lambda dtype: _gradient_then_zeros(dtype, UNDERFLOW_STEP + 40),
    "subnormal gradients, dense": lambda dtype: _subnormal_gradients(dtype, sparse=False),
    "subnormal gradients, sparse": lambda dtype: _subnormal_gradients(dtype, sparse=True),
    "subnormal variables, dense": lambda dtype: _subnormal_variables(dtype, sparse=False),
    "subnormal variables, sparse": lambda dtype: _subnormal_variables(dtype, sparse=True),
    "sparse rows left alone": lambda dtype: _rows_left_alone(dtype, UNDERFLOW_STEP + 40),
    "a variable without gradients": _two_variables_one_left_alone,
}


# --- running both sides -----------------------------------------------------------------------
State = list[np.ndarray]  # per variable x, m, v (those that exist), then the momentum cache


@functools.cache
def _keras_trajectory(situation: str, dtype: Any) -> tuple[list[State], list[list[str]]]:
    plan = SITUATIONS[situation](dtype)
    variables = [tf.Variable(np.array(a)) for a in plan.initial]
    keras = KerasNadam()
    states, labels = [], []
    for grads in plan.steps:
        pairs = []
        for grad, var in zip(grads, variables, strict=True):
            if isinstance(grad, tuple):
                values, indices = grad
                grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                        tf.constant(var.shape, dtype=tf.int64))
            elif grad is not None:
                grad = tf.constant(grad)
            if grad is not None:
                pairs.append((grad, var))
        keras.apply_gradients(pairs)
        state, names = [], []
        for number, var in enumerate(variables):
            state.append(var.numpy())
            names.append(f"x{number}")
            for slot in ("m", "v"):
                try:
                    state.append(keras.get_slot(var, slot).numpy())
                except KeyError:
                    continue
                names.append(f"x{number}/{slot}")
        state.append(np.asarray(keras.get_weights()[1]))
        names.append("momentum_cache")
        states.append(state)
        labels.append(names)
    return states, labels


class _Ours:
    """One of our faces over copies of the situation's variables."""

    def __init__(self, face: str, initial: list[np.ndarray]) -> None:
        self.face = face
        if face == "numpy":
            self.variables: list[Any] = [Variable(np.array(a)) for a in initial]
            self.opt: Any = Nadam()
        else:
            self.variables = [torch.nn.Parameter(torch.from_numpy(np.array(a))) for a in initial]
            self.opt = Nadam() if face == "torch-keras-face" else TorchNadam(self.variables)

    def _gradient(self, grad: Any, var: Any) -> Any:
        if grad is None:
            return None
        if isinstance(grad, tuple):
            values, indices = grad
            if self.face == "numpy":
                return IndexedSlices(np.array(values), np.array(indices), var.shape)
            return torch.sparse_coo_tensor(torch.from_numpy(np.array(indices))[None],
                                           torch.from_numpy(np.array(values)), var.shape)
        return np.array(grad) if self.face == "numpy" else torch.from_numpy(np.array(grad))

    def step(self, grads: list[Any]) -> None:
        pairs = [(self._gradient(g, v), v) for g, v in zip(grads, self.variables, strict=True)]
        pairs = [(g, v) for g, v in pairs if g is not None]
        if self.face == "torch-optim":
            for param in self.variables:
                param.grad = None
            for grad, param in pairs:
                param.grad = grad
            self.opt.step()
        else:
            self.opt.apply_gradients(pairs)

    def state(self) -> State:
        state = []
        for var in self.variables:
            state.append(_numpy(var))
            for slot in ("m", "v"):
                if self.face == "torch-optim":
                    value = self.opt.state[var].get(slot)
                else:
                    try:
                        value = self.opt.get_slot(var, slot)
                    except KeyError:
                        value = None
                if value is not None:
                    state.append(_numpy(value))
        state.append(np.asarray(self.opt.get_weights()[1]))
        return state


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    if isinstance(value, Variable):
        return value.numpy()
    return np.array(value, copy=True)


def _bits(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.reshape(-1).view(f"u{array.dtype.itemsize}")


def _assert_same_bits(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
    same = _bits(ours) == _bits(theirs)
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.size} elements differ, "
                             f"first at {bad}: ours {ours.reshape(-1)[bad]!r}, "
                             f"Keras {theirs.reshape(-1)[bad]!r}")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("situation", SITUATIONS)
def test_trajectories_flush_as_keras(situation, dtype, path, face):
    expected, labels = _keras_trajectory(situation, dtype)
    plan = SITUATIONS[situation](dtype)
    if situation == "gradient then zeros":
        _check_the_situation_reaches_subnormals(expected, labels, dtype)
    ours = _Ours(face, plan.initial)
    for number, grads in enumerate(plan.steps, start=1):
        with on_path(path):
            ours.step(grads)
        state = ours.state()
        assert len(state) == len(expected[number - 1]), f"step {number}: {labels[number - 1]}"
        for label, mine, theirs in zip(labels[number - 1], state, expected[number - 1],
                                       strict=True):
            _assert_same_bits(mine, theirs, f"step {number}, {label}")


def _check_the_situation_reaches_subnormals(states: list[State], labels: list[list[str]],
                                            dtype: Any) -> None:
    # The comparison is not of zeros only: without flushing, m would still be subnormal (not
    # 0) at the end; float16 keeps its subnormal m.
    m = states[-1][labels[-1].index("x0/m")]
    tiny = np.finfo(dtype).tiny
    if dtype == np.float16:
        assert np.any((m != 0) & (np.abs(m) < tiny))
        return
    assert m[3] != 0 and np.all(m[:3] == 0)
    start = _gradient_then_zeros(dtype, 0).steps[0][0][:3]
    last = np.abs(start.astype(np.float64) * 0.1 * 0.9 ** (len(states) - 1))
    assert np.all((last > np.finfo(dtype).smallest_subnormal) & (last < tiny))


def test_the_faithful_case_of_issue_9():
    # float32, one normal gradient and then 1000 zero gradients: NumPy arithmetic makes m
    # subnormal from step 736 on, Keras 0. Checked on the fused kernel, every 50 steps and at
    # the end (the situations above check every step on every path).
    g = np.array([1.0, -0.5, 2.0], np.float32)
    x0 = np.array([0.5, 1.0, -1.0], np.float32)
    ours, theirs = Variable(x0.copy()), tf.Variable(x0.copy())
    opt, keras = Nadam(), KerasNadam()
    for step in range(1, 1002):
        grad = g if step == 1 else np.zeros_like(g)
        opt.apply_gradients([(grad, ours)])
        keras.apply_gradients([(tf.constant(grad), theirs)])
        if step % 50 == 0 or step in (736, 737, 1001):
            m_ours, m_keras = opt.get_slot(ours, "m").numpy(), keras.get_slot(theirs, "m").numpy()
            _assert_same_bits(m_ours, m_keras, f"m at step {step}")
            _assert_same_bits(ours.numpy(), theirs.numpy(), f"x at step {step}")
    assert np.all(keras.get_slot(theirs, "m").numpy() == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_duplicate_subnormal_rows_sum_as_keras(dtype):
    # A normal and a subnormal value for the same row: IEEE addition sums them, TensorFlow's
    # segment sum reads the subnormal one as 0, and so does the backends' `dedupe` (issue #9;
    # tests/conformance/test_flush_outside_kernels_oracle.py has more). With x = 0, v = 0 and
    # lr = 1 the difference reaches x: x = -lr * (1 - mu_1) * g / (1 - mu_1) / epsilon,
    # about -2e7 * g.
    tiny = np.finfo(dtype).tiny
    x0 = np.zeros((2, 2), dtype)
    values = np.array([[2 * tiny, -2 * tiny], [0.75 * tiny, -0.75 * tiny]], dtype)
    indices = np.array([1, 1])
    ours, theirs = Variable(x0.copy()), tf.Variable(x0.copy())
    opt, keras = Nadam(learning_rate=1.0), KerasNadam(learning_rate=1.0)
    opt.apply_gradients([(IndexedSlices(values, indices, x0.shape), ours)])
    keras.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                             tf.constant(x0.shape, dtype=tf.int64)), theirs)])
    assert np.all(theirs.numpy()[1] != 0)
    _assert_same_bits(ours.numpy(), theirs.numpy(), "x")


# --- each op of the model against TensorFlow's --------------------------------------------------
def _edge_operands(dtype: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of flushed numbers (0 or normal) whose products, quotients, sums and
    differences land at and around the smallest normal number, many of them products and
    quotients that IEEE rounding takes up to it (the x86 rounding window), plus ordinary,
    huge, infinite, NaN and zero ones."""
    tiny = np.finfo(dtype).tiny
    n = 4000
    a = rng.uniform(0.5, 1.0, n).astype(dtype)
    near = (tiny / a.astype(np.float64)).astype(dtype) if dtype == np.float32 else tiny / a
    b = np.where(rng.random(n) < 0.5, np.nextafter(near, dtype(1)), near).astype(dtype)
    b = np.maximum(b, tiny)  # products a * b near tiny
    # quotients near tiny: an all-ones significand over a power of two (the only quotients in
    # the window), and (c * tiny) / c
    c = (2.0 ** rng.integers(0, 8, n)).astype(dtype)
    u = (np.nextafter(dtype(2), dtype(0)) * tiny * c / 2).astype(dtype)
    d = rng.uniform(1, 4, n).astype(dtype)
    w = (tiny * d.astype(np.float64)).astype(dtype) if dtype == np.float32 else tiny * d
    specials = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, tiny, -tiny,
                         np.finfo(dtype).max, 2 * tiny, 3e-3], dtype)
    left = np.concatenate([a, -b, u, w, specials, specials[::-1], b])
    right = np.concatenate([b, a, c, d, specials[::-1], specials, -b * dtype(1 + 2**-10)])
    return left, right


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_each_op_of_the_reference_flushes_as_tensorflow_does(dtype):
    left, right = _edge_operands(dtype, np.random.default_rng(9))
    ta, tb = tf.constant(left), tf.constant(right)
    with np.errstate(all="ignore"):
        cases = {
            "mul": (reference.mul(left, right), ta * tb),
            "div": (reference.div(left, right), ta / tb),
            "add": (reference.add(left, right), ta + tb),
            "sub": (reference.sub(left, right), ta - tb),
            "square": (reference.mul(right, right), tf.square(tb)),
            "sqrt": (np.sqrt(np.abs(left)), tf.sqrt(tf.abs(ta))),
            "flush (DAZ)": (reference.flush(left * dtype(0.5)), tf.constant(left * dtype(0.5)) * 1),
        }
    for name, (ours, theirs) in cases.items():
        theirs = theirs.numpy()
        nan = np.isnan(theirs)
        np.testing.assert_array_equal(np.isnan(ours), nan, err_msg=name)
        _assert_same_bits(ours[~nan], theirs[~nan], f"{dtype.__name__} {name}")
    if dtype != np.float16:  # the edge cases are really there
        # Products that IEEE rounds up to the smallest normal number: x86 flushes those that
        # its rounding with an unbounded exponent leaves below it, and only those.
        tiny = np.finfo(dtype).tiny
        bits = np.finfo(dtype).nmant + 1
        below = Fraction(float(tiny)) * (1 - Fraction(1, 2 ** (bits + 1)))
        at_tiny = np.flatnonzero(np.abs(left * right) == tiny)
        exact = [abs(Fraction(float(left[i])) * Fraction(float(right[i]))) for i in at_tiny]
        flushed = at_tiny[[p < below for p in exact]]
        kept = at_tiny[[p >= below for p in exact]]
        assert len(flushed) > 100 and len(kept) > 100
        assert np.all(reference.mul(left, right)[flushed] == 0)
        assert np.all(np.abs(reference.mul(left, right)[kept]) == tiny)
        with np.errstate(all="ignore"):
            assert np.any((np.abs(left / right) == tiny) & (reference.div(left, right) == 0))


def test_torch_tensors_take_the_same_model():
    # The reference runs on torch tensors too (CPU here; CUDA in kernels.torch_foreach's sparse
    # step): the same bits as on NumPy arrays.
    for dtype in (np.float32, np.float64):
        left, right = _edge_operands(dtype, np.random.default_rng(4))
        tl, tr = torch.from_numpy(left), torch.from_numpy(right)
        for op in (reference.mul, reference.div, reference.add, reference.sub):
            with np.errstate(all="ignore"):
                expected = op(left, right)
            got = op(tl, tr).numpy()
            nan = np.isnan(expected)
            np.testing.assert_array_equal(np.isnan(got), nan)
            _assert_same_bits(got[~nan], expected[~nan], f"{dtype.__name__} {op.__name__}")
    assert nadam.kernels.registered_kernels()  # the package is importable alongside torch
