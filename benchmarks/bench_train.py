"""One whole training step (forward, backward, optimizer) of an MLP: time and peak memory.

The question: what does stepping inside backward (`nadam.torch.Nadam(..., in_backward=True)`)
save, and what does it cost? An MLP of `--layers` square float32 `Linear` layers (ReLU between,
a batch of `--batch` rows, MSE loss) with about `--params` parameters in all is trained on the
CPU by:

- `nadam.torch.Nadam`, stepped normally (`zero_grad(); backward(); step()`),
- `nadam.torch.Nadam(in_backward=True)` (the same loop; each parameter is stepped and its
  gradient freed as soon as backward has it),
- `torch.optim.NAdam(foreach=True)` and `torch.optim.NAdam(foreach=False)`, the peers.

Each implementation runs in a fresh subprocess of its own (same seed, same model, same batch),
so that no run inherits another's memory. Reported per implementation:

- **ms/step**: the median (and the minimum) over `--repeats` timed steps, after two warm-up
  steps (which create the optimizer state).
- **peak MiB beyond parameters and state**: how far the process's resident set rises above
  where it stood with the model, the optimizer state and no gradient (after the warm-up
  steps, with `zero_grad(set_to_none=True)` and a garbage collection) during the timed steps.
  That is gradients, activations and their gradients, and whatever the optimizer allocates.
  Method: Linux's peak resident set ("VmHWM" in /proc/self/status) is reset to the current
  resident set by writing 5 to /proc/self/clear_refs right before the timed steps, and read
  after them; the baseline is "VmRSS" at the same moment. So that freed memory really leaves
  the resident set (and a second allocation of it is counted again), each subprocess runs
  with glibc's mmap threshold fixed at 64 KiB (`MALLOC_MMAP_THRESHOLD_`): every tensor
  buffer of 64 KiB or more is its own mapping, returned to the kernel when freed, and
  glibc's dynamic threshold (which would move freed blocks of up to 32 MiB onto the heap and
  keep them) is off. Where /proc/self/clear_refs cannot be written, the peak is
  `ru_maxrss` (the whole process's peak) minus the baseline, which includes the warm-up
  steps; the output says which method was used.

The targets (issue 13): the in-backward step's peak is below the normal step's by at least
80 % of (all parameter gradients minus the largest one) — activation gradients overlap the one
parameter gradient alive at a time, so the whole amount is out of reach — and its step time is
no worse than ours stepped normally.

    python benchmarks/bench_train.py                       # ~64M parameters, 10 steps each
    python benchmarks/bench_train.py --params 4000000 --repeats 3 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

IMPLEMENTATIONS = {
    "nadam": "nadam.torch.Nadam (normal step)",
    "nadam-in-backward": "nadam.torch.Nadam (in_backward=True)",
    "torch-foreach": "torch.optim.NAdam (foreach)",
    "torch-for-loop": "torch.optim.NAdam (for-loop)",
}
MMAP_THRESHOLD = 65536
MIB = 1024 * 1024


# --- one implementation, in its own process --------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Set the peak resident set to the current one; False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _width(params: int, layers: int) -> int:
    """The width of `layers` square Linear layers (with biases) holding about `params`."""
    width = int((params / layers) ** 0.5)
    return max(width, 2)


def run_one(impl: str, params: int, layers: int, batch: int, repeats: int) -> dict[str, Any]:
    """Train the MLP with one implementation in this process; its figures as a dict."""
    import gc

    import torch

    from nadam.torch import Nadam

    torch.manual_seed(0)
    width = _width(params, layers)
    blocks: list[torch.nn.Module] = []
    for index in range(layers):
        blocks.append(torch.nn.Linear(width, width))
        if index < layers - 1:
            blocks.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*blocks)
    x, y = torch.randn(batch, width), torch.randn(batch, width)
    parameters = list(model.parameters())
    if impl == "nadam":
        opt = Nadam(parameters, lr=1e-4)
    elif impl == "nadam-in-backward":
        opt = Nadam(parameters, lr=1e-4, in_backward=True)
    elif impl == "torch-foreach":
        opt = torch.optim.NAdam(parameters, lr=1e-4, foreach=True)
    elif impl == "torch-for-loop":
        opt = torch.optim.NAdam(parameters, lr=1e-4, foreach=False)
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    for _ in range(2):  # creates the optimizer state (torch.optim lazily, at its first step)
        train_step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    baseline_kib = _status_kib("VmRSS")
    reset = _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    if reset:
        peak_kib, method = _status_kib("VmHWM"), "VmHWM reset by /proc/self/clear_refs"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss (warm-up steps included)"
    sizes = [p.numel() * p.element_size() for p in parameters]
    return {
        "impl": impl,
        "label": IMPLEMENTATIONS[impl],
        "params": sum(p.numel() for p in parameters),
        "layers": layers,
        "width": width,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "ms_median": statistics.median(times) * 1e3,
        "ms_min": min(times) * 1e3,
        "peak_mib": (peak_kib - baseline_kib) / 1024,
        "baseline_mib": baseline_kib / 1024,
        "gradients_mib": sum(sizes) / MIB,
        "largest_gradient_mib": max(sizes) / MIB,
        "memory_method": method,
    }


# --- the driver --------------------------------------------------------------------------------
def run_all(
    impls: list[str], params: int, layers: int, batch: int, repeats: int, timeout: float
) -> list[dict[str, Any]]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    results = []
    for impl in impls:
        command = [
            sys.executable, os.path.abspath(__file__), "--worker", impl, "--params", str(params),
            "--layers", str(layers), "--batch", str(batch), "--repeats", str(repeats),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{impl} failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two targets, where both of our lines were run."""
    by_impl = {result["impl"]: result for result in results}
    normal, inside = by_impl.get("nadam"), by_impl.get("nadam-in-backward")
    if normal is None or inside is None:
        return {}
    reachable = normal["gradients_mib"] - normal["largest_gradient_mib"]
    saved = normal["peak_mib"] - inside["peak_mib"]
    return {
        "saved_mib": saved,
        "required_mib": 0.8 * reachable,
        "memory_met": saved >= 0.8 * reachable,
        "time_ratio": inside["ms_median"] / normal["ms_median"],
        "time_met": inside["ms_median"] <= normal["ms_median"],
    }


def table(results: list[dict[str, Any]]) -> str:
    first = results[0]
    lines = [
        f"MLP: {first['layers']} Linear layers of {first['width']}x{first['width']} "
        f"({first['params'] / 1e6:.1f}M float32 parameters, gradients "
        f"{first['gradients_mib']:.0f} MiB, largest {first['largest_gradient_mib']:.0f} MiB), "
        f"batch {first['batch']}, {first['threads']} threads, {first['repeats']} timed steps; "
        f"memory: {first['memory_method']}",
        "",
        "| implementation | ms/step (median) | ms/step (min) | peak MiB beyond params+state |",
        "|---|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['label']} | {result['ms_median']:.1f} | {result['ms_min']:.1f} | "
            f"{result['peak_mib']:.1f} |"
        )
    goal = targets(results)
    if goal:
        lines += [
            "",
            f"in_backward saves {goal['saved_mib']:.1f} MiB of the normal step's peak; target "
            f">= {goal['required_mib']:.1f} MiB (80 % of all gradients but the largest): "
            f"{'met' if goal['memory_met'] else 'NOT met'}",
            f"in_backward step time / normal step time: {goal['time_ratio']:.3f} "
            f"({'met' if goal['time_met'] else 'NOT met'}: no worse than ours normally stepped)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=64e6,
                        help="about how many parameters the MLP has (default 64e6)")
    parser.add_argument("--layers", type=int, default=8, help="square Linear layers (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS),
                        default=list(IMPLEMENTATIONS))
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results (and targets) as JSON; '-' for stdout")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds per implementation (default 1800)")
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    params = int(args.params)
    if args.worker:
        print(json.dumps(run_one(args.worker, params, args.layers, args.batch, args.repeats)))
        return 0
    results = run_all(args.impls, params, args.layers, args.batch, args.repeats, args.timeout)
    report = {"results": results, "targets": targets(results)}
    if args.json == "-":
        print(json.dumps(report, indent=1))
        return 0
    print(table(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
