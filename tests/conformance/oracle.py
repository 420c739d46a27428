"""Run `nadam.Nadam` and the live Keras 2 oracle side by side on the same inputs.

The oracle is `tf_keras.optimizers.legacy.Nadam` (SPEC section 5) over `tf.Variable`s. A `Twin`
holds one optimizer of each kind and the same variables twice (NumPy-backed `nadam.Variable`s
and `tf.Variable`s built from the same arrays), applies the same gradients to both, and
compares variables, slots, the momentum cache, `iterations` and the `get_weights()` layout.

Our side runs on one of two kernel paths: "default" (whatever fast path `nadam.kernels.select`
picks) or "reference" (inside `nadam.kernels.reference_only()`); both must match the oracle.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
import logging  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import array_shapes  # noqa: E402

import nadam  # noqa: E402
from nadam import IndexedSlices, Nadam, Variable  # noqa: E402

PATHS = ("default", "reference")
DTYPES = (np.float32, np.float64)

KerasNadam = tf_keras.optimizers.legacy.Nadam


def on_path(path: str) -> contextlib.AbstractContextManager[None]:
    """The context our optimizer steps run in for kernel path `path`."""
    if path == "default":
        return contextlib.nullcontext()
    if path == "reference":
        return nadam.kernels.reference_only()
    raise ValueError(f"unknown kernel path {path!r}")


def to_tf_gradient(grad: Any) -> Any:
    """Our gradient (ndarray, `nadam.IndexedSlices` or None) as the oracle's equivalent."""
    if grad is None:
        return None
    if isinstance(grad, IndexedSlices):
        dense_shape = None
        if grad.dense_shape is not None:
            dense_shape = tf.constant(grad.dense_shape, dtype=tf.int64)
        return tf.IndexedSlices(
            tf.constant(grad.values), tf.constant(grad.indices), dense_shape=dense_shape
        )
    return tf.constant(grad)


def keras_slot(keras: KerasNadam, tf_var: tf.Variable, name: str) -> np.ndarray:
    return keras.get_slot(tf_var, name).numpy()


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference for computations that legitimately differ from TF's (see callers)."""

    rtol: float
    atol: float


def assert_same_array(ours: Any, theirs: Any, what: str, tol: Tolerance | None = None) -> None:
    """Same dtype and shape, and equal bit for bit (or within `tol` when given)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != Keras {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != Keras {theirs.shape}"
    if tol is None:
        np.testing.assert_array_equal(ours, theirs, err_msg=what, strict=True)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=tol.rtol, atol=tol.atol, err_msg=what)


def max_differences(ours: Sequence[Any], theirs: Sequence[Any]) -> tuple[float, float]:
    """The largest absolute and relative element-wise differences over pairs of arrays."""
    max_abs = max_rel = 0.0
    for a, b in zip(ours, theirs, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a64 - b64)
        if diff.size == 0:
            continue
        max_abs = max(max_abs, float(diff.max()))
        scale = np.maximum(np.abs(b64), np.finfo(np.asarray(b).dtype).tiny)
        max_rel = max(max_rel, float((diff / scale).max()))
    return max_abs, max_rel


class Twin:
    """One `nadam.Nadam` and one Keras `Nadam`, each over its own copy of the same variables.

    `step(grads)` applies `grads[i]` to variable `i` on both sides (None: no gradient);
    `check()` compares the whole state. Variables may be added later with `add_variables`.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        path: str,
        ours: Nadam | None = None,
        keras: KerasNadam | None = None,
        **kwargs: Any,
    ) -> None:
        self.path = path
        self.ours = ours if ours is not None else Nadam(**kwargs)
        self.keras = keras if keras is not None else KerasNadam(**kwargs)
        self._scales: dict[str, float] = {}
        self.our_vars: list[Variable] = []
        self.tf_vars: list[tf.Variable] = []
        self.add_variables(arrays)

    @classmethod
    def of_variables(
        cls,
        ours: Nadam,
        keras: KerasNadam,
        our_vars: Sequence[Variable],
        tf_vars: Sequence[tf.Variable],
        path: str,
    ) -> Twin:
        """A twin over variables that already exist (e.g. trained by one side alone)."""
        twin = cls([], path, ours=ours, keras=keras)
        twin.our_vars, twin.tf_vars = list(our_vars), list(tf_vars)
        return twin

    def add_variables(self, arrays: Sequence[np.ndarray]) -> None:
        for array in arrays:
            number = len(self.our_vars)
            self.our_vars.append(Variable(np.array(array), name=f"x{number}"))
            self.tf_vars.append(tf.Variable(np.array(array), name=f"x{number}"))

    def step(self, grads: Sequence[Any], which: Sequence[int] | None = None) -> None:
        """Apply `grads` to the variables at positions `which` (default: all, in order)."""
        which = range(len(self.our_vars)) if which is None else which
        tf_grads = [to_tf_gradient(g) for g in grads]
        ours = [(g, self.our_vars[i]) for g, i in zip(grads, which, strict=True)]
        theirs = [(g, self.tf_vars[i]) for g, i in zip(tf_grads, which, strict=True)]
        with on_path(self.path):
            self.ours.apply_gradients(ours)
        self.keras.apply_gradients(theirs)

    # --- comparison ------------------------------------------------------------------------
    def state_pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(label, ours, Keras's) for every variable, slot and the momentum cache."""
        pairs = []
        for number, (ours, theirs) in enumerate(zip(self.our_vars, self.tf_vars, strict=True)):
            pairs.append((f"x{number}", ours.numpy(), theirs.numpy()))
            for slot in ("m", "v"):
                try:
                    theirs_slot = keras_slot(self.keras, theirs, slot)
                except KeyError:  # Keras has no slots yet for a variable never updated
                    continue
                ours_slot = self.ours.get_slot(ours, slot).numpy()
                pairs.append((f"x{number}/{slot}", ours_slot, theirs_slot))
        if self.ours.momentum_cache is not None:
            pairs.append(
                ("momentum_cache", self.ours.momentum_cache.numpy(), self.keras.get_weights()[1])
            )
        return pairs

    def check(self, tol: Tolerance | None = None) -> None:
        """Everything equal to Keras: exactly, or within `tol` where the caller justifies one."""
        for label, ours, theirs in self.state_pairs():
            assert_same_array(ours, theirs, label, tol)
        assert int(self.ours.iterations.numpy()) == int(self.keras.iterations.numpy())
        self.check_weights(tol)

    def check_weights(self, tol: Tolerance | None = None, layout_only: bool = False) -> None:
        """`get_weights()`: same length, order, dtypes, shapes and values as Keras's.

        `iterations` and `momentum_cache` (positions 0 and 1) are always compared exactly;
        with `layout_only` the slots' values are not compared (the caller did already).
        """
        ours, theirs = self.ours.get_weights(), self.keras.get_weights()
        assert len(ours) == len(theirs), f"{len(ours)} weights, Keras has {len(theirs)}"
        for position, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            what = f"get_weights()[{position}]"
            a, b = np.asarray(a), np.asarray(b)
            if position < 2:
                assert_same_array(a, b, what)
            elif layout_only:
                assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{what}: {a!r} vs Keras {b!r}"
            else:
                assert_same_array(a, b, what, tol)

    def check_close(self, ulps: float) -> None:
        """Everything within `ulps` units of roundoff of each array's running scale.

        For steps whose inputs legitimately differ from TF's by a few ulp (clipping by norm,
        gradients from a different autodiff): an error of one ulp in a gradient moves `m` by
        about one ulp of the gradients' magnitude, which `m` itself may fall far below through
        cancellation, so each array's error is measured against the largest magnitude it has
        had so far in this run.
        Call after every step. The momentum cache and `iterations` never depend on gradients:
        they must stay exact.
        """
        for label, ours, theirs in self.state_pairs():
            finfo = np.finfo(theirs.dtype)
            scale = max(self._scales.get(label, 0.0), float(np.max(np.abs(theirs), initial=0)))
            self._scales[label] = scale
            tol = None
            if label != "momentum_cache":
                tol = Tolerance(rtol=0.0, atol=ulps * float(finfo.eps) * max(scale, finfo.tiny))
            assert_same_array(ours, theirs, label, tol)
        assert int(self.ours.iterations.numpy()) == int(self.keras.iterations.numpy())
        self.check_weights(layout_only=True)

    def differences(self) -> tuple[float, float]:
        """Max absolute and relative difference from Keras over variables and slots."""
        pairs = self.state_pairs()
        return max_differences([p[1] for p in pairs], [p[2] for p in pairs])


# --- hypothesis strategies ----------------------------------------------------------------
seeds = st.integers(0, 2**32 - 1)

# Shapes of extra variables beside the fixed 0-d and 3-d ones each test has.
variable_shapes = st.lists(array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5), max_size=2)
# Row-sparse variables need a first dimension: 1-D to 3-D, with enough rows to repeat one.
row_shapes = array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=6)


@st.composite
def hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    """Constructor arguments: each one the default or a random float (rarely float32-exact).

    epsilon may be None or 0 (both mean 1e-7 in Keras and here). beta_1 stays at 0 or above
    0.05: TensorFlow flushes float32/float64 subnormal results to zero and NumPy does not, so
    a beta_1 near 1e-40 would make `beta_1 * m` differ in the subnormal range.
    """
    kwargs: dict[str, Any] = {}
    if draw(st.booleans()):
        kwargs["learning_rate"] = draw(st.floats(1e-4, 0.3))
    if draw(st.booleans()):
        kwargs["beta_1"] = draw(st.one_of(st.just(0.0), st.floats(0.05, 0.99)))
    if draw(st.booleans()):
        kwargs["beta_2"] = draw(st.floats(0.5, 0.9999))
    if draw(st.booleans()):
        kwargs["epsilon"] = draw(st.one_of(st.none(), st.just(0.0), st.floats(1e-9, 1e-2)))
    return kwargs


# --- random inputs ---------------------------------------------------------------------------
def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Normal entries at a random scale (1e-3 .. 10), so steps see small and large gradients."""
    scale = 10.0 ** rng.uniform(-3, 1)
    return np.asarray(rng.standard_normal(tuple(shape)) * scale, dtype=dtype)


def random_sparse(
    rng: np.random.Generator, shape: Sequence[int], dtype: Any, with_dense_shape: bool = True
) -> IndexedSlices:
    """Row gradient with duplicate indices, one row repeated at least three times."""
    rows = shape[0]
    repeated = int(rng.integers(rows))
    extra = rng.integers(0, rows, size=int(rng.integers(0, 2 * rows + 1)))
    indices = rng.permutation(np.concatenate([[repeated] * 3, extra])).astype(np.int64)
    values = random_array(rng, (indices.size, *shape[1:]), dtype)
    return IndexedSlices(values, indices, tuple(shape) if with_dense_shape else None)


class KerasLogRecords(logging.Handler):
    """Collects the oracle's log messages (it warns through the `tensorflow` logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> KerasLogRecords:
        logging.getLogger("tensorflow").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("tensorflow").removeHandler(self)
