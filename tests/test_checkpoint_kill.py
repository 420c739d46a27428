"""kill -9 during `save_state` leaves the previous checkpoint, whole and loadable.

A subprocess (`checkpoint_worker.py save-loop`) overwrites one checkpoint of a 32 MB state
with new states in a loop, saying "saving k" before and "saved k" after each save, and is
SIGKILLed after a random delay. The file must then load and be exactly the last state whose
save completed (or the one in flight, if the kill came after its rename). The trials must
also show kills that landed mid-save, or they would prove nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nadam import Nadam, checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

WORKER = Path(__file__).with_name("checkpoint_worker.py")
SIZE = 4 << 20  # float32 elements per slot: two slots of 16 MB
TRIALS = 4


def _kill_mid_loop(path: Path, delay: float) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), "save-loop", str(path), str(SIZE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout.readline().strip() == "saved 0", process.stderr.read()[-2000:]
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return ["saved 0", *out.split("\n")]


def _loaded_state(path: Path) -> tuple[int, float, np.ndarray, np.ndarray]:
    opt = Nadam()
    opt.build([np.zeros(SIZE, np.float32)])
    opt.load_state(path)  # the file verifies (checksum) and fits
    iterations, cache, m, v = opt.get_weights()
    return int(iterations), float(cache), m, v


def test_kill_9_during_save_state_leaves_a_loadable_previous_checkpoint(tmp_path):
    rng = random.Random(os.getpid())
    mid_save = 0
    for trial in range(TRIALS):
        path = tmp_path / f"trial{trial}" / "state.safetensors"
        path.parent.mkdir()
        lines = [line for line in _kill_mid_loop(path, rng.uniform(0.05, 0.5)) if line]
        last = lines[-1]
        completed = max(int(line.split()[1]) for line in lines if line.startswith("saved"))
        in_flight = int(last.split()[1]) if last.startswith("saving") else None
        mid_save += in_flight is not None
        k, cache, m, v = _loaded_state(path)
        assert k == completed or k == in_flight, (lines[-3:], k)
        assert cache == float(np.float32(1 / (k + 1))) if k else cache == 1.0
        assert np.all(m == k) and np.all(v == 2 * k)
        leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
        assert all(name.startswith(".state.safetensors.") for name in leftovers)
        assert checkpoint.read(path).iterations == k
    assert mid_save >= 1, "no kill landed during a save: the trials proved nothing"
