"""The benchmarks: quick runs of `benchmarks/bench_step.py` (which runs `nadam.bench`) and
`benchmarks/bench_overhead.py` printing their tables, and pieces of `nadam.bench`.
`python -m nadam bench` from an installed wheel is tested in test_cli_installed.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nadam

SRC = Path(nadam.__file__).resolve().parent.parent


# --- the benchmark's entry points ----------------------------------------------------------------


def test_benchmark_script_runs_and_prints_the_table():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--cases", "20 tensors, 100k",
         "--impls", "nadam", "numpy", "--no-first-step"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines()
            if line.startswith("| 20 tensors, 100k |")]
    labels = [row[2].strip() for row in rows]
    assert labels[0].startswith("*limit: streaming 28 B/param")
    assert labels[1:] == ["**nadam** (`apply_gradients`, fused kernel)", "plain NumPy, in place"]
    assert all(float(row[3]) > 0 for row in rows)  # ms/step
    assert "## Targets" in result.stdout


def test_overhead_benchmark_prints_every_implementation():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overhead.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tensors", "3", "--size", "8", "--steps", "5"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row[1].strip() for row in rows[1:]]
    assert names == [
        "fused kernel called directly (NumPy)",
        "nadam.Nadam on nadam.Variable (NumPy)", "nadam.Nadam on torch parameters",
        "nadam.torch.Nadam", "torch.optim.NAdam (foreach)", "torch.optim.NAdam (for-loop)",
    ]
    assert all(float(row[2]) > 0 for row in rows[1:])  # µs/step
    assert rows[5][4].strip() == "1.00×"  # foreach against itself


def test_benchmark_times_our_steps_mid_training_and_pairs_them_with_the_stream():
    from nadam import bench

    case = bench.Case("tiny", [(300,), (7, 5)], warmup=1, steps=3)
    step = bench.setup_nadam(case)
    step()
    # The timed steps run where a long run spends its time: cache underflowed, step ~1000.
    opt = step.optimizer
    assert int(opt.iterations) == bench.MID_TRAINING_STEP + 1
    assert float(opt.momentum_cache.numpy()) == 0.0
    early = bench.setup_nadam_early(case)
    assert callable(early.between)
    fraction = bench.paired_fraction(step, case)
    assert 0 < fraction < 100
