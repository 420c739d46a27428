"""What one step costs beyond its arithmetic: many small tensors, where bookkeeping dominates.

Times one step over `--tensors` tensors of `--size` float32 elements each (default 200 × 64, so
the kernel itself takes a few microseconds), through:

- the fused CPU kernel called directly on the same arrays (the arithmetic alone: what every
  other line adds to it is bookkeeping),
- `nadam.Nadam.apply_gradients` on `nadam.Variable`s (NumPy),
- `nadam.Nadam.apply_gradients` on CPU torch parameters (the Keras face),
- `nadam.torch.Nadam.step` (the torch.optim face),
- `torch.optim.NAdam(foreach=True)` and the for-loop version, the peers for small models.

All run in this process, interleaved step by step, medians over `--steps` steps after warm-up;
each line also gives the time per tensor and the ratio to torch's foreach step. torch is
optional: without it only the NumPy line is printed.

    python benchmarks/bench_overhead.py
    python benchmarks/bench_overhead.py --tensors 20 --size 5000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import nadam


def numpy_step(arrays: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
    variables = [nadam.Variable(a.copy()) for a in arrays]
    opt = nadam.Nadam()
    pairs = list(zip(grads, variables, strict=True))
    return lambda: opt.apply_gradients(pairs)


def kernel_step(arrays: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
    from nadam.backends import NUMPY_BACKEND
    from nadam.kernels import select
    from nadam.nadam import nadam_scalars

    xs = [a.copy() for a in arrays]
    ms = [np.zeros_like(a) for a in arrays]
    vs = [np.zeros_like(a) for a in arrays]
    # Step 1000's scalars, as a model mid-training sees them (the momentum cache is 0 then).
    scalars, _ = nadam_scalars(np.float32, 1000, 0.0)
    dense = select(NUMPY_BACKEND, "cpu", np.dtype(np.float32)).dense
    return lambda: dense(NUMPY_BACKEND, xs, grads, ms, vs, scalars)


def torch_steps(arrays: list[np.ndarray], grads: list[np.ndarray]) -> dict[str, Callable]:
    try:
        import torch
    except ImportError:
        print("torch is not installed: only the NumPy line")
        return {}
    import nadam.torch

    def parameters() -> list[torch.nn.Parameter]:
        params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        return params

    keras_params = parameters()
    keras_face = nadam.Nadam()
    keras_pairs = [(p.grad, p) for p in keras_params]
    return {
        "nadam.Nadam on torch parameters": lambda: keras_face.apply_gradients(keras_pairs),
        "nadam.torch.Nadam": nadam.torch.Nadam(parameters()).step,
        "torch.optim.NAdam (foreach)": torch.optim.NAdam(parameters(), foreach=True).step,
        "torch.optim.NAdam (for-loop)": torch.optim.NAdam(parameters(), foreach=False).step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="elements per tensor")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(args.size).astype(np.float32) for _ in range(args.tensors)]
    grads = [rng.standard_normal(args.size).astype(np.float32) for _ in range(args.tensors)]
    steps = {
        "fused kernel called directly (NumPy)": kernel_step(arrays, grads),
        "nadam.Nadam on nadam.Variable (NumPy)": numpy_step(arrays, grads),
    }
    steps.update(torch_steps(arrays, grads))
    for step in steps.values():
        for _ in range(30):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    reference = medians.get("torch.optim.NAdam (foreach)")
    print(f"{args.tensors} tensors x {args.size} float32 elements, median of {args.steps} steps")
    print("| implementation | µs/step | µs/tensor | torch foreach's time / this |")
    print("|---|---:|---:|---:|")
    for name, seconds in medians.items():
        ratio = f"{reference / seconds:.2f}×" if reference else "-"
        print(f"| {name} | {seconds * 1e6:.0f} | {seconds * 1e6 / args.tensors:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
