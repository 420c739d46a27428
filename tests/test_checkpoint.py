"""Our checkpoint files on the Keras face (`Nadam.save_state` / `load_state`, `nadam.checkpoint`).

What a file holds and how it maps onto an optimizer, atomic writes, and every way a load can
fail: each failure is a clear ValueError (a missing file FileNotFoundError) and leaves the
optimizer exactly as it was. Resuming in fresh processes, across faces and under kill -9:
test_checkpoint_resume.py and test_checkpoint_kill.py; the torch.optim face:
torch/test_torch_checkpoint.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import nadam
from nadam import Nadam, Variable, checkpoint

X0 = np.array([1.0, -2.0, 3.0], np.float32)
Y0 = np.arange(8, dtype=np.float64).reshape(4, 2)


def _gradients(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(step)
    return [rng.standard_normal(3).astype(np.float32), rng.standard_normal((4, 2))]


def _trained(steps: int = 3, **hypers) -> tuple[Nadam, list]:
    x, y = Variable(X0.copy(), name="x"), Y0.copy()
    opt = Nadam(learning_rate=0.01, **hypers)
    for step in range(steps):
        opt.apply_gradients(zip(_gradients(step), [x, y], strict=True))
    return opt, [x, y]


def _built(shapes=((3,), (4, 2)), dtypes=(np.float32, np.float64)) -> tuple[Nadam, list]:
    variables = [Variable(np.zeros(s, d), name=f"v{i}")
                 for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))]
    opt = Nadam(learning_rate=0.01)
    opt.build(variables)
    return opt, variables


def _snapshot(opt: Nadam) -> list[bytes]:
    return [w.dtype.str.encode() + w.tobytes() for w in opt.get_weights()]


def _fails_unchanged(opt: Nadam, path, error: type[Exception], match: str) -> None:
    before = _snapshot(opt)
    with pytest.raises(error, match=match):
        opt.load_state(path)
    assert _snapshot(opt) == before


@pytest.fixture
def saved(tmp_path) -> tuple[Path, Nadam, list]:
    opt, variables = _trained()
    path = tmp_path / "opt.safetensors"
    opt.save_state(path)
    return path, opt, variables


def _header(path) -> tuple[dict, dict]:
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header, json.loads(header["__metadata__"]["nadam.state"])


# --- what a checkpoint holds --------------------------------------------------------------------
def test_the_file_is_safetensors_with_the_state_in_json(saved):
    path, opt, _ = saved
    header, state = _header(path)
    assert set(header) == {"__metadata__", "m/0", "m/1", "v/0", "v/1"}
    assert header["m/1"] == {**header["m/1"], "dtype": "F64", "shape": [4, 2]}
    assert state["format"] == "nadam.checkpoint" and state["version"] == 1
    assert state["face"] == "keras" and state["optimizer"] == "nadam.nadam.Nadam"
    assert state["config"] == opt.get_config()
    assert state["iterations"] == 3
    weights = opt.get_weights()
    assert state["momentum_cache"] == {"value": float(weights[1]), "dtype": "float32"}
    assert state["weights"] == ["iterations", "momentum_cache", "m/0", "m/1", "v/0", "v/1"]
    assert state["slot_names"] == ["m", "v"]
    assert state["variables"] == [
        {"name": "x", "shape": [3], "dtype": "float32", "backend": "numpy"},
        {"name": None, "shape": [4, 2], "dtype": "float64", "backend": "numpy"},
    ]
    assert len(header["__metadata__"]["nadam.sha256"]) == 64
    assert b"pickle" not in path.read_bytes() and path.read_bytes()[8 + 1 : 8 + 2] == b"\""


def test_read_gives_the_state_as_get_weights_did(saved):
    path, opt, _ = saved
    ckpt = checkpoint.read(path)
    assert ckpt.iterations == 3 and ckpt.momentum_cache.dtype == np.float32
    for got, want in zip(ckpt.weights(), opt.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want, strict=True)


def test_load_restores_every_bit_and_the_run_continues_identically(saved):
    path, reference, (x, y) = saved
    fresh, (x2, y2) = _built()
    x2.assign(x.numpy())
    y2.assign(y)
    fresh.load_state(path)
    for got, want in zip(fresh.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want, strict=True)
    for step in range(3, 8):
        reference.apply_gradients(zip(_gradients(step), [x, y], strict=True))
        fresh.apply_gradients(zip(_gradients(step), [x2, y2], strict=True))
    assert x2.numpy().tobytes() == x.numpy().tobytes()
    assert y2.numpy().tobytes() == y.tobytes()
    assert _snapshot(fresh) == _snapshot(reference)


def test_the_config_rebuilds_the_optimizer(tmp_path):
    rate = nadam.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    x = Variable(X0.copy())
    opt = Nadam(learning_rate=rate, schedule_decay=0.01, clipvalue=1.0)
    opt.apply_gradients([(_gradients(0)[0], x)])
    opt.save_state(tmp_path / "a")
    config = checkpoint.read(tmp_path / "a").config
    assert Nadam.from_config(config).get_config() == opt.get_config()


def test_a_checkpoint_of_an_optimizer_without_state_loads_into_one(tmp_path):
    opt = Nadam()
    opt.iterations = 4
    opt.save_state(tmp_path / "a")
    other = Nadam()
    other.load_state(tmp_path / "a")
    assert other.weights == [] and int(other.iterations.value) == 4


def test_saving_twice_replaces_the_file_and_leaves_no_temporary_file(saved):
    path, opt, (x, y) = saved
    opt.apply_gradients(zip(_gradients(9), [x, y], strict=True))
    opt.save_state(path)
    assert checkpoint.read(path).iterations == 4
    assert os.listdir(path.parent) == [path.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_a_new_checkpoint_is_readable_by_others_like_any_file(saved):
    path, opt, _ = saved
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    opt.save_state(path)
    assert path.stat().st_mode & 0o777 == 0o600  # the replaced file's mode is kept


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(saved, monkeypatch):
    path, opt, (x, y) = saved
    before = path.read_bytes()
    opt.apply_gradients(zip(_gradients(9), [x, y], strict=True))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        opt.save_state(path)
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


def test_nadam_imports_safetensors_only_when_a_checkpoint_is_used():
    import subprocess

    code = (
        "import sys, numpy as np, nadam\n"
        "assert 'safetensors' not in sys.modules\n"
        "x = nadam.Variable(np.ones(2, np.float32)); o = nadam.Nadam(); o.build([x])\n"
        "assert 'safetensors' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- loading checks everything before writing anything -------------------------------------------
def test_a_missing_file_is_file_not_found(tmp_path):
    opt, _ = _built()
    _fails_unchanged(opt, tmp_path / "nothing.safetensors", FileNotFoundError, "nothing")


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1])
def test_a_truncated_file_is_refused(saved, keep):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, "truncated|corrupted")


def test_a_flipped_byte_in_a_tensor_is_a_checksum_mismatch(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, "checksum mismatch")


def test_an_edited_state_is_a_checksum_mismatch(saved):
    path, _, _ = saved
    data = path.read_bytes()
    edited = data.replace(b'\\"iterations\\": 3', b'\\"iterations\\": 9')
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, "checksum mismatch")


def _rewritten(path, tensors=None, state_edit=None, digest=None) -> None:
    """Rewrite a checkpoint with other tensors or state, with a correct checksum unless
    `digest` is given: what a buggy writer (not a damaged disk) could produce."""
    from safetensors.numpy import save

    ckpt = checkpoint.read(path)
    header, state = _header(path)
    arrays = dict(ckpt.tensors) if tensors is None else tensors
    if state_edit is not None:
        state_edit(state)
    text = json.dumps(state, sort_keys=True)
    names = [n for n in state["weights"] if n in arrays]
    if digest is None:
        digest = checkpoint._digest(text, (arrays[n] for n in names))
    Path(path).write_bytes(
        save(arrays, metadata={"nadam.state": text, "nadam.sha256": digest})
    )


def test_a_missing_array_is_refused(saved):
    path, _, _ = saved
    tensors = dict(checkpoint.read(path).tensors)
    del tensors["v/1"]
    _rewritten(path, tensors=tensors)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, r"tensor\(s\) \['v/1'\] are missing")


def test_a_tensor_of_another_shape_than_recorded_is_refused(saved):
    path, _, _ = saved
    tensors = dict(checkpoint.read(path).tensors)
    tensors["m/1"] = np.zeros((2, 4))
    _rewritten(path, tensors=tensors)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, r"tensor 'm/1' has shape \(2, 4\)")


def test_a_recorded_cache_outside_0_1_is_refused(saved):
    path, _, _ = saved

    def edit(state):
        state["momentum_cache"]["value"] = 1.5

    _rewritten(path, state_edit=edit)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, r"momentum_cache in \[0, 1\], received: 1.5")


def test_recorded_negative_iterations_are_refused(saved):
    path, _, _ = saved

    def edit(state):
        state["iterations"] = -2

    _rewritten(path, state_edit=edit)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, r"iterations in \[0, 2\*\*63 - 1\]")


def test_a_safetensors_file_that_is_not_ours_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(3, np.float32)}, str(tmp_path / "model.safetensors"))
    opt, _ = _built()
    _fails_unchanged(opt, tmp_path / "model.safetensors", ValueError, "not a nadam checkpoint")


def test_a_file_of_another_format_version_is_refused(saved):
    path, _, _ = saved

    def edit(state):
        state["version"] = 99

    _rewritten(path, state_edit=edit)
    opt, _ = _built()
    _fails_unchanged(opt, path, ValueError, "format version 99")


@pytest.mark.parametrize("shapes, dtypes, match", [
    (((3,), (2, 4)), (np.float32, np.float64),
     r"its variable 1 is \(4, 2\) float64, but optimizer Nadam's variable 1 is 'v1' \(2, 4\)"),
    (((3,), (4, 2)), (np.float32, np.float32),
     r"its variable 1 is \(4, 2\) float64, but .* 'v1' \(4, 2\) float32"),
    (((3,),), (np.float32,), r"it holds 6 weights for 2 variable\(s\).*but optimizer Nadam "
     r"has 4 weights for 1 variable\(s\): 'v0' \(3,\) float32"),
    (((3,), (4, 2), (1,)), (np.float32, np.float64, np.float32),
     r"optimizer Nadam has 8 weights for 3 variable"),
])
def test_a_checkpoint_of_other_variables_is_refused(saved, shapes, dtypes, match):
    path, _, _ = saved
    opt, _ = _built(shapes, dtypes)
    _fails_unchanged(opt, path, ValueError, match)


def test_variables_in_another_order_are_refused(saved):
    path, _, _ = saved
    opt, _ = _built(((4, 2), (3,)), (np.float64, np.float32))
    _fails_unchanged(opt, path, ValueError, r"its variable 0 is 'x' \(3,\) float32")


def test_variables_built_in_other_rounds_are_refused(saved):
    # Same variables, but the second one's slots made by a later step: Keras orders the
    # weights m0 v0 m1 v1, not m0 m1 v0 v1.
    path, _, _ = saved
    x, y = Variable(np.zeros(3, np.float32)), np.zeros((4, 2))
    opt = Nadam()
    opt.build([x])
    opt.build([y])
    _fails_unchanged(opt, path, ValueError, r"weight 3 is 'm/1' but .* weight 3 is 'v/0'")


def test_an_optimizer_without_state_is_told_to_build_first(saved):
    path, _, _ = saved
    _fails_unchanged(Nadam(), path, ValueError, r"build\(var_list\) or a step first")


class _MomentumSGD(nadam.Optimizer):
    def __init__(self):
        super().__init__("MomentumSGD")
        self._set_hyper("learning_rate", 0.1)

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "velocity")

    def _resource_apply_dense(self, grad, var, apply_state):
        velocity = self.get_slot(var, "velocity")
        velocity.assign(0.9 * velocity.numpy() - 0.1 * grad)
        var.assign_add(velocity.numpy())


def test_a_checkpoint_of_another_optimizer_is_refused_both_ways(tmp_path, saved):
    path, _, _ = saved
    sgd = _MomentumSGD()
    sgd.build([Variable(np.zeros(3, np.float32)), Variable(np.zeros((4, 2)))])
    _fails_unchanged(sgd, path, ValueError, r"holds the state of another optimizer "
                     r"\(nadam.nadam.Nadam, keras face, slots \['m', 'v'\]\), but optimizer "
                     r"MomentumSGD has slots \['velocity'\]")
    sgd.save_state(tmp_path / "sgd")
    opt, _ = _built()
    _fails_unchanged(opt, tmp_path / "sgd", ValueError, r"another optimizer \(test_checkpoint\."
                     r"_MomentumSGD, keras face, slots \['velocity'\]\)")


def test_a_custom_optimizer_round_trips_its_own_slots(tmp_path):
    w = Variable(np.array([1.0, 1.0]))
    sgd = _MomentumSGD()
    sgd.apply_gradients([(np.array([0.5, -0.5]), w)])
    sgd.save_state(tmp_path / "sgd")
    twin = _MomentumSGD()
    twin.build([Variable(np.zeros(2))])
    twin.load_state(tmp_path / "sgd")
    assert _snapshot(twin) == _snapshot(sgd)
    assert checkpoint.read(tmp_path / "sgd").layout.names == ("iterations", "velocity/0")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    opt, _ = _built()
    with pytest.raises((IsADirectoryError, PermissionError)):
        opt.load_state(tmp_path)


def test_a_weight_of_a_dtype_the_format_does_not_hold_is_refused_before_writing(tmp_path):
    class Counting(nadam.Optimizer):
        def _create_slots(self, var_list):
            self.add_weight("seen", shape=(), dtype=np.uint8)

    opt = Counting("counting")
    opt.build([Variable(np.zeros(2))])
    with pytest.raises(ValueError, match=r"weight 'weight/1' has dtype uint8"):
        opt.save_state(tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []
