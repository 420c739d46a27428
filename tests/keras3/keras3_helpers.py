"""Helpers for the Keras 3 face's tests: random cases, the worker subprocess, the Keras 2 oracle.

Keras 3 picks its backend once per process, so `nadam.keras.Nadam` runs in a worker
(`keras3_backend_worker.py`) started with `KERAS_BACKEND` set, on inputs this process writes;
the oracle (`tf_keras.optimizers.legacy.Nadam`) runs here on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

WORKER = Path(__file__).with_name("keras3_backend_worker.py")
BACKENDS = ("jax", "torch", "tensorflow")
STEPS = 300  # past the float32 momentum cache's underflow (step 111)
SHAPES = ((4, 3), (5,), ())


def random_hypers(seed: int) -> dict[str, float]:
    """Hyperparameters near the defaults, rarely exact in float32."""
    rng = np.random.default_rng(seed)
    return {
        "learning_rate": float(10 ** rng.uniform(-3.5, -1.5)),
        "beta_1": float(rng.uniform(0.8, 0.95)),
        "beta_2": float(rng.uniform(0.99, 0.9999)),
        "epsilon": float(10 ** rng.uniform(-8, -6)),
        "schedule_decay": float(rng.choice([0.004, rng.uniform(0.001, 0.01)])),
    }


def random_case(
    seed: int, dtype: str, steps: int = STEPS, shapes: Sequence[tuple[int, ...]] = SHAPES,
    sparse: Sequence[int] = (),
    tiny: bool = False,
) -> dict[str, np.ndarray]:
    """Initial variables `x_<i>` and gradients for `steps` steps, of magnitudes that vary from
    step to step (some exactly zero); variables listed in `sparse` get row-sparse gradients
    with repeated rows (`gi_`, `gv_`). With `tiny`, a third of the dense gradients' elements
    are scaled down to 1e-45..1e-19 (float32): subnormal ones, which TensorFlow reads as 0, and
    products and squares that underflow, which it flushes to 0."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for i, shape in enumerate(shapes):
        arrays[f"x_{i}"] = rng.standard_normal(shape).astype(dtype)
    for step in range(steps):
        scale = 10 ** rng.uniform(-3, 1)
        for i, shape in enumerate(shapes):
            if i in sparse:
                rows = rng.integers(0, shape[0], size=shape[0] + 1)
                arrays[f"gi_{step}_{i}"] = rows.astype(np.int64)
                values = scale * rng.standard_normal((len(rows), *shape[1:]))
                arrays[f"gv_{step}_{i}"] = values.astype(dtype)
            else:
                grad = scale * rng.standard_normal(shape) * (rng.random(shape) > 0.1)
                if tiny:
                    small = rng.random(shape) < 1 / 3
                    grad = np.where(small, grad * 10 ** rng.uniform(-45, -19, shape), grad)
                arrays[f"g_{step}_{i}"] = np.asarray(grad, dtype=dtype)
    return arrays


def run_worker(
    backend: str, cases: Sequence[dict[str, Any]], inputs: dict[str, dict[str, np.ndarray]],
    tmp_path: Path, x64: bool = False, timeout: float = 600,
) -> dict[str, dict[str, np.ndarray]]:
    """Run `cases` in one worker process on `backend`; each case's record by name."""
    in_dir, out_dir = tmp_path / f"in-{backend}", tmp_path / f"out-{backend}"
    in_dir.mkdir(exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    (in_dir / "cases.json").write_text(json.dumps(list(cases)))
    for name, arrays in inputs.items():
        np.savez(in_dir / f"{name}.npz", **arrays)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               NADAM_TEST_X64="1" if x64 else "0", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, str(WORKER), str(in_dir), str(out_dir)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"worker on {backend} failed:\n{done.stderr[-4000:]}"
    return {case["name"]: dict(np.load(out_dir / f"{case['name']}.npz")) for case in cases}


def oracle(
    arrays: dict[str, np.ndarray], hypers: dict[str, float], steps: int,
    before_step: Callable[[list[tf.Variable], int], None] | None = None,
    grads_of: Callable[[int, list[Any]], list[Any]] | None = None,
    schedule: Callable[[Any], Any] | None = None,
) -> dict[str, np.ndarray]:
    """The Keras 2 oracle over the case's gradients: variables after each step, then slots and
    the momentum cache. `before_step` may change the variables first (decoupled weight
    decay); `grads_of` may transform the step's gradients. A `schedule` (Keras 2's Nadam
    refuses `LearningRateSchedule`s) becomes a learning-rate callable of its step count."""
    count = sum(1 for key in arrays if key.startswith("x_"))
    xs = [tf.Variable(arrays[f"x_{i}"]) for i in range(count)]
    if schedule is not None:
        hypers = {**hypers, "learning_rate": lambda: schedule(keras2.iterations)}
    keras2 = tf_keras.optimizers.legacy.Nadam(**hypers)
    record: dict[str, np.ndarray] = {}
    for step in range(steps):
        grads = []
        for i in range(count):
            if f"g_{step}_{i}" in arrays:
                grads.append(tf.constant(arrays[f"g_{step}_{i}"]))
            else:
                grads.append(tf.IndexedSlices(tf.constant(arrays[f"gv_{step}_{i}"]),
                                              tf.constant(arrays[f"gi_{step}_{i}"])))
        if grads_of is not None:
            grads = grads_of(step, grads)
            if grads is None:
                continue
        if before_step is not None:
            before_step(xs, step)
        keras2.apply_gradients(zip(grads, xs, strict=True))
        for i in range(count):
            record[f"x_{step}_{i}"] = xs[i].numpy()
    for i in range(count):
        record[f"m_{i}"] = keras2.get_slot(xs[i], "m").numpy()
        record[f"v_{i}"] = keras2.get_slot(xs[i], "v").numpy()
    record["cache"] = keras2.get_weights()[1]
    record["iterations"] = np.asarray(keras2.iterations.numpy())
    return record


def assert_bits_equal(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Same dtype, shape and bits (NaNs and signed zeros included)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs Keras 2 {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs Keras 2 {theirs.shape}"
    if ours.tobytes() != theirs.tobytes():
        diff = np.flatnonzero(ours.reshape(-1) != theirs.reshape(-1))
        raise AssertionError(
            f"{what}: {diff.size} of {ours.size} elements differ from Keras 2, first at "
            f"{diff[:3]}: ours {ours.reshape(-1)[diff[:3]]} vs {theirs.reshape(-1)[diff[:3]]}"
        )


def assert_same_trajectory(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], label: str,
    steps: Sequence[int] | None = None,
) -> None:
    """Every step's variables, then the slots and the momentum cache, bit for bit."""
    keys = [k for k in theirs if k.startswith("x_")]
    if steps is not None:
        keys = [k for k in keys if int(k.split("_")[1]) in steps]
    assert keys
    for key in keys:  # in step order: the first step that differs is the one reported
        assert_bits_equal(ours[key], theirs[key], f"{label} {key}")
    for key in [k for k in theirs if k[:2] in ("m_", "v_")] + ["cache"]:
        assert_bits_equal(ours[key], theirs[key], f"{label} {key}")
