"""Training runs for the checkpoint tests, run in fresh processes (and imported by the tests).

    python checkpoint_worker.py first DIR FACE...   steps 0..SPLIT, then save_state + variables
    python checkpoint_worker.py rest DIR FACE...    a new optimizer loads them, steps SPLIT..STEPS
    python checkpoint_worker.py save-loop PATH SIZE keep overwriting PATH until killed

Faces: "numpy" (`nadam.Nadam` on a `nadam.Variable` and plain NumPy arrays, a learning-rate
schedule rebuilt from the checkpoint's config), and with the same settings as each other
(lr 0.01, decay 0.01): "numpy-decay" (the same variables), "keras-torch" (`nadam.Nadam` on
torch parameters) and "torch" (`nadam.torch.Nadam`). One variable gets sparse gradients. Arrays are
written with `np.save` (no pickle).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import nadam
from nadam import checkpoint, schedules

SPLIT, STEPS = 7, 15
SHAPES = [((5, 4), np.float32), ((3,), np.float64), ((6, 2), np.float32)]  # the last: sparse
FACES = ("numpy", "keras-torch", "torch")
SAME_SETTINGS = ("numpy-decay", "keras-torch", "torch")  # faces whose runs agree bit for bit


def initial_values() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def gradients(step: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Dense gradients of the first variables; (indices, rows) of the last one."""
    rng = np.random.default_rng(1000 + step)
    dense = [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES[:-1]]
    (rows, cols), dtype = SHAPES[-1]
    indices = rng.integers(0, rows, size=4)
    return dense, indices, rng.standard_normal((4, cols)).astype(dtype)


def make(face: str, values: list[np.ndarray], config: dict | None = None):
    """(optimizer, variables) of `face` holding copies of `values`."""
    if face.startswith("numpy"):
        variables = [nadam.Variable(values[0].copy(), name="w"), values[1].copy(),
                     values[2].copy()]
        if config is not None:
            return nadam.Nadam.from_config(config), variables
        if face == "numpy-decay":  # the torch runs' settings
            return nadam.Nadam(learning_rate=0.01, decay=0.01), variables
        rate = schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.9)
        return nadam.Nadam(learning_rate=rate, clipnorm=2.0), variables
    import torch

    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    if face == "keras-torch":
        return nadam.Nadam(learning_rate=0.01, decay=0.01), params
    from nadam.torch import Nadam

    return Nadam(params, lr=0.01, decay=0.01), params


def step(face: str, opt, variables, number: int) -> None:
    dense, indices, rows = gradients(number)
    if face.startswith("numpy"):
        sparse = nadam.IndexedSlices(rows, indices, SHAPES[-1][0])
        opt.apply_gradients(zip([*dense, sparse], variables, strict=True))
        return
    import torch

    grads = [torch.from_numpy(g) for g in dense]
    sparse = torch.sparse_coo_tensor(
        torch.from_numpy(indices)[None], torch.from_numpy(rows), SHAPES[-1][0],
        check_invariants=True,
    )
    if face == "keras-torch":
        opt.apply_gradients(zip([*grads, sparse], variables, strict=True))
        return
    for param, grad in zip(variables, [*grads, sparse], strict=True):
        param.grad = grad
    opt.step()


def values_of(variables) -> list[np.ndarray]:
    out = []
    for var in variables:
        if hasattr(var, "detach"):
            out.append(var.detach().numpy().copy())
        else:
            out.append(np.array(var.numpy() if hasattr(var, "numpy") else var))
    return out


def build(face: str, opt, variables) -> None:
    """The state a checkpoint loads into (`nadam.torch.Nadam` builds its own)."""
    if face != "torch":
        opt.build(variables)


def first(directory: Path, face: str) -> None:
    opt, variables = make(face, initial_values())
    for number in range(SPLIT):
        step(face, opt, variables, number)
    opt.save_state(directory / f"{face}.safetensors")
    for index, value in enumerate(values_of(variables)):
        np.save(directory / f"{face}-var{index}.npy", value, allow_pickle=False)


def rest(directory: Path, face: str) -> None:
    path = directory / f"{face}.safetensors"
    values = [np.load(directory / f"{face}-var{i}.npy") for i in range(len(SHAPES))]
    config = checkpoint.read(path).config if face == "numpy" else None
    opt, variables = make(face, values, config)
    build(face, opt, variables)
    opt.load_state(path)
    for number in range(SPLIT, STEPS):
        step(face, opt, variables, number)
    for index, value in enumerate([*values_of(variables), *opt.get_weights()]):
        np.save(directory / f"{face}-final{index}.npy", value, allow_pickle=False)


def save_loop(path: Path, size: int) -> None:  # pragma: no cover - killed by its test
    """Save state 0, then overwrite it with states 1, 2, ... until killed.

    State k has iterations k, momentum_cache 1 / (k + 1), m full of k and v full of 2k.
    Prints "saving k" before and "saved k" after each save.
    """
    x = np.zeros(size, np.float32)
    opt = nadam.Nadam()
    opt.build([x])
    opt.save_state(path)
    print("saved 0", flush=True)
    for k in range(1, 1 << 30):
        opt.set_weights([
            np.int64(k), np.float32(1 / (k + 1)), np.full(size, k, np.float32),
            np.full(size, 2 * k, np.float32),
        ])
        print(f"saving {k}", flush=True)
        opt.save_state(path)
        print(f"saved {k}", flush=True)


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    mode, where, *rest_args = sys.argv[1:]
    if mode == "save-loop":
        save_loop(Path(where), int(rest_args[0]))
    else:
        for face_name in rest_args:
            (first if mode == "first" else rest)(Path(where), face_name)
