"""`nadam.optimizers.serialize / deserialize / get`, as `keras.optimizers` (SPEC section 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nadam import Nadam, Optimizer, Variable, optimizers
from nadam.schedules import ExponentialDecay


class PlainSGD(Optimizer):
    """A user optimizer, known to `deserialize` only through custom_objects."""

    def __init__(self, learning_rate=0.1, name="PlainSGD", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)

    def _resource_apply_dense(self, grad, var, apply_state):
        var.assign_sub(apply_state[("cpu", var.dtype)]["lr_t"] * grad)

    def get_config(self):
        return {**super().get_config(),
                "learning_rate": self._serialize_hyperparameter("learning_rate")}


def test_serialize():
    assert optimizers.serialize(Nadam(learning_rate=0.01, clipvalue=1.0)) == {
        "class_name": "Nadam",
        "config": {"name": "Nadam", "learning_rate": 0.01, "decay": 0.0, "beta_1": 0.9,
                   "beta_2": 0.999, "epsilon": 1e-07, "schedule_decay": 0.004,
                   "clipvalue": 1.0},
    }
    with pytest.raises(TypeError, match="dict"):
        optimizers.serialize({"class_name": "Nadam"})


def test_serialize_deserialize_round_trip_through_json():
    opt = Nadam(learning_rate=ExponentialDecay(0.1, 100, 0.5), beta_1=0.85, decay=0.01,
                schedule_decay=0.008, name="n2", global_clipnorm=3.0)
    blob = json.dumps(optimizers.serialize(opt))
    restored = optimizers.deserialize(json.loads(blob))
    assert type(restored) is Nadam
    assert restored.get_config() == opt.get_config()
    assert isinstance(restored.learning_rate, ExponentialDecay)


@pytest.mark.parametrize("name", ["nadam", "Nadam", "NADAM"])
def test_get_by_name(name):
    opt = optimizers.get(name)
    assert type(opt) is Nadam
    assert opt.get_config() == Nadam().get_config()


def test_get_returns_instances_and_reads_dicts():
    opt = Nadam()
    assert optimizers.get(opt) is opt
    from_dict = optimizers.get({"class_name": "Nadam", "config": {"learning_rate": 0.3}})
    assert type(from_dict) is Nadam and from_dict.learning_rate == 0.3


def test_deserialize_keras_style_dict():
    # What tf_keras.optimizers.legacy.serialize writes: `module`, `registered_name`, and a
    # Keras 2 config whose `decay` is the momentum schedule constant.
    keras_dict = {
        "module": "keras.optimizers.legacy",
        "class_name": "Nadam",
        "config": {"name": "Nadam", "learning_rate": 0.002, "decay": 0.004, "beta_1": 0.9,
                   "beta_2": 0.999, "epsilon": 1e-07, "is_legacy_optimizer": True},
        "registered_name": None,
    }
    opt = optimizers.deserialize(keras_dict)
    assert type(opt) is Nadam
    assert opt.learning_rate == 0.002 and opt.schedule_decay == 0.004 and opt.decay == 0.0
    assert optimizers.get(keras_dict).get_config() == opt.get_config()


def test_deserialize_with_custom_objects():
    opt = PlainSGD(learning_rate=0.5, clipnorm=2.0)
    config = optimizers.serialize(opt)
    assert config == {"class_name": "PlainSGD",
                      "config": {"name": "PlainSGD", "clipnorm": 2.0, "learning_rate": 0.5}}
    with pytest.raises(ValueError, match="PlainSGD"):
        optimizers.deserialize(config)
    restored = optimizers.deserialize(config, custom_objects={"PlainSGD": PlainSGD})
    assert type(restored) is PlainSGD and restored.get_config() == opt.get_config()
    w = Variable(np.array([1.0, 2.0]))
    restored.apply_gradients([(np.array([1.0, -1.0]), w)])
    np.testing.assert_allclose(w.numpy(), [0.5, 2.5], rtol=1e-7)


def test_custom_objects_carry_a_custom_schedule():
    class Halving(ExponentialDecay):
        pass

    opt = Nadam(learning_rate=Halving(0.1, 1, 0.5))
    config = optimizers.serialize(opt)
    assert config["config"]["learning_rate"]["class_name"] == "Halving"
    restored = optimizers.deserialize(config, custom_objects={"Halving": Halving})
    assert type(restored.learning_rate) is Halving


def test_deserialize_rejects_malformed_input():
    with pytest.raises(TypeError, match="list"):
        optimizers.deserialize(["Nadam"])
    with pytest.raises(ValueError, match="class_name"):
        optimizers.deserialize({"config": {}})
