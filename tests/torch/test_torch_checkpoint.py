"""Checkpoint files on `nadam.torch.Nadam` and on `nadam.Nadam` over torch tensors.

Round trips bit for bit, a state-less torch optimizer builds its state from the file, and a
load that fails (other shapes, other rounds, a damaged file, a missing file) changes nothing:
not the state, not the settings, and no state is created. The file format, its checks and
the NumPy face: test_checkpoint.py; fresh processes and cross-face runs:
test_checkpoint_resume.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import Parameter

import nadam
from nadam import checkpoint
from nadam.torch import Nadam


def _params(shapes=((4, 3), (3,)), dtype=torch.float32, seed=0) -> list[Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]


def _step(opt, params, number: int) -> None:
    generator = torch.Generator().manual_seed(100 + number)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
    opt.step()


def _trained(steps=4, **settings) -> tuple[Nadam, list[Parameter]]:
    params = _params()
    opt = Nadam(params, lr=0.01, **settings)
    for number in range(steps):
        _step(opt, params, number)
    return opt, params


def _state(opt) -> list[bytes]:
    return [w.dtype.str.encode() + w.tobytes() for w in opt.get_weights()]


def _copies(params) -> list[Parameter]:
    return [Parameter(p.detach().clone()) for p in params]


def test_a_state_less_optimizer_builds_its_state_from_the_file_and_continues(tmp_path):
    opt, params = _trained(decay=0.05)
    opt.save_state(tmp_path / "ckpt")
    twin_params = _copies(params)
    twin = Nadam(twin_params, lr=0.01, decay=0.05)
    twin.load_state(tmp_path / "ckpt")
    assert _state(twin) == _state(opt)
    for number in range(4, 10):
        _step(opt, params, number)
        _step(twin, twin_params, number)
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params, strict=True))
    assert _state(twin) == _state(opt)


def test_hyperparameters_are_recorded_but_not_loaded(tmp_path):
    opt, _ = _trained(clipnorm=1.0)
    opt.save_state(tmp_path / "ckpt")
    config = checkpoint.read(tmp_path / "ckpt").config
    assert config["param_groups"][0]["lr"] == 0.01 and config["param_groups"][0]["clipnorm"] == 1.0
    assert config["param_groups"][0]["betas"] == [0.9, 0.999]
    twin = Nadam(_params(), lr=0.5)
    twin.load_state(tmp_path / "ckpt")
    assert twin.param_groups[0]["lr"] == 0.5 and twin.param_groups[0]["clipnorm"] is None


def test_parameter_names_are_recorded_when_torch_has_them(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = Nadam(model.named_parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.save_state(tmp_path / "ckpt")
    ckpt = checkpoint.read(tmp_path / "ckpt")
    assert [(v.name, v.shape, v.backend) for v in ckpt.layout.variables] == [
        ("weight", (2, 3), "torch"), ("bias", (2,), "torch")]
    assert ckpt.face == "torch.optim"


def test_the_keras_face_on_tensors_round_trips(tmp_path):
    params = _params(dtype=torch.float64)
    opt = nadam.Nadam(learning_rate=0.01)
    for number in range(3):
        generator = torch.Generator().manual_seed(number)
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        opt.apply_gradients(zip(grads, params, strict=True))
    opt.save_state(tmp_path / "ckpt")
    twin = nadam.Nadam(learning_rate=0.01)
    twin.build(_copies(params))
    twin.load_state(tmp_path / "ckpt")
    assert _state(twin) == _state(opt)
    variables = checkpoint.read(tmp_path / "ckpt").layout.variables
    assert [(v.dtype, v.backend) for v in variables] == [("float64", "torch")] * 2


def test_a_float16_state_round_trips(tmp_path):
    params = _params(dtype=torch.float16)
    opt = Nadam(params, lr=0.01)
    _step(opt, params, 0)
    opt.save_state(tmp_path / "ckpt")
    twin = Nadam(_copies(params), lr=0.01)
    twin.load_state(tmp_path / "ckpt")
    assert _state(twin) == _state(opt)
    assert twin.state["nadam"]["momentum_cache"].dtype == torch.float16


def _fails_unchanged(opt, path, error, match) -> None:
    before = _state(opt)
    keys = list(opt.state)
    with pytest.raises(error, match=match):
        opt.load_state(path)
    assert _state(opt) == before and list(opt.state) == keys


@pytest.mark.parametrize("shapes, dtype, match", [
    (((3, 4), (3,)), torch.float32, r"its variable 0 is \(4, 3\) float32, but this "
     r"nadam.torch.Nadam \(once built\)'s variable 0 is \(3, 4\) float32"),
    (((4, 3), (3,)), torch.float64, r"its variable 0 is \(4, 3\) float32, but .* float64"),
    (((4, 3),), torch.float32, r"holds 6 weights for 2 variable\(s\).* has 4 weights for 1"),
])
def test_a_checkpoint_of_other_parameters_is_refused_and_builds_nothing(tmp_path, shapes, dtype,
                                                                        match):
    opt, _ = _trained()
    opt.save_state(tmp_path / "ckpt")
    other = Nadam(_params(shapes, dtype), lr=0.01)
    _fails_unchanged(other, tmp_path / "ckpt", ValueError, match)
    assert other.get_weights() == [] and other.momentum_cache is None
    assert not any(isinstance(key, torch.Tensor) for key in other.state)  # no slots made


def test_a_checkpoint_of_other_parameters_is_refused_by_a_built_optimizer(tmp_path):
    opt, _ = _trained()
    opt.save_state(tmp_path / "ckpt")
    other, _ = _trained(steps=2)
    other_params = [p for g in other.param_groups for p in g["params"]]
    other_params[1].data = torch.zeros(5)  # a parameter of another shape, same state layout
    other.state[other_params[1]]["m"] = torch.zeros(5)
    other.state[other_params[1]]["v"] = torch.zeros(5)
    _fails_unchanged(other, tmp_path / "ckpt", ValueError,
                     r"its variable 1 is \(3,\) float32, but this nadam.torch.Nadam's variable 1 "
                     r"is \(5,\) float32")


def test_slots_made_in_other_rounds_are_refused(tmp_path):
    # The source made the second parameter's slots one step later: Keras's order is then
    # m0 v0 m1 v1, which a state built in one round (m0 m1 v0 v1) is not.
    params = _params()
    opt = Nadam(params, lr=0.01)
    params[0].grad = torch.ones(4, 3)
    opt.step()
    _step(opt, params, 1)
    opt.save_state(tmp_path / "ckpt")
    assert checkpoint.read(tmp_path / "ckpt").layout.names[2:] == ("m/0", "v/0", "m/1", "v/1")
    _fails_unchanged(Nadam(_params(), lr=0.01), tmp_path / "ckpt", ValueError,
                     r"its weight 3 is 'v/0' but .* weight 3 is 'm/1'")


def test_a_damaged_file_changes_nothing(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "ckpt"
    opt.save_state(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))
    target, _ = _trained(steps=1)
    _fails_unchanged(target, path, ValueError, "checksum mismatch")
    path.write_bytes(bytes(data[: len(data) // 2]))
    _fails_unchanged(target, path, ValueError, "truncated")
    _fails_unchanged(target, tmp_path / "missing", FileNotFoundError, "missing")


def test_an_empty_checkpoint_loads_only_the_counter(tmp_path):
    Nadam(_params(), lr=0.01).save_state(tmp_path / "ckpt")
    state = checkpoint.read(tmp_path / "ckpt")
    assert state.layout.names == () and state.iterations == 0
    twin = Nadam(_params(), lr=0.01)
    twin.load_state(tmp_path / "ckpt")
    assert twin.get_weights() == [] and twin.iterations == 0
    built, _ = _trained(steps=1)
    _fails_unchanged(built, tmp_path / "ckpt", ValueError, "holds 0 weights")


def test_a_numpy_checkpoint_loads_into_torch_parameters(tmp_path):
    arrays = [np.asarray(p.detach()) for p in _params()]
    opt = nadam.Nadam(learning_rate=0.01)
    variables = [a.copy() for a in arrays]
    opt.apply_gradients([(np.ones_like(a), v) for a, v in zip(arrays, variables, strict=True)])
    opt.save_state(tmp_path / "ckpt")
    twin = Nadam([Parameter(torch.from_numpy(v.copy())) for v in variables], lr=0.01)
    twin.load_state(tmp_path / "ckpt")
    assert _state(twin) == _state(opt)
