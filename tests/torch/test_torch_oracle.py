"""Both torch faces against the live Keras 2 oracle (`tf_keras.optimizers.legacy.Nadam`).

Same initial values, same gradients: parameters, m, v, momentum_cache and iterations must equal
Keras's bit for bit, float32 and float64, dense and sparse (an embedding looked up with
repeated ids: TensorFlow's `IndexedSlices` against torch's sparse COO gradient), on both kernel
paths.
"""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import torch  # noqa: E402
from torch_helpers import (  # noqa: E402
    DTYPES,
    PATHS,
    assert_all_bit_equal,
    assert_bit_equal,
    on_path,
    parameter,
    random_array,
    tensor,
)

from nadam import Nadam  # noqa: E402
from nadam.torch import Nadam as TorchNadam  # noqa: E402

KerasNadam = tf_keras.optimizers.legacy.Nadam
FACES = ("keras-face", "torch-face")
HYPERS = [
    {},
    {"learning_rate": 0.05, "beta_1": 0.7, "beta_2": 0.95, "epsilon": 1e-4},
    {"learning_rate": 0.003, "epsilon": 0.0, "clipvalue": 0.5},
]


class _Ours:
    """One of our two faces over torch parameters, fed (gradient, parameter) pairs."""

    def __init__(self, face: str, params: list[torch.Tensor], **hypers) -> None:
        self.face = face
        if face == "keras-face":
            self.opt = Nadam(**hypers)
        else:
            kwargs = {
                "lr": hypers.get("learning_rate", 0.001),
                "betas": (hypers.get("beta_1", 0.9), hypers.get("beta_2", 0.999)),
                "eps": hypers.get("epsilon", 1e-7),
                "clipvalue": hypers.get("clipvalue"),
            }
            self.opt = TorchNadam(params, **kwargs)

    def step(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.face == "keras-face":
            self.opt.apply_gradients(pairs)
            return
        for grad, param in pairs:
            param.grad = grad
        self.opt.step()

    def slot(self, param: torch.Tensor, name: str) -> torch.Tensor:
        if self.face == "keras-face":
            return self.opt.get_slot(param, name)
        return self.opt.state[param][name]


def _check_against_keras(ours: _Ours, params, keras: KerasNadam, tf_vars) -> None:
    assert_all_bit_equal(params, [v.numpy() for v in tf_vars], "parameters")
    for param, tf_var in zip(params, tf_vars, strict=True):
        for slot in ("m", "v"):
            assert_bit_equal(ours.slot(param, slot), keras.get_slot(tf_var, slot).numpy(), slot)
    assert_all_bit_equal(ours.opt.get_weights(), keras.get_weights(), "get_weights()")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hypers", HYPERS, ids=["defaults", "custom", "clipvalue-eps0"])
def test_dense_trajectories_equal_keras(dtype, path, face, hypers):
    rng = np.random.default_rng(zlib.crc32(f"{dtype} {path} {face} {hypers}".encode()))
    shapes = [(), (3,), (2, 3, 2), (17, 5)]
    arrays = [random_array(rng, s, dtype) for s in shapes]
    params = [parameter(a) for a in arrays]
    tf_vars = [tf.Variable(a) for a in arrays]
    ours, keras = _Ours(face, params, **hypers), KerasNadam(**hypers)
    for _ in range(60):
        grads = [random_array(rng, s, dtype) for s in shapes]
        with on_path(path):
            ours.step([(tensor(g), p) for g, p in zip(grads, params, strict=True)])
        keras.apply_gradients([(tf.constant(g), v) for g, v in zip(grads, tf_vars, strict=True)])
    _check_against_keras(ours, params, keras, tf_vars)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_sparse_gradients_equal_keras(dtype, path, face):
    # loss = sum(lookup(table, ids) * w) + sum(dense * c): the gradient of the looked-up rows is
    # w exactly in both frameworks, with ids repeating, so the sparse path itself is compared.
    rng = np.random.default_rng(3)
    table, dense = random_array(rng, (9, 4), dtype), random_array(rng, (4,), dtype)
    params = [parameter(table), parameter(dense)]
    tf_vars = [tf.Variable(table), tf.Variable(dense)]
    ours, keras = _Ours(face, params), KerasNadam()
    for _ in range(30):
        ids = rng.integers(0, 9, size=(3, 4))
        ids[0, :2] = ids[1, 3]  # one row looked up three times
        w = random_array(rng, (3, 4, 4), dtype)
        c = random_array(rng, (4,), dtype)

        lookup = torch.nn.functional.embedding(torch.from_numpy(ids), params[0], sparse=True)
        loss = (lookup * tensor(w)).sum() + (params[1] * tensor(c)).sum()
        grads = torch.autograd.grad(loss, params)
        assert grads[0].layout == torch.sparse_coo
        with on_path(path):
            ours.step(list(zip(grads, params, strict=True)))

        with tf.GradientTape() as tape:
            tf_loss = tf.reduce_sum(tf.gather(tf_vars[0], ids) * w) + tf.reduce_sum(
                tf_vars[1] * c
            )
        tf_grads = tape.gradient(tf_loss, tf_vars)
        assert isinstance(tf_grads[0], tf.IndexedSlices)
        keras.apply_gradients(zip(tf_grads, tf_vars, strict=True))
    _check_against_keras(ours, params, keras, tf_vars)
    assert ours.opt.get_weights()[0] == 30
