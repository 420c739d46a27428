"""`nadam.keras.Nadam` in Keras 3 training, on each backend (one worker process per backend):

- `model.fit`, `.keras` save and load, `fit` again: the same weights and optimizer state, bit
  for bit, as one uninterrupted `fit` (TensorFlow in `tf.function`, JAX under `jax.jit`,
  torch eagerly), and the loaded optimizer is ours with the same config;
- switching from `keras.optimizers.Nadam` mid-run (`Nadam.from_keras_nadam`): the slots and
  step count carry over, the momentum cache is this schedule's, a warning says the schedules
  differ, and the steps that follow are `nadam.Nadam`'s (Keras 2's) from that state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras3_helpers import BACKENDS, assert_bits_equal, random_case, run_worker

import nadam

SWITCH_HYPERS = {"learning_rate": 0.003, "beta_1": 0.85, "beta_2": 0.995, "epsilon": 1e-6}
KERAS_STEPS, STEPS = 6, 30


def _cases(backend: str) -> list[dict]:
    fit = {"name": "fit", "mode": "fit_resume", "seed": 3, "epochs": 3, "first_epochs": 1,
           "hypers": {"learning_rate": 0.01, "schedule_decay": 0.005, "decay": 0.01}}
    switch = {"name": "switch", "mode": "switch", "variables": 2, "keras_steps": KERAS_STEPS,
              "steps": STEPS, "hypers": SWITCH_HYPERS}
    fit_switch = {"name": "fit_switch", "mode": "fit_switch", "seed": 4}
    return [fit, switch, fit_switch]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_run(request, tmp_path_factory) -> tuple[str, dict, dict]:
    backend = request.param
    inputs = {"switch": random_case(5, "float32", steps=STEPS, shapes=((3, 2), (4,)))}
    records = run_worker(backend, _cases(backend), inputs,
                         tmp_path_factory.mktemp(f"train-{backend}"))
    return backend, records, inputs


def test_fit_save_load_fit_is_one_fit(backend_run) -> None:
    backend, records, _ = backend_run
    record = records["fit"]
    assert str(record["backend"]) == backend
    assert str(record["loaded_class"]) == "nadam.integrations.keras3.Nadam"
    config = json.loads(str(record["loaded_config"]))
    assert (config["schedule_decay"], config["decay"], config["beta_1"]) == (0.005, 0.01, 0.9)
    weights = sorted(k for k in record if k.startswith("whole_") and "opt" not in k)
    state = sorted(k for k in record if k.startswith("whole_opt_"))
    assert len(weights) == 4 and len(state) == 2 + 2 * 4 + 1  # iteration, lr, m, v, cache
    for key in weights + state:
        resumed = key.replace("whole_", "resumed_")
        assert_bits_equal(record[resumed], record[key], f"{backend} {key}")
    assert int(record["whole_opt_0"]) == 12  # 3 epochs of 4 batches
    # The trained weights moved (the comparison above is not between untouched models).
    assert not np.array_equal(record["whole_0"], np.zeros_like(record["whole_0"]))


def _reference_after_switch(record: dict, inputs: dict) -> dict:
    """nadam.Nadam (Keras 2's bits) from the state at the switch, over the same gradients."""
    xs = [nadam.Variable(np.array(record[f"switch_x_{i}"])) for i in range(2)]
    ours = nadam.Nadam(**SWITCH_HYPERS)
    ours.build(xs)
    ours.set_weights([
        np.asarray(KERAS_STEPS, np.int64), np.asarray(record["after_cache"]),
        *[record[f"switch_m_{i}"] for i in range(2)], *[record[f"switch_v_{i}"] for i in range(2)],
    ])
    out = {}
    for step in range(KERAS_STEPS, STEPS):
        ours.apply_gradients([(inputs[f"g_{step}_{i}"], xs[i]) for i in range(2)])
        for i in range(2):
            out[f"x_{step}_{i}"] = xs[i].numpy()
    return out


def test_switch_from_keras_nadam_keeps_the_slots(backend_run) -> None:
    backend, records, inputs = backend_run
    record = records["switch"]
    warnings = json.loads(str(record["warnings"]))
    # (Keras 3.15's own get_config also warns on JAX, about NumPy's `copy` keyword.)
    assert sum("schedules differ" in text for text in warnings) == 1
    assert int(record["after_iterations"]) == int(record["switch_iterations"]) == KERAS_STEPS
    for i in range(2):
        assert_bits_equal(record[f"after_m_{i}"], record[f"switch_m_{i}"], f"m_{i}")
        assert_bits_equal(record[f"after_v_{i}"], record[f"switch_v_{i}"], f"v_{i}")
    # The cache is this schedule's product after KERAS_STEPS steps, op by op.
    cache = np.float32(1)
    for iterations in range(KERAS_STEPS):
        cache = nadam.step_scalars.nadam_scalars(
            "float32", iterations, cache, beta_1=SWITCH_HYPERS["beta_1"])[1]
    assert_bits_equal(record["after_cache"], np.asarray(cache), "momentum cache")
    reference = _reference_after_switch(record, inputs["switch"])
    for key, value in reference.items():
        assert_bits_equal(record[key], value, f"{backend} after the switch {key}")


def test_switch_inside_fit(backend_run) -> None:
    """A model fitted with Keras 3's Nadam, recompiled with ours, fits on from its state."""
    backend, records, _ = backend_run
    record = records["fit_switch"]
    for i in range(4):
        assert_bits_equal(record[f"ours_m_{i}"], record[f"keras_m_{i}"], f"{backend} m_{i}")
    assert bool(record["same_optimizer"]) and bool(record["moved"])
    assert int(record["iterations"]) == 8  # 4 batches with Keras's, 4 with ours
