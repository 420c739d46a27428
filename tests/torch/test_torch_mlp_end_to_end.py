"""End to end: one small MLP trained 200 steps by tf_keras + legacy Nadam and by PyTorch + ours.

Same initial weights, same batches, same loss. Gradients now come from two different autodiff
engines, so the runs are not bit-identical: float64 must agree to 1e-9 relative (measured:
about 2e-15 on the loss, 1e-12 element-wise on the weights) and float32 to 1e-5 (measured:
about 8e-7). Our two faces — `nadam.Nadam.minimize` and `nadam.torch.Nadam.step()` — must agree
with each other bit for bit.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402
from torch_helpers import assert_all_bit_equal  # noqa: E402

import nadam  # noqa: E402
import nadam.torch  # noqa: E402

STEPS, BATCH, LR = 200, 16, 0.01
SIZES = [8, 16, 16, 3]
TOLERANCE = {np.float64: 1e-9, np.float32: 1e-5}


def _problem(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, SIZES[0])).astype(dtype)
    y = (np.tanh(x @ rng.standard_normal((SIZES[0], SIZES[-1])))
         + 0.1 * rng.standard_normal((128, SIZES[-1]))).astype(dtype)
    init = []  # Keras layout: kernel (in, out), bias (out,)
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        init.append((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(dtype))
        init.append((0.1 * rng.standard_normal(fan_out)).astype(dtype))
    starts = [(step * BATCH) % len(x) for step in range(STEPS)]
    batches = [(x[s:s + BATCH], y[s:s + BATCH]) for s in starts]
    return init, batches


def _keras_run(dtype, init, batches):
    name = np.dtype(dtype).name
    model = tf_keras.Sequential(
        [tf_keras.Input(shape=(SIZES[0],), dtype=name)]  # a float32 Input would round inputs
        + [tf_keras.layers.Dense(n, "tanh", dtype=name) for n in SIZES[1:-1]]
        + [tf_keras.layers.Dense(SIZES[-1], dtype=name)]
    )
    model.set_weights(init)
    opt = tf_keras.optimizers.legacy.Nadam(learning_rate=LR)
    losses = []
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        losses.append(float(loss))
    return np.array(losses), model.get_weights(), opt.get_weights()


def _torch_model(dtype, init):
    layers = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1]).to(torch.from_numpy(init[0]).dtype)
    with torch.no_grad():
        for param, array in zip(model.parameters(), init, strict=True):
            param.copy_(torch.from_numpy(array.T.copy() if array.ndim == 2 else array))
    return model


def _keras_layout(arrays):
    return [a.T if a.ndim == 2 else a for a in arrays]


def _torch_run(face, dtype, init, batches):
    model = _torch_model(dtype, init)
    params = list(model.parameters())
    losses = []

    def loss_of(x, y):
        loss = torch.mean((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2)
        losses.append(float(loss.detach()))
        return loss

    if face == "keras-face":
        opt = nadam.Nadam(learning_rate=LR)
        for x, y in batches:
            opt.minimize(lambda x=x, y=y: loss_of(x, y), params)
    else:
        opt = nadam.torch.Nadam(params, lr=LR)
        for x, y in batches:
            opt.zero_grad()
            loss_of(x, y).backward()
            opt.step()
    weights = _keras_layout([p.detach().numpy().copy() for p in params])
    state = opt.get_weights()
    state = state[:2] + _keras_layout(state[2:])
    return np.array(losses), weights, state


def _relative(ours, theirs):
    """Max over arrays of max|ours - theirs| / max|theirs| (norm-wise relative difference)."""
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ours, theirs, strict=True)
    )


@pytest.fixture(scope="module", params=[np.float64, np.float32], ids=["float64", "float32"])
def runs(request):
    dtype = request.param
    init, batches = _problem(dtype)
    return dtype, _keras_run(dtype, init, batches), {
        face: _torch_run(face, dtype, init, batches) for face in ("keras-face", "torch-face")
    }


def test_both_faces_train_identically(runs):
    _, _, ours = runs
    (losses_a, weights_a, state_a), (losses_b, weights_b, state_b) = ours.values()
    assert_all_bit_equal([losses_a, *weights_a, *state_a], [losses_b, *weights_b, *state_b])


def test_loss_curve_final_weights_and_state_agree_with_keras(runs):
    dtype, (k_losses, k_weights, k_state), ours = runs
    losses, weights, state = ours["torch-face"]
    tolerance = TOLERANCE[dtype]
    assert k_losses[-1] < 0.05 * k_losses[0]  # it trained
    loss_relative = float(np.max(np.abs(losses - k_losses) / k_losses))
    assert loss_relative <= tolerance, loss_relative
    assert _relative(weights, k_weights) <= tolerance
    if dtype == np.float64:  # element-wise too, even for the smallest weights
        for ours_w, theirs_w in zip(weights, k_weights, strict=True):
            np.testing.assert_allclose(ours_w, theirs_w, rtol=tolerance, atol=0)
    # Optimizer state in Keras's layout: the schedule is exact, the slots agree as the weights.
    assert [(a.dtype, a.shape) for a in state] == [(a.dtype, a.shape) for a in k_state]
    assert state[0] == k_state[0] == STEPS
    assert state[1].tobytes() == k_state[1].tobytes()
    assert _relative(state[2:], k_state[2:]) <= 100 * tolerance
