"""Run in a subprocess by the tests in this folder, with KERAS_BACKEND set: `nadam.keras.Nadam`
on one Keras 3 backend, fed the gradients the parent wrote, writing what it did to a file.

Usage: python keras3_backend_worker.py IN_DIR OUT_DIR

IN_DIR/cases.json lists cases; IN_DIR/<case>.npz holds a case's initial variables `x_<i>` and
its gradients `g_<step>_<i>` (or `gi_<step>_<i>` / `gv_<step>_<i>`: the indices and values of
a sparse one). Each case writes OUT_DIR/<case>.npz: the variables after every step
(`x_<step>_<i>`), and at the end the slots (`m_<i>`, `v_<i>`), the momentum cache, the
iteration counters and, with EMA, the averages (`ema_<i>`). Modes:

- `apply`: `optimizer.apply` eagerly, one call per step;
- `tf_function`: the same inside a `tf.function` (TensorFlow);
- `jit_stateless`: `stateless_apply` under `jax.jit` (JAX); `stateless`: without the jit
  (and `inputs_kept`: whether the first call left the arrays it was given as they were);
- `fit_resume`: `model.fit` for all epochs, against `fit`, `.keras` save, load, `fit` again;
- `fit_switch`: `fit` with `keras.optimizers.Nadam`, switch, recompile, `fit` on;
- `switch`: trains with `keras.optimizers.Nadam`, switches with `Nadam.from_keras_nadam`,
  then continues with the given gradients.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if os.environ.get("NADAM_TEST_X64") == "1":  # JAX float64: before Keras imports JAX
    import jax

    jax.config.update("jax_enable_x64", True)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nadam.keras import Nadam  # noqa: E402

BACKEND = keras.backend.backend()


def gradients(data: dict, step: int, count: int) -> list:
    grads = []
    for i in range(count):
        if f"g_{step}_{i}" in data:
            grads.append(keras.ops.convert_to_tensor(data[f"g_{step}_{i}"]))
        else:
            import tensorflow as tf

            grads.append(tf.IndexedSlices(tf.constant(data[f"gv_{step}_{i}"]),
                                          tf.constant(data[f"gi_{step}_{i}"])))
    return grads


def optimizer_for(case: dict) -> Nadam:
    hypers = dict(case["hypers"])
    if isinstance(hypers.get("learning_rate"), dict):  # a serialized schedule
        hypers["learning_rate"] = keras.optimizers.schedules.deserialize(
            hypers["learning_rate"])
    opt = Nadam(**hypers, **case.get("kwargs", {}))
    if case.get("exclude_names"):
        opt.exclude_from_weight_decay(var_names=case["exclude_names"])
    return opt


def record_state(record: dict, opt: Nadam, count: int) -> None:
    numpy = keras.ops.convert_to_numpy
    for i in range(count):
        record[f"m_{i}"] = numpy(opt._momentums[i])
        record[f"v_{i}"] = numpy(opt._velocities[i])
        if opt.use_ema:
            record[f"ema_{i}"] = numpy(opt._model_variables_moving_average[i])
    record["cache"] = numpy(opt.momentum_cache)
    record["iterations"] = numpy(opt.iterations)
    record["calls"] = numpy(opt._iterations)


def run_steps(case: dict, data: dict) -> dict:
    count = case["variables"]
    names = case.get("names") or [f"x{i}" for i in range(count)]
    xs = [keras.Variable(data[f"x_{i}"], name=names[i]) for i in range(count)]
    opt = optimizer_for(case)
    record: dict = {}
    mode = case["mode"]
    if mode == "tf_function":
        import tensorflow as tf

        step_fn = tf.function(lambda grads: opt.apply(grads, xs))
    elif mode == "jit_stateless":
        import jax

        opt.build(xs)
        jitted = jax.jit(opt.stateless_apply)
    if mode in ("jit_stateless", "stateless"):
        if mode == "stateless":
            opt.build(xs)
            jitted = opt.stateless_apply
        train = [x.value for x in xs]
        state = [v.value for v in opt.variables]
        # The caller's values, which a stateless step must leave as they are.
        given = [keras.ops.convert_to_numpy(a).copy() for a in [*train, *state]]
        first = [*train, *state]
    for step in range(case["steps"]):
        grads = gradients(data, step, count)
        if mode == "apply":
            opt.apply(grads, xs)
        elif mode == "tf_function":
            step_fn(grads)
        else:
            train, state = jitted(state, grads, train)
        stateless = mode in ("jit_stateless", "stateless")
        values = train if stateless else xs
        for i in range(count):
            record[f"x_{step}_{i}"] = keras.ops.convert_to_numpy(values[i])
    if stateless:
        record["inputs_kept"] = np.array(all(
            keras.ops.convert_to_numpy(a).tobytes() == b.tobytes()
            for a, b in zip(first, given, strict=True)))
        for variable, value in zip(opt.variables, state, strict=True):
            variable.assign(value)
    record_state(record, opt, count)
    return record


def model_and_data(case: dict) -> tuple:
    keras.utils.set_random_seed(case["seed"])
    dtype = case.get("dtype", "float32")
    model = keras.Sequential([
        keras.Input(shape=(6,), dtype=dtype),
        keras.layers.Dense(8, activation="tanh", dtype=dtype),
        keras.layers.Dense(2, dtype=dtype),
    ])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((32, 6)).astype(dtype)
    y = rng.standard_normal((32, 2)).astype(dtype)
    return model, x, y


def fit_resume(case: dict, out: str) -> dict:
    fit_args = {"batch_size": 8, "shuffle": False, "verbose": 0}
    model, x, y = model_and_data(case)
    model.compile(optimizer=optimizer_for(case), loss="mse")
    model.fit(x, y, epochs=case["epochs"], **fit_args)
    record = {f"whole_{i}": keras.ops.convert_to_numpy(w)
              for i, w in enumerate(model.weights)}
    for i, value in enumerate(model.optimizer.variables):
        record[f"whole_opt_{i}"] = keras.ops.convert_to_numpy(value)

    model, x, y = model_and_data(case)
    model.compile(optimizer=optimizer_for(case), loss="mse")
    model.fit(x, y, epochs=case["first_epochs"], **fit_args)
    path = os.path.join(out, f"{case['name']}.keras")
    model.save(path)
    del model
    loaded = keras.saving.load_model(path)
    record["loaded_class"] = np.array(type(loaded.optimizer).__module__ + "."
                                      + type(loaded.optimizer).__qualname__)
    record["loaded_config"] = np.array(json.dumps(loaded.optimizer.get_config()))
    loaded.fit(x, y, epochs=case["epochs"] - case["first_epochs"], **fit_args)
    for i, w in enumerate(loaded.weights):
        record[f"resumed_{i}"] = keras.ops.convert_to_numpy(w)
    for i, value in enumerate(loaded.optimizer.variables):
        record[f"resumed_opt_{i}"] = keras.ops.convert_to_numpy(value)
    return record


def fit_switch(case: dict) -> dict:
    """`fit` with Keras 3's Nadam, switch (`from_keras_nadam`, recompile), `fit` on."""
    fit_args = {"batch_size": 8, "shuffle": False, "verbose": 0}
    model, x, y = model_and_data(case)
    model.compile(optimizer=keras.optimizers.Nadam(learning_rate=0.01), loss="mse")
    model.fit(x, y, epochs=1, **fit_args)
    theirs = model.optimizer
    numpy = keras.ops.convert_to_numpy
    record = {f"keras_m_{i}": numpy(m) for i, m in enumerate(theirs._momentums)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = Nadam.from_keras_nadam(theirs)
    record.update({f"ours_m_{i}": numpy(m) for i, m in enumerate(ours._momentums)})
    model.compile(optimizer=ours, loss="mse")
    model.fit(x, y, epochs=1, **fit_args)
    record["iterations"] = numpy(model.optimizer.iterations)
    record["same_optimizer"] = np.array(model.optimizer is ours)
    record["moved"] = np.array(any(
        not np.array_equal(numpy(m), record[f"ours_m_{i}"])
        for i, m in enumerate(ours._momentums)))
    return record


def switch(case: dict, data: dict) -> dict:
    count = case["variables"]
    xs = [keras.Variable(data[f"x_{i}"]) for i in range(count)]
    theirs = keras.optimizers.Nadam(**case["hypers"])
    record: dict = {}
    for step in range(case["keras_steps"]):
        theirs.apply(gradients(data, step, count), xs)
    numpy = keras.ops.convert_to_numpy
    for i in range(count):
        record[f"switch_x_{i}"] = numpy(xs[i])
        record[f"switch_m_{i}"] = numpy(theirs._momentums[i])
        record[f"switch_v_{i}"] = numpy(theirs._velocities[i])
    record["switch_iterations"] = numpy(theirs.iterations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = Nadam.from_keras_nadam(theirs)
    record["warnings"] = np.array(json.dumps([str(w.message) for w in caught]))
    record_state({}, ours, count)
    for i in range(count):
        record[f"after_m_{i}"] = numpy(ours._momentums[i])
        record[f"after_v_{i}"] = numpy(ours._velocities[i])
    record["after_cache"] = numpy(ours.momentum_cache)
    record["after_iterations"] = numpy(ours.iterations)
    for step in range(case["keras_steps"], case["steps"]):
        ours.apply(gradients(data, step, count), xs)
        for i in range(count):
            record[f"x_{step}_{i}"] = numpy(xs[i])
    record_state(record, ours, count)
    return record


def main(in_dir: str, out: str) -> None:
    with open(os.path.join(in_dir, "cases.json")) as file:
        cases = json.load(file)
    for case in cases:
        path = os.path.join(in_dir, f"{case['name']}.npz")
        data = dict(np.load(path)) if os.path.exists(path) else {}
        if case["mode"] == "fit_resume":
            record = fit_resume(case, out)
        elif case["mode"] == "fit_switch":
            record = fit_switch(case)
        elif case["mode"] == "switch":
            record = switch(case, data)
        else:
            record = run_steps(case, data)
        record["backend"] = np.array(BACKEND)
        np.savez(os.path.join(out, f"{case['name']}.npz"), **record)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
