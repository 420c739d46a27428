"""Run in a subprocess by test_keras_import.py, with KERAS_BACKEND set: a Keras 3 run to import.

Trains a small MLP with `keras.optimizers.Nadam` for 4 steps (`fit`), saves it as `m.keras`,
then continues 20 steps with fixed gradients (`apply_gradients`) and writes to `out.npz`: the
state at the save, the gradients, and the weights and optimizer variables at the end. Also
reads the file with `nadam.interop.load_keras_optimizer` (Keras 3 being importable here) and
writes the variable names it found to `names.json`, beside the paths of the live model and of the
model reloaded from the file (Keras 3 names them differently: `sequential/dense/kernel` live,
`dense/kernel` reloaded).

Usage: python keras3_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

STEPS = 20


def main(out: str) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(8,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(3),
    ])
    optimizer = keras.optimizers.Nadam(learning_rate=0.01)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 3)).astype(np.float32)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 steps
    path = os.path.join(out, "m.keras")
    model.save(path)

    variables = model.trainable_variables
    record: dict[str, np.ndarray] = {}
    for index, value in enumerate(optimizer.variables):
        record[f"saved_opt_{index}"] = np.asarray(value.numpy())
    for index, value in enumerate(variables):
        record[f"saved_weight_{index}"] = np.asarray(value.numpy())
    for step in range(STEPS):
        grads = [
            (0.1 * rng.standard_normal(tuple(v.shape))).astype(np.float32) for v in variables
        ]
        for index, grad in enumerate(grads):
            record[f"grad_{step}_{index}"] = grad
        optimizer.apply_gradients(zip(grads, variables, strict=True))
    for index, value in enumerate(optimizer.variables):
        record[f"final_opt_{index}"] = np.asarray(value.numpy())
    for index, value in enumerate(variables):
        record[f"final_weight_{index}"] = np.asarray(value.numpy())
    np.savez(os.path.join(out, "out.npz"), **record)

    from nadam.interop import load_keras_optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_keras_optimizer(path)
        reloaded = keras.saving.load_model(path, compile=False)
    with open(os.path.join(out, "names.json"), "w") as file:
        json.dump({
            "found": state.names,
            "reloaded_paths": [v.path for v in reloaded.trainable_variables],
            "live_paths": [v.path for v in variables],
            "backend": keras.backend.backend(),
        }, file)


if __name__ == "__main__":
    main(sys.argv[1])
