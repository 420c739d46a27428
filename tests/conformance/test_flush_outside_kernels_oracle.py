"""TensorFlow's flush-to-zero outside the Nadam kernels, against the live Keras 2 oracle.

TensorFlow's CPU kernels run with flush-to-zero and denormals-are-zero (FTZ/DAZ) in float32 and
float64 (`nadam.kernels.reference` models each op, x86's rounding window included: a product or
quotient that IEEE rounding takes up to the smallest normal number is still 0 where its rounding
with an unbounded exponent stays below it). Besides the kernels, three parts of a Keras step run
TensorFlow ops on our side too, and each must flush as those ops do (issue #9):

- the sparse gradient's deduplication (`tf.unique` + `unsorted_segment_sum`, run on every sparse
  gradient): values read as flushed, every partial sum flushed, each row starting from +0;
- the per-step scalars (momentum schedule, momentum cache, bias corrections, decayed learning
  rate): every scalar op, products in the rounding window included, and the casts between dtypes;
- gradient clipping (`clip_by_value`, `clip_by_norm`, `clip_by_global_norm`): subnormal entries
  read as 0, products and quotients flushed with the window, the global scale's scalar ops too.

Each is compared bit for bit (signs of zeros included) with TensorFlow's own ops and with whole
Keras trajectories, on NumPy variables and CPU torch tensors, on both kernel paths.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch

from nadam import IndexedSlices, Nadam, Variable, clipping, step_scalars, tf_math
from nadam.backends import NUMPY_BACKEND, DenseGrad, SparseGrad
from nadam.backends.torch import TORCH_BACKEND
from nadam.torch import Nadam as TorchNadam

from .oracle import PATHS, KerasNadam, on_path, tf

DTYPES = (np.float32, np.float64)
FACES = ("numpy", "torch-keras-face", "torch-optim")
dtype_ids = {"ids": lambda d: np.dtype(d).name}


def _tiny(dtype: Any) -> float:
    return float(np.finfo(dtype).tiny)


def _bits(array: Any) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(array))
    return array.reshape(-1).view(f"u{array.dtype.itemsize}")


def _assert_same_bits(ours: Any, theirs: Any, what: str) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, what
    same = _bits(ours) == _bits(theirs)
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.size} elements differ, "
                             f"first at {bad}: ours {ours.reshape(-1)[bad]!r}, "
                             f"TensorFlow {theirs.reshape(-1)[bad]!r}")


def _window(dtype: Any) -> tuple[Fraction, Fraction]:
    """[low, high): the exact values that IEEE rounding (with subnormals) takes up to the
    smallest normal number and x86's rounding with an unbounded exponent leaves below it."""
    tiny = Fraction(_tiny(dtype))
    bits = np.finfo(dtype).nmant + 1
    return tiny * (1 - Fraction(1, 2**bits)), tiny * (1 - Fraction(1, 2 ** (bits + 1)))


def _in_window(value: Fraction, dtype: Any) -> bool:
    low, high = _window(dtype)
    return low <= abs(value) < high


def _neighbours(value: float, dtype: Any, below: int, above: int) -> np.ndarray:
    """The `below + above` consecutive numbers of `dtype` around `value` (positive)."""
    start = np.asarray(value, dtype)
    bits = start.view(f"i{start.itemsize}") + np.arange(-below, above)
    return bits.astype(f"i{start.itemsize}").view(dtype)


# --- running Keras and our faces over a plan of gradients -------------------------------------
def _keras_gradient(grad: Any, var: Any) -> Any:
    if isinstance(grad, tuple):
        values, indices = grad
        return tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                tf.constant(var.shape, dtype=tf.int64))
    return tf.constant(grad)


def _keras_run(initial: list[np.ndarray], steps: list[list[Any]], kwargs: dict,
               reweight: Any = None) -> list[list[np.ndarray]]:
    variables = [tf.Variable(np.array(a)) for a in initial]
    keras = KerasNadam(**kwargs)
    states = []
    for number, grads in enumerate(steps):
        keras.apply_gradients([(_keras_gradient(g, v), v) for g, v in zip(grads, variables,
                                                                          strict=True)])
        if reweight is not None and number == reweight[0]:
            keras.set_weights(reweight[1](keras.get_weights()))
        state = []
        for var in variables:
            state += [var.numpy(), keras.get_slot(var, "m").numpy(),
                      keras.get_slot(var, "v").numpy()]
        states.append([*state, np.asarray(keras.get_weights()[1])])
    return states


def _torch_kwargs(kwargs: dict) -> dict:
    out = dict(kwargs)
    if "learning_rate" in out:
        out["lr"] = out.pop("learning_rate")
    if "beta_1" in out:
        out["betas"] = (out.pop("beta_1"), 0.999)
    return out


def _our_run(face: str, path: str, initial: list[np.ndarray], steps: list[list[Any]],
             kwargs: dict, reweight: Any = None) -> list[list[np.ndarray]]:
    if face == "numpy":
        variables: list[Any] = [Variable(np.array(a)) for a in initial]
        opt: Any = Nadam(**kwargs)
    else:
        variables = [torch.nn.Parameter(torch.from_numpy(np.array(a))) for a in initial]
        opt = (Nadam(**kwargs) if face == "torch-keras-face"
               else TorchNadam(variables, **_torch_kwargs(kwargs)))

    def gradient(grad: Any, var: Any) -> Any:
        if isinstance(grad, tuple):
            values, indices = grad
            if face == "numpy":
                return IndexedSlices(np.array(values), np.array(indices), var.shape)
            return torch.sparse_coo_tensor(torch.from_numpy(np.array(indices))[None],
                                           torch.from_numpy(np.array(values)), var.shape)
        return np.array(grad) if face == "numpy" else torch.from_numpy(np.array(grad))

    def numpy(value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            return value.detach().numpy().copy()
        return value.numpy() if isinstance(value, Variable) else np.array(value)

    states = []
    for number, grads in enumerate(steps):
        pairs = [(gradient(g, v), v) for g, v in zip(grads, variables, strict=True)]
        with on_path(path):
            if face == "torch-optim":
                for grad, param in pairs:
                    param.grad = grad
                opt.step()
            else:
                opt.apply_gradients(pairs)
        if reweight is not None and number == reweight[0]:
            opt.set_weights(reweight[1](opt.get_weights()))
        state = []
        for var in variables:
            if face == "torch-optim":
                slots = [opt.state[var]["m"], opt.state[var]["v"]]
            else:
                slots = [opt.get_slot(var, "m"), opt.get_slot(var, "v")]
            state += [numpy(var), *map(numpy, slots)]
        states.append([*state, np.asarray(opt.get_weights()[1])])
    return states


def _compare(face: str, path: str, initial: list[np.ndarray], steps: list[list[Any]],
             kwargs: dict, reweight: Any = None) -> list[list[np.ndarray]]:
    expected = _keras_run(initial, steps, kwargs, reweight)
    ours = _our_run(face, path, initial, steps, kwargs, reweight)
    labels = [f"x{i}/{s}" for i in range(len(initial)) for s in ("value", "m", "v")]
    labels.append("momentum_cache")
    for number, (mine, theirs) in enumerate(zip(ours, expected, strict=True), start=1):
        for label, a, b in zip(labels, mine, theirs, strict=True):
            _assert_same_bits(a, b, f"step {number}, {label}")
    return expected


# --- 1. the sparse gradient's deduplication ---------------------------------------------------
def _dedupe_plan(dtype: Any) -> tuple[list[np.ndarray], list[list[Any]]]:
    t = _tiny(dtype)
    # Row 0, three values: column 0 sums 1.5t - t (0.5t: flushed to 0) + 1.25t = 1.25t, not
    # IEEE's 1.75t; column 1 sums -1.5t + t (-0.5t: -0) + (-0.25t, read as -0) = -0, not
    # -0.75t. Row 1: a normal and a subnormal value (the subnormal one reads as 0). Row 2 alone.
    values = np.array([[1.5 * t, -1.5 * t], [2 * t, -2 * t], [-t, t], [0.75 * t, -0.75 * t],
                       [1.25 * t, -0.25 * t], [0.5, -0.25]], dtype)
    first = (values, np.array([0, 1, 0, 1, 0, 2]))
    # Row 1's m is -0 in column 1 after the first step (0.1 * -2t underflows); a lone -0 or
    # negative subnormal value for it sums to +0 in TensorFlow (0 + -0), so m becomes +0.
    lone = (np.array([[-0.0, -0.5 * t]], dtype), np.array([1]))
    ordinary = (np.array([[0.25, 0.5]], dtype), np.array([2]))
    return [np.zeros((3, 2), dtype)], [[first], [lone], [ordinary], [lone]]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_duplicate_rows_sum_as_unsorted_segment_sum(dtype, path, face):
    initial, steps = _dedupe_plan(dtype)
    expected = _compare(face, path, initial, steps, {"learning_rate": 1.0})
    # The plan does reach the flushes: Keras's x row 0 reflects 1.25t (not 1.75t) and -0.
    assert expected[0][0][0, 0] != 0 and expected[0][0][0, 1] == 0


@pytest.mark.parametrize("dtype", [*DTYPES, np.float16], **dtype_ids)
def test_dedupe_is_tensorflows_segment_sum(dtype):
    # The backends' dedupe against `unique` + `unsorted_segment_sum` themselves, on random
    # rows with many repeats, values at the smallest normal number's scale.
    rng = np.random.default_rng(7)
    t = float(np.finfo(dtype).tiny)
    indices = rng.integers(0, 6, 200)
    values = (rng.integers(-8, 9, (200, 3)) * 0.25 * t).astype(dtype)
    values[::17] = dtype(0.5)
    values[::23, 0] = -0.0
    unique, positions = tf.unique(tf.constant(indices))
    summed = tf.math.unsorted_segment_sum(tf.constant(values), positions, tf.shape(unique)[0])
    for backend, wrap in ((NUMPY_BACKEND, np.asarray), (TORCH_BACKEND, torch.from_numpy)):
        ours = backend.dedupe(SparseGrad(wrap(values), wrap(indices)))
        _assert_same_bits(np.asarray(ours.indices), unique.numpy(), "indices")
        _assert_same_bits(np.asarray(ours.values), summed.numpy(), f"{backend} values")
    if dtype != np.float16:  # the flushes happen (IEEE sums differ)
        ieee = np.zeros_like(summed.numpy())
        np.add.at(ieee, positions.numpy(), values)
        assert np.any(_bits(ieee) != _bits(summed.numpy()))


# --- 2. the per-step scalars ------------------------------------------------------------------
def _edge_pairs(dtype: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scalar operands whose products, quotients, sums and differences land at and around the
    smallest normal number (many in the rounding window), subnormal ones and ordinary ones."""
    t = _tiny(dtype)
    n = 600
    a = rng.uniform(0.5, 1.0, n).astype(dtype)
    near = (t / a.astype(np.float64)).astype(dtype) if dtype == np.float32 else t / a
    b = np.where(rng.random(n) < 0.5, np.nextafter(near, dtype(1)), near).astype(dtype)
    b = np.maximum(b, dtype(t))
    c = (2.0 ** rng.integers(0, 8, n)).astype(dtype)
    u = (np.nextafter(dtype(2), dtype(0)) * t * c / 2).astype(dtype)
    specials = np.array([0.0, -0.0, 1.0, -2.5, t, -t, 2 * t, 0.3 * t, -0.7 * t, 3e-3,
                         1.5 * t, -1.25 * t], dtype)
    left = np.concatenate([a, u, specials, specials[::-1], b])
    right = np.concatenate([b, c, specials[::-1], specials, -b * dtype(1 + 2**-10)])
    return left, right


@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_scalar_ops_flush_as_tensorflow(dtype):
    left, right = _edge_pairs(dtype, np.random.default_rng(3))
    ta, tb = tf.constant(left), tf.constant(right)
    theirs = {"mul": (ta * tb).numpy(), "div": (ta / tb).numpy(), "add": (ta + tb).numpy(),
              "sub": (ta - tb).numpy()}
    with np.errstate(all="ignore"):
        for name, expected in theirs.items():
            op = getattr(tf_math, name)
            ours = np.array([op(x, y) for x, y in zip(left, right, strict=True)], dtype)
            _assert_same_bits(ours, expected, f"tf_math.{name}")
    # The window is exercised: IEEE gives the smallest normal number where TensorFlow gives 0.
    with np.errstate(all="ignore"):
        assert np.any((np.abs(left * right) == _tiny(dtype)) & (theirs["mul"] == 0))


def test_casts_flush_as_tensorflow():
    t32 = _tiny(np.float32)
    # float64 numbers around float32's smallest normal, its window included; subnormal
    # float32 numbers cast up to float64.
    wide = np.concatenate([t32 * (1 + np.arange(-64, 16) * 2.0**-27),
                           _neighbours(t32 * (1 - 2**-25), np.float64, 40, 40),
                           [0.7 * t32, -0.999 * t32, 1.0, -0.0, 5e-300]])
    wide = np.concatenate([wide, -wide])
    narrow = np.array([0.5 * t32, -0.25 * t32, t32, -0.0, 1.0, 1e-45], np.float32)
    cases = [(wide, np.float32), (narrow, np.float64), (narrow, np.float16), (wide, np.float16)]
    for source, target in cases:
        expected = tf.cast(tf.constant(source), target).numpy()
        ours = np.array([tf_math.cast(x, np.dtype(target)) for x in source], target)
        _assert_same_bits(ours, expected, f"cast {source.dtype} to {np.dtype(target)}")
    in_window = [_in_window(Fraction(float(x)), np.float32) for x in wide]
    assert any(in_window) and np.all(tf.cast(tf.constant(wide), tf.float32).numpy()[in_window] == 0)


def test_float32_pow_results_in_the_window_flush_as_tensorflow():
    # powf computes in double and rounds once to float: under FTZ a result that IEEE rounds
    # up to the smallest normal number is 0 when its 24-bit rounding stays below it.
    # For each of many exponents, the bases whose powers step across the smallest normal
    # number: each crossing lands in the window with a chance of about 1 in 8 (negative bases
    # with odd exponents give negative results).
    t = _tiny(np.float32)
    bases, exponents = [], []
    for exponent in np.arange(2.25, 50, 0.25, dtype=np.float32):
        root = (t * (1 - 3 * 2.0**-27)) ** (1 / float(exponent))
        for base in _neighbours(root, np.float32, 4, 4):
            bases.append(base)
            exponents.append(exponent)
            if exponent % 2 == 1:
                bases.append(-base)
                exponents.append(exponent)
    bases_a, exponents_a = np.array(bases, np.float32), np.array(exponents, np.float32)
    # One scalar op each, as Keras's scalars (TensorFlow vectorizes pow over longer tensors).
    expected = np.array([tf.pow(tf.constant(b), tf.constant(e)).numpy()
                         for b, e in zip(bases_a, exponents_a, strict=True)], np.float32)
    ours = np.array([tf_math.pow(b, e) for b, e in zip(bases_a, exponents_a, strict=True)],
                    np.float32)
    _assert_same_bits(ours, expected, "tf_math.pow")
    ieee = np.array([tf_math.C_FLOAT_MATH.powf(float(b), float(e)) if tf_math.C_FLOAT_MATH
                     else np.nan for b, e in zip(bases_a, exponents_a, strict=True)], np.float32)
    if tf_math.C_FLOAT_MATH is not None:  # the window is exercised
        assert np.any((np.abs(ieee) == t) & (expected == 0)) and np.any(np.abs(expected) == t)


def _cache_in_window(dtype: Any) -> tuple[int, Any, Any]:
    """A step t and a momentum cache c of `dtype` whose product with Keras's mu_t (defaults)
    lands in the rounding window: (t, c, mu_t)."""
    d = np.dtype(dtype).type
    for step in range(2, 40):
        mu = step_scalars.momentum_schedule(d(np.float32(0.9)), d(0.004), d(step))
        target = _tiny(dtype) * (1 - 2.0 ** -(np.finfo(dtype).nmant + 2)) / float(mu)
        for c in _neighbours(target, dtype, 8, 8):
            if _in_window(Fraction(float(c)) * Fraction(float(mu)), dtype):
                return step, c, mu
    raise AssertionError("no cache in the window")


@pytest.mark.parametrize("face", ["numpy", "torch-keras-face"])
@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_a_momentum_cache_product_in_the_window_is_zero(dtype, face):
    # Before step t both optimizers get a cache c with c * mu_t in the window: IEEE rounds the
    # new cache up to the smallest normal number, Keras (x86) makes it 0.
    step, cache, mu = _cache_in_window(dtype)

    def with_cache(weights: list) -> list:
        return [weights[0], np.asarray(cache, dtype), *weights[2:]]

    x0 = np.array([0.5, -1.0], dtype)
    steps = [[np.array([0.25, 0.5], dtype)] for _ in range(step + 1)]
    expected = _compare(face, "default", [x0], steps, {}, (step - 2, with_cache))
    assert expected[step - 1][-1] == 0 and cache * mu == _tiny(dtype)  # the window case


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("face", FACES)
def test_a_momentum_schedule_in_the_window_is_zero(face, path):
    # float32 beta_1 just below twice the smallest normal number: mu_1 = beta_1 * 0.5001 lands
    # in the window, which Keras flushes (and with it the momentum cache). The schedule decay
    # that makes one land there is searched for.
    f = np.float32
    beta_1 = decay = None
    for decay in np.arange(1, 40) * 0.001:
        k = tf_math.sub(f(1), tf_math.mul(f(0.5), tf_math.pow(f(0.96), tf_math.mul(f(decay),
                                                                                    f(1)))))
        for candidate in _neighbours(_tiny(f) * (1 - 3 * 2.0**-27) / float(k), f, 8, 8):
            if _in_window(Fraction(float(candidate)) * Fraction(float(k)), f):
                beta_1 = float(candidate)
                break
        if beta_1 is not None:
            break
    assert beta_1 is not None
    x0 = np.array([0.5, -1.0, 2.0], f)
    steps = [[np.array([0.25, -0.5, 1e-3], f)] for _ in range(3)]
    expected = _compare(face, path, [x0], steps, {"beta_1": beta_1, "schedule_decay": decay})
    assert expected[0][-1] == 0


# --- 3. clipping ------------------------------------------------------------------------------
def _clip_gradient(dtype: Any, clip: float, norm_entry: float) -> np.ndarray:
    """Ordinary entries (one sets the norm), subnormal ones and entries whose clipped value
    (g * clip / max(norm, clip)) lands at and around the smallest normal number."""
    t = _tiny(dtype)
    norm = abs(norm_entry)
    near = t * max(norm, clip) / clip
    return np.concatenate([
        np.array([norm_entry, 0.0, -0.0, 0.3 * t, -0.6 * t, t, -t], dtype),
        _neighbours(near, dtype, 150, 30),
        -_neighbours(near * (1 + 2**-12), dtype, 60, 10),
        _neighbours(t / clip, dtype, 60, 10),
    ]).astype(dtype)


# (option, threshold in float32 and in float64, the entry that sets the norm). The thresholds
# were searched for so that some product or quotient lands in the rounding window (asserted
# below); only a divisor that is a power of two (here the norm 2) puts a quotient there, and a
# product's window shows only where the divisor is below 1.
CLIP_CASES = {
    "clipnorm, product": ("clipnorm", (0.44846153259277344, 0.44846153846153847), 0.3),
    "clipnorm, quotient": ("clipnorm", (0.3271186351776123, 0.3271186440677966), 2.0),
    "clipnorm above 2": ("clipnorm", (3.0, 3.0), 0.5),
    "clipvalue": ("clipvalue", (0.5, 0.5), 3.0),
    "global_clipnorm, product": ("global_clipnorm", (0.38717949390411377, 0.38717948717948714),
                                 2.9),
    "global_clipnorm, tiny scale": ("global_clipnorm", (1e-30, 1e-300), 3e9),
}


def _clip_case(case: str, dtype: Any) -> tuple[str, float, float]:
    option, thresholds, entry = CLIP_CASES[case]
    threshold = thresholds[0] if dtype == np.float32 else thresholds[1]
    # Keras converts the threshold to the gradient's dtype: use that number exactly.
    return option, float(np.asarray(threshold, dtype)), entry


def _tf_clip(option: str, values: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    tensors = [tf.constant(v) for v in values]
    if option == "clipvalue":
        return [tf.clip_by_value(v, -threshold, threshold).numpy() for v in tensors]
    if option == "clipnorm":
        return [tf.clip_by_norm(v, threshold).numpy() for v in tensors]
    return [v.numpy() for v in tf.clip_by_global_norm(tensors, threshold)[0]]


def _our_clip(option: str, backend: Any, grads: list[Any], threshold: float) -> list[Any]:
    if option == "clipvalue":
        return [clipping.clip_by_value(backend, g, threshold) for g in grads]
    if option == "clipnorm":
        return [clipping.clip_by_norm(backend, g, threshold) for g in grads]
    return clipping.clip_by_global_norm([(backend, g) for g in grads], threshold)


def _plain_clip(option: str, values: list[np.ndarray], threshold: float,
                flush: bool) -> np.ndarray:
    """The first gradient clipped in plain IEEE arithmetic: subnormals kept, or (`flush`)
    every op's subnormal inputs and results made 0 without x86's rounding window."""
    dtype = values[0].dtype.type

    def f(x: Any) -> Any:
        return np.where(np.abs(x) < _tiny(dtype), x * 0, x) if flush else x

    c = f(dtype(threshold))
    v = f(values[0])
    if option == "clipvalue":
        return np.clip(v, -c, c)
    if option == "clipnorm":  # the norms as TensorFlow sums them
        norm = np.sqrt(dtype(NUMPY_BACKEND.square_sum(values[0])))
        return f(f(v * c) / np.maximum(norm, c))
    norm = clipping.global_norm([(NUMPY_BACKEND, DenseGrad(a)) for a in values])
    return f(v * f(c * np.minimum(f(dtype(1) / norm), f(dtype(1) / c))))


@pytest.mark.parametrize("case", CLIP_CASES)
@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_clipping_ops_flush_as_tensorflow(dtype, case):
    option, threshold, entry = _clip_case(case, dtype)
    t = _tiny(dtype)
    # A second gradient whose squares underflow: the global norm is the first one's.
    values = [_clip_gradient(dtype, threshold, entry), np.array([[2 * t, -0.5 * t]], dtype)]
    expected = _tf_clip(option, values, threshold)
    for backend, wrap in ((NUMPY_BACKEND, np.asarray), (TORCH_BACKEND, torch.from_numpy)):
        for sparse in (False, True):
            grads: list[Any] = [SparseGrad(wrap(v), wrap(np.arange(len(v)))) if sparse
                                else DenseGrad(wrap(v)) for v in values]
            ours = _our_clip(option, backend, grads, threshold)
            for number, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
                got = mine.values if sparse else mine.array
                _assert_same_bits(np.asarray(got), theirs,
                                  f"{case}, {type(backend).__name__}, sparse={sparse}, "
                                  f"gradient {number}")
    # Flushing matters here: IEEE arithmetic gives nonzero numbers where TensorFlow gives 0;
    # and (but for clipvalue and the tiny scale) so does flushing without the rounding window.
    with np.errstate(all="ignore"):
        ieee = _plain_clip(option, values, threshold, flush=False)
        no_window = _plain_clip(option, values, threshold, flush=True)
    assert np.any((ieee != 0) & (expected[0] == 0))
    if option != "clipvalue" and "tiny scale" not in case and "above 2" not in case:
        assert np.any(_bits(no_window) != _bits(expected[0])), "no result in the window"


def _clip_plan(dtype: Any, case: str, sparse: bool) -> tuple[list[np.ndarray], list[list[Any]]]:
    option, threshold, entry = _clip_case(case, dtype)
    g = _clip_gradient(dtype, threshold, entry)
    x0 = np.zeros_like(g)
    if not sparse:
        return [x0], [[g], [g[::-1].copy()], [g]]
    # Rows of two: each row twice, with its second copy halved (the sums stay near the edge).
    rows = g[: g.size // 2 * 2].reshape(-1, 2)
    table = np.zeros_like(rows)
    indices = np.concatenate([np.arange(len(rows)), np.arange(len(rows))[::-1]])
    values = np.concatenate([rows, (rows * dtype(0.5))[::-1]])
    return [table], [[(values, indices)], [(values[::-1].copy(), indices[::-1].copy())]]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", [c for c in CLIP_CASES if "tiny scale" not in c])
@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_clipping_in_apply_gradients_flushes_as_keras(dtype, case, sparse, path, face):
    option, threshold, _ = _clip_case(case, dtype)
    initial, steps = _clip_plan(dtype, case, sparse)
    _compare(face, path, initial, steps, {"learning_rate": 1.0, option: threshold})


@pytest.mark.parametrize("dtype", DTYPES, **dtype_ids)
def test_a_subnormal_global_clipping_scale_is_zero(dtype):
    # clip * (1 / norm) underflows: TensorFlow's scale is 0 and every gradient becomes 0.
    threshold = 1e-30 if dtype == np.float32 else 1e-300
    g = np.array([3e9, -1.0, 2.0], dtype)
    _compare("numpy", "default", [np.zeros_like(g)], [[g], [g]],
             {"learning_rate": 1.0, "global_clipnorm": threshold})
    (clipped,), _ = tf.clip_by_global_norm([tf.constant(g)], threshold)
    assert np.all(clipped.numpy() == 0)
