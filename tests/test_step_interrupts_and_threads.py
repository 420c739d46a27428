"""Ctrl-C during a step and two threads stepping one optimizer (SPEC 4.6).

An interrupt that arrives while a step runs is raised when the step has finished, so the
variables, slots, momentum cache and `iterations` always describe a whole number of steps. One
optimizer's steps run one at a time; different optimizers still step in parallel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nadam import Nadam, Variable, engine

WORKER = Path(__file__).with_name("interrupt_worker.py")


@pytest.mark.parametrize("face", ["keras", "torch"])
def test_ctrl_c_mid_step_leaves_whole_steps(face):
    if face == "torch":
        pytest.importorskip("torch")
    # 8M float32 parameters: a step takes several milliseconds, mostly inside the kernel.
    result = subprocess.run(
        [sys.executable, str(WORKER), face, str(8 << 20), "6"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    interrupted, inconsistent = map(int, result.stdout.split())
    assert interrupted == 6
    assert inconsistent == 0


def test_the_deferred_interrupt_reaches_the_handler_after_the_block():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with engine.exclusive_step(threading.RLock()):
            signal.raise_signal(signal.SIGINT)
            assert seen == []  # held back while the step runs
        assert seen == [signal.SIGINT]
        # and the handler installed before is back in place
        signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT, signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_error_in_the_block_still_restores_the_handler():
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError), engine.exclusive_step(threading.RLock()):
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is handler


def _run_in_threads(count, target):
    barrier = threading.Barrier(count)
    errors = []

    def run(index):
        try:
            barrier.wait()
            target(index)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_two_threads_stepping_one_variable_serialize():
    rng = np.random.default_rng(3)
    start = rng.standard_normal(200_000).astype(np.float32)
    grad = rng.standard_normal(200_000).astype(np.float32)
    steps = 40
    x, opt = start.copy(), Nadam(learning_rate=0.01)
    _run_in_threads(2, lambda _: [opt.apply_gradients([(grad, x)]) for _ in range(steps)])
    twin, twin_opt = start.copy(), Nadam(learning_rate=0.01)
    for _ in range(2 * steps):
        twin_opt.apply_gradients([(grad, twin)])
    assert int(opt.iterations.value) == 2 * steps
    assert x.tobytes() == twin.tobytes()
    for ours, theirs in zip(opt.get_weights(), twin_opt.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()


def test_two_threads_on_disjoint_variables_share_one_schedule():
    # float64, so the momentum cache does not underflow to 0 within the run (step ~976).
    steps = 200
    variables = [Variable(np.ones(20_000), name=f"w{i}") for i in range(2)]
    opt = Nadam()
    grad = np.full(20_000, 0.5)
    _run_in_threads(
        2, lambda i: [opt.apply_gradients([(grad, variables[i])]) for _ in range(steps)]
    )
    schedule = Nadam()
    dummy = Variable(np.ones(1))
    for _ in range(2 * steps):
        schedule.apply_gradients([(np.ones(1), dummy)])
    assert int(opt.iterations.value) == 2 * steps
    assert opt.momentum_cache.numpy().tobytes() == schedule.momentum_cache.numpy().tobytes()


def test_different_optimizers_step_at_the_same_time():
    # Each optimizer's lock is its own: a step of one never waits for another's.
    first, second = Nadam(), Nadam()
    assert first._lock is not second._lock
    inside = threading.Event()
    release = threading.Event()
    w = Variable(np.ones(3, np.float32))

    def hold_first():
        with engine.exclusive_step(first._lock):
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold_first)
    holder.start()
    assert inside.wait(10)
    try:
        assert second.apply_gradients([(np.ones(3, np.float32), w)]) == 1
    finally:
        release.set()
        holder.join(10)


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_step_on_another_thread_leaves_signals_alone():
    handler = signal.getsignal(signal.SIGINT)
    w = Variable(np.ones(3, np.float32))
    opt = Nadam()
    _run_in_threads(1, lambda _: opt.apply_gradients([(np.ones(3, np.float32), w)]))
    assert signal.getsignal(signal.SIGINT) is handler
    assert int(opt.iterations.value) == 1
