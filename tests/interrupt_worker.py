"""Run by test_step_interrupts_and_threads.py in its own process: Ctrl-C lands mid-step.

Each trial steps one large array until a timer sends SIGINT at a random moment, then replays
as many steps as `iterations` says were taken on a fresh copy and compares every bit of the
variable, the slots, the momentum cache and the counter. Prints "<interrupted> <inconsistent>".
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np

import nadam


def _torch_face(size: int, rng: np.random.Generator):  # pragma: no cover - a subprocess
    import torch

    from nadam.torch import Nadam

    start = rng.standard_normal(size).astype(np.float32)
    grad = torch.from_numpy(rng.standard_normal(size).astype(np.float32))

    def make():
        param = torch.nn.Parameter(torch.from_numpy(start.copy()))
        param.grad = grad
        opt = Nadam([param], lr=0.01)
        return opt, lambda: opt.step(), lambda: (
            param.detach().numpy().tobytes(), [w.tobytes() for w in opt.get_weights()]
        ), lambda: opt.iterations

    return make


def _keras_face(size: int, rng: np.random.Generator):  # pragma: no cover - a subprocess
    start = rng.standard_normal(size).astype(np.float32)
    grad = rng.standard_normal(size).astype(np.float32)

    def make():
        x = start.copy()
        opt = nadam.Nadam(learning_rate=0.01)
        return opt, lambda: opt.apply_gradients([(grad, x)]), lambda: (
            x.tobytes(), [w.tobytes() for w in opt.get_weights()]
        ), lambda: int(opt.iterations.value)

    return make


def main() -> None:  # pragma: no cover - a subprocess
    face, size, trials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # A process started in the background (`cmd &` in a script, nohup) inherits SIGINT as
    # ignored and Python then never raises KeyboardInterrupt: the timer's Ctrl-C must land.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(7)
    make = (_torch_face if face == "torch" else _keras_face)(size, rng)
    interrupted = inconsistent = 0
    for _ in range(trials):
        _, step, state, iterations = make()
        step()  # compiles, makes the slots
        timer = threading.Timer(rng.uniform(0.0, 0.02), os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()  # inside: with a delay near 0 the signal may land while it starts
            for _ in range(10_000):
                step()
        except KeyboardInterrupt:
            interrupted += 1
        timer.join()
        _, twin_step, twin_state, _ = make()
        for _ in range(iterations()):
            twin_step()
        inconsistent += state() != twin_state()
    print(interrupted, inconsistent)


if __name__ == "__main__":
    main()
