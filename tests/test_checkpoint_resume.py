"""Training resumed from a checkpoint continues bit for bit: in a fresh process, and across faces.

The runs (three variables, one with sparse gradients, a learning-rate schedule or decay, so
that `iterations` and `momentum_cache` both matter) are `checkpoint_worker.py`'s: this process
trains SPLIT steps and saves, a fresh one loads into new objects and trains to STEPS, and this
process trains STEPS steps without a break. Every bit of the variables and of the optimizer
state must agree.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

WORKER_PATH = Path(__file__).with_name("checkpoint_worker.py")
_spec = importlib.util.spec_from_file_location("checkpoint_worker", WORKER_PATH)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _uninterrupted(face: str) -> list[np.ndarray]:
    opt, variables = worker.make(face, worker.initial_values())
    for number in range(worker.STEPS):
        worker.step(face, opt, variables, number)
    return [*worker.values_of(variables), *opt.get_weights()]


def _same_bits(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        assert a.tobytes() == b.tobytes(), f"array {index} differs"


def _run(mode: str, directory: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(WORKER_PATH), mode, str(directory), *worker.FACES],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_run_resumed_in_a_fresh_process_continues_bit_for_bit(tmp_path):
    for face in worker.FACES:  # trained and saved here (`checkpoint_worker.py first` does it too)
        worker.first(tmp_path, face)
    _run("rest", tmp_path)
    count = len(worker.SHAPES) * 3 + 2  # variables, then iterations, cache, m's, v's
    for face in worker.FACES:
        resumed = [np.load(tmp_path / f"{face}-final{i}.npy") for i in range(count)]
        _same_bits(resumed, _uninterrupted(face))


@pytest.mark.parametrize("source", worker.SAME_SETTINGS)
@pytest.mark.parametrize("target", worker.SAME_SETTINGS)
def test_a_checkpoint_of_one_face_continues_on_another(tmp_path, source, target):
    # nadam.Nadam on NumPy arrays <-> nadam.Nadam on torch tensors <-> nadam.torch.Nadam: the
    # faces step alike bit for bit, so a run moved mid-way ends where it would have.
    opt, variables = worker.make(source, worker.initial_values())
    for number in range(worker.SPLIT):
        worker.step(source, opt, variables, number)
    path = tmp_path / "state.safetensors"
    opt.save_state(path)
    twin, twin_variables = worker.make(target, worker.values_of(variables))
    worker.build(target, twin, twin_variables)
    twin.load_state(path)
    for number in range(worker.SPLIT, worker.STEPS):
        worker.step(target, twin, twin_variables, number)
    _same_bits([*worker.values_of(twin_variables), *twin.get_weights()], _uninterrupted(source))
