"""Moving a Keras 2 run to PyTorch with `nadam.interop`: the whole move, as a user does it.

A tf_keras MLP (Dense 8->16 tanh, Dense 16->3) trained 4 steps (`fit`) with the legacy Nadam and
saved with `model.save("m.h5")`; the same model in torch (`nn.Linear` weights are the Keras
kernels transposed), its weights and optimizer state taken from the file with
`load_keras_optimizer(...)`, then 20 more steps on both sides with the same gradients (computed
in TF, fed transposed to torch, so that only the optimizer is compared): weights and optimizer
state bit-identical to tf_keras continuing, with `nadam.torch.Nadam` and with `nadam.Nadam` on
the torch parameters.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402

import nadam  # noqa: E402
import nadam.torch  # noqa: E402
from nadam.interop import load_keras_optimizer  # noqa: E402

STEPS = 20


def _keras_layout(array):
    return array.T if array.ndim == 2 else array


def _bits(array):
    array = np.asarray(array)
    return array.dtype, array.shape, array.tobytes()


def _assert_bit_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert _bits(a) == _bits(b), (index, np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input(shape=(8,)),
        tf_keras.layers.Dense(16, activation="tanh", name="hidden"),
        tf_keras.layers.Dense(3, name="out"),
    ])
    optimizer = tf_keras.optimizers.legacy.Nadam(learning_rate=0.01)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 3)).astype(np.float32)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 steps
    path = tmp_path_factory.mktemp("keras2-torch") / "m.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is a legacy format"
        model.save(path)
    saved_state = optimizer.get_weights()
    grads = []
    for step in range(STEPS):
        batch = slice((step * 16) % 64, (step * 16) % 64 + 16)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[batch]) - y[batch]))
        step_grads = tape.gradient(loss, model.trainable_variables)
        grads.append([g.numpy() for g in step_grads])
        optimizer.apply_gradients(zip(step_grads, model.trainable_variables, strict=True))
    return path, saved_state, grads, model.get_weights(), optimizer.get_weights()


def _torch_model_from(state):
    """The same MLP in torch, its weights read from the Keras file."""
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    with torch.no_grad():
        for param, name in zip(model.parameters(), state.names, strict=True):
            param.copy_(torch.from_numpy(_keras_layout(state.model_weights[name]).copy()))
    return model


def _mapping(state, model):
    return {
        name: (p, "transpose") if p.ndim == 2 else p
        for name, p in zip(state.names, model.parameters(), strict=True)
    }


def _state_in_keras_layout(opt):
    weights = opt.get_weights()
    return weights[:2] + [_keras_layout(w) for w in weights[2:]]


@pytest.mark.parametrize("face", ["torch.optim", "keras-face"])
def test_keras2_to_torch_continues_bit_identically(keras_run, face):
    path, saved_state, grads, final_weights, final_state = keras_run
    state = load_keras_optimizer(path)
    assert state.names == ["hidden/kernel:0", "hidden/bias:0", "out/kernel:0", "out/bias:0"]
    model = _torch_model_from(state)
    params = list(model.parameters())
    if face == "torch.optim":
        opt = nadam.torch.Nadam(params, **state.to_torch_kwargs())
    else:
        opt = nadam.Nadam.from_config(state.to_optimizer_config())
    assert state.restore(opt, _mapping(state, model)) is opt
    _assert_bit_equal(_state_in_keras_layout(opt), saved_state)
    for step_grads in grads:
        torch_grads = [torch.from_numpy(_keras_layout(g).copy()) for g in step_grads]
        if face == "torch.optim":
            for param, grad in zip(params, torch_grads, strict=True):
                param.grad = grad
            opt.step()
        else:
            opt.apply_gradients(zip(torch_grads, params, strict=True))
    _assert_bit_equal([_keras_layout(p.detach().numpy()) for p in params], final_weights)
    _assert_bit_equal(_state_in_keras_layout(opt), final_state)
    if face == "torch.optim":
        assert opt.iterations == 4 + STEPS


def test_torch_optimizer_parameters_must_all_be_mapped(keras_run):
    state = load_keras_optimizer(keras_run[0])
    model = _torch_model_from(state)
    extra = torch.nn.Parameter(torch.zeros(2))
    opt = nadam.torch.Nadam([*model.parameters(), extra], **state.to_torch_kwargs())
    left_out = r"no Keras weight maps to: \[\"param_groups\[0\]\['params'\]\[4\]"
    with pytest.raises(ValueError, match=left_out):
        state.restore(opt, _mapping(state, model))
    assert opt.get_weights() == []


def test_torch_variables_outside_the_optimizer_are_refused(keras_run):
    state = load_keras_optimizer(keras_run[0])
    model = _torch_model_from(state)
    opt = nadam.torch.Nadam(list(model.parameters())[:2], **state.to_torch_kwargs())
    with pytest.raises(ValueError, match="not parameters of this optimizer"):
        state.restore(opt, _mapping(state, model))
    assert opt.get_weights() == []


def test_torch_optimizer_with_other_state_is_refused(keras_run):
    state = load_keras_optimizer(keras_run[0])
    model = _torch_model_from(state)
    params = list(model.parameters())
    opt = nadam.torch.Nadam(params, **state.to_torch_kwargs())
    params[0].grad = torch.ones_like(params[0])
    opt.step()  # state for one parameter only
    before = opt.get_weights()
    with pytest.raises(ValueError, match="state for 1 of its 4 parameters"):
        state.restore(opt, _mapping(state, model))
    _assert_bit_equal(opt.get_weights(), before)


def test_torch_shape_mismatch_changes_nothing(keras_run):
    state = load_keras_optimizer(keras_run[0])
    model = _torch_model_from(state)
    opt = nadam.torch.Nadam(model.parameters(), **state.to_torch_kwargs())
    mapping = dict(zip(state.names, model.parameters(), strict=True))  # kernels not transposed
    with pytest.raises(ValueError, match=r"'hidden/kernel:0' has shape \(8, 16\).*'transpose'"):
        state.restore(opt, mapping)
    assert opt.get_weights() == []


def test_torch_optimizer_with_state_for_the_same_parameters_is_overwritten(keras_run):
    """State made in two slot-creating steps ("rounds"): each slot still gets its own array."""
    path, saved_state = keras_run[:2]
    state = load_keras_optimizer(path)
    model = _torch_model_from(state)
    params = list(model.parameters())
    opt = nadam.torch.Nadam(params, **state.to_torch_kwargs())
    for active in (params[2:], params):
        for param in active:
            param.grad = torch.ones_like(param)
        opt.step()
    state.restore(opt, _mapping(state, model))
    assert opt.iterations == 4
    assert opt.momentum_cache == float(saved_state[1])
    for index, param in enumerate(params):
        _assert_bit_equal(
            [_keras_layout(opt.state[param][slot].numpy()) for slot in ("m", "v")],
            [saved_state[2 + index], saved_state[6 + index]],
        )
