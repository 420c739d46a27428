"""Keras 3's base-optimizer features around `nadam.keras.Nadam`, on each backend, against the
Keras 2 oracle doing the same thing (one worker process per backend, float32, 40 steps):

- `clipvalue`: Keras 2's bits everywhere (clamping rounds nothing);
- `clipnorm` / `global_clipnorm`: Keras 3 computes the norms with the backend's own sums. On
  TensorFlow they are TensorFlow's reductions and match Keras 2's bits; on JAX and torch the
  summation order differs, so the clipped gradients (and the steps after them) may differ in
  the last bits: held to a few ulps of each array's scale there;
- `gradient_accumulation_steps=2`: one step per two calls, on the average of the two
  gradients, with the schedule counting steps, not calls: Keras 2 fed the averages;
- `loss_scale_factor`: gradients divided by it (a power of two here, so exactly);
- `use_ema`: the variables' trajectory unchanged; the averages follow Keras 3's EMA;
- `weight_decay` with `exclude_from_weight_decay`: excluded variables follow Keras 2's
  trajectory bit for bit; the others shrink by Keras 3's decoupled decay before each step;
- `decay` (this optimizer's time-inverse decay): `nadam.Nadam(decay=...)`'s bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from keras3_helpers import BACKENDS, assert_same_trajectory, oracle, random_case, run_worker

import nadam

STEPS = 40
HYPERS = {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
NAMES = ["kernel", "bias", "scale"]
EXACT_NORMS = {"tensorflow"}

CASES = {
    "clipvalue": {"clipvalue": 0.5},
    "clipnorm": {"clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 1.0},
    "accumulation": {"gradient_accumulation_steps": 2},
    "loss_scale": {"loss_scale_factor": 4.0},
    "ema": {"use_ema": True, "ema_momentum": 0.9},
    "weight_decay": {"weight_decay": 0.004},
    "decay": {"decay": 0.05},
    "schedule": {},
    "schedule_accumulation": {"gradient_accumulation_steps": 2},
}
SCHEDULE = {"class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.01, "decay_steps": 4, "decay_rate": 0.5}}


def _inputs(name: str) -> dict[str, np.ndarray]:
    arrays = random_case(21, "float32", steps=STEPS)
    if name == "loss_scale":  # gradients of a loss scaled by 4: Keras 3 divides them back
        arrays = {k: v * np.float32(4) if k.startswith("g_") else v for k, v in arrays.items()}
    return arrays


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, tmp_path_factory) -> tuple[str, dict]:
    backend = request.param
    cases = []
    for name, kwargs in CASES.items():
        hypers = {k: v for k, v in HYPERS.items()}
        if name == "decay":
            hypers["decay"] = kwargs["decay"]
            kwargs = {}
        if name.startswith("schedule"):
            hypers["learning_rate"] = SCHEDULE
        cases.append({"name": name, "mode": "apply", "variables": 3, "steps": STEPS,
                      "hypers": hypers, "kwargs": kwargs, "names": NAMES,
                      "exclude_names": ["bias"] if name == "weight_decay" else None})
    inputs = {name: _inputs(name) for name in CASES}
    return backend, run_worker(backend, cases, inputs, tmp_path_factory.mktemp(backend))


def _clipping_oracle(name: str) -> dict:
    keras2 = {k: v for k, v in HYPERS.items()}
    keras2.update(CASES[name])
    return oracle(_inputs(name), keras2, STEPS)


def _close(ours: dict, theirs: dict, ulps: float) -> None:
    for key, value in theirs.items():
        if key == "iterations":
            continue
        scale = max(float(np.max(np.abs(value), initial=0.0)), 1e-30)
        atol = ulps * float(np.finfo(np.float32).eps) * scale
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=atol, err_msg=key)


def test_clipvalue(run) -> None:
    backend, records = run
    assert_same_trajectory(records["clipvalue"], _clipping_oracle("clipvalue"), backend)


@pytest.mark.parametrize("name", ["clipnorm", "global_clipnorm"])
def test_norm_clipping(run, name: str) -> None:
    backend, records = run
    theirs = _clipping_oracle(name)
    if backend in EXACT_NORMS:
        assert_same_trajectory(records[name], theirs, f"{backend} {name}")
    else:
        _close(records[name], theirs, ulps=64)
    unclipped = oracle(_inputs(name), HYPERS, STEPS)
    assert not np.array_equal(records[name]["x_39_0"], unclipped["x_39_0"])  # clipping acted


def test_gradient_accumulation_steps_count_updates(run) -> None:
    backend, records = run
    pending: list = []

    def averaged(step: int, grads: list) -> list | None:
        if step % 2 == 0:
            pending[:] = grads
            return None
        # Keras 3: (g + accumulated) / 2, exact in float32 (a power of two).
        return [(g + a) / 2 for g, a in zip(grads, pending, strict=True)]

    # The oracle steps on odd calls only and records them under the call's number; x stays
    # put on the calls between (not compared).
    theirs = oracle(_inputs("accumulation"), HYPERS, STEPS, grads_of=averaged)
    ours = records["accumulation"]
    assert_same_trajectory(ours, theirs, f"{backend} accumulation")
    assert int(ours["iterations"]) == STEPS // 2 and int(ours["calls"]) == STEPS


def _keras2_schedule() -> Any:
    return tf_keras.optimizers.schedules.ExponentialDecay(**SCHEDULE["config"])


@pytest.mark.parametrize("accumulate", [False, True])
def test_learning_rate_schedule_sees_the_step_count(run, accumulate: bool) -> None:
    """Keras 2 calls the schedule with its step count; so do we, also under gradient
    accumulation, where Keras 3's base class would pass the count of calls."""
    backend, records = run
    if accumulate:
        pending: list = []

        def averaged(step: int, grads: list) -> list | None:
            if step % 2 == 0:
                pending[:] = grads
                return None
            return [(g + a) / 2 for g, a in zip(grads, pending, strict=True)]

        theirs = oracle(_inputs("schedule"), HYPERS, STEPS, grads_of=averaged,
                        schedule=_keras2_schedule())
        ours = records["schedule_accumulation"]
    else:
        theirs = oracle(_inputs("schedule"), HYPERS, STEPS, schedule=_keras2_schedule())
        ours = records["schedule"]
    if backend == "torch":  # the schedule's `pow` is torch's here, not the C library's
        _close({k: ours[k] for k in theirs}, theirs, ulps=64)
    else:
        assert_same_trajectory(ours, theirs, f"{backend} schedule")
    constant = oracle(_inputs("schedule"), {**HYPERS, "learning_rate": 0.01}, STEPS)
    assert not np.array_equal(ours["x_39_0"], constant["x_39_0"])


def test_loss_scale_factor(run) -> None:
    backend, records = run
    theirs = oracle(random_case(21, "float32", steps=STEPS), HYPERS, STEPS)
    assert_same_trajectory(records["loss_scale"], theirs, f"{backend} loss_scale_factor")


def test_ema_leaves_the_trajectory_and_averages_it(run) -> None:
    backend, records = run
    ours = records["ema"]
    theirs = oracle(_inputs("ema"), HYPERS, STEPS)
    assert_same_trajectory(ours, theirs, f"{backend} ema")
    arrays = _inputs("ema")
    for i in range(3):
        # Keras 3 averages the variables as they are after each step (momentum 0 at first).
        average = theirs[f"x_0_{i}"].astype(np.float64)
        for step in range(1, STEPS):
            average = 0.9 * average + 0.1 * theirs[f"x_{step}_{i}"]
        np.testing.assert_allclose(ours[f"ema_{i}"], average, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(ours[f"ema_{i}"], ours[f"x_{STEPS - 1}_{i}"])
    del arrays


def test_weight_decay_skips_excluded_variables(run) -> None:
    backend, records = run
    ours = records["weight_decay"]
    theirs = oracle(_inputs("weight_decay"), HYPERS, STEPS)
    bias = [f"x_{step}_1" for step in range(STEPS)]
    kept = [*bias, "m_1", "v_1", "cache"]
    assert_same_trajectory({k: ours[k] for k in kept}, {k: theirs[k] for k in kept},
                           f"{backend} excluded from weight decay")

    def decoupled(xs: list, step: int) -> None:
        for x, name in zip(xs, NAMES, strict=True):
            if name != "bias":
                x.assign_sub(x * tf.constant(0.004) * tf.constant(np.float32(0.01)))

    decayed = oracle(_inputs("weight_decay"), HYPERS, STEPS, before_step=decoupled)
    if backend == "torch":  # torch: x *= 1 - wd * lr (one product, another rounding)
        _close({k: ours[k] for k in decayed}, decayed, ulps=64)
    else:
        assert_same_trajectory(ours, decayed, f"{backend} weight decay")
    assert not np.array_equal(ours["x_39_0"], theirs["x_39_0"])


def test_decay_is_nadam_nadams(run) -> None:
    backend, records = run
    arrays = _inputs("decay")
    xs = [nadam.Variable(np.array(arrays[f"x_{i}"])) for i in range(3)]
    reference = nadam.Nadam(**HYPERS, decay=0.05)
    expected = {}
    for step in range(STEPS):
        reference.apply_gradients([(arrays[f"g_{step}_{i}"], xs[i]) for i in range(3)])
        for i in range(3):
            expected[f"x_{step}_{i}"] = xs[i].numpy()
    for i in range(3):
        expected[f"m_{i}"] = reference.get_slot(xs[i], "m").numpy()
        expected[f"v_{i}"] = reference.get_slot(xs[i], "v").numpy()
    expected["cache"] = reference.momentum_cache.numpy()
    assert_same_trajectory(records["decay"], expected, f"{backend} decay")
    undecayed = oracle(arrays, HYPERS, STEPS)
    assert not np.array_equal(records["decay"]["x_39_0"], undecayed["x_39_0"])
