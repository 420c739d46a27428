"""`python -m nadam bench` from a regular (non-editable) install (issue #8, item 6).

A wheel of this repository is built and installed into a folder of its own, and the command runs
from yet another folder with only that install on PYTHONPATH: neither the repository's src/ nor
its benchmarks/ can be reached, as after `pip install '.[demo]'`. torch is hidden behind a module
that fails to import, so that its row is skipped with a line saying so (and the run is quicker).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _require_offline_wheel_build() -> None:
    """The wheel is built with the setuptools of this environment (no build isolation, so no
    download); setuptools before 70.1 builds wheels only with the `wheel` package."""
    setuptools = pytest.importorskip("setuptools", minversion="64")
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        pytest.importorskip("wheel")


def _run_checked(cwd: Path, command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False,
                          cwd=cwd)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding nadam as `pip install --target` puts a wheel of this repository there."""
    _require_offline_wheel_build()
    root = tmp_path_factory.mktemp("installed")
    # The wheel is built from a copy, so that the build's folders (build/, *.egg-info) land
    # there and not in the working tree.
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run_checked(root, [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(root / "wheel"), str(source)])
    (wheel,) = (root / "wheel").glob("nadam-*.whl")
    _run_checked(root, [*pip, "install", "--no-deps", "--no-index", "--target",
                        str(root / "site"), str(wheel)])
    assert not (root / "site" / "nadam" / "__editable__").exists()
    return root / "site"


def _run_installed(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "torch.py").write_text('raise ImportError("torch is hidden by this test")\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(installed)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=elsewhere, env=env)


def test_the_installed_package_is_the_one_that_runs(installed: Path, tmp_path: Path) -> None:
    program = ("import sys, nadam; print('nadam.bench' in sys.modules); import nadam.bench; "
               "print(nadam.__file__, nadam.bench.__file__)")
    done = _run_installed(installed, tmp_path, "-c", program)
    assert done.returncode == 0, done.stderr
    imported_with_nadam, *paths = done.stdout.split()
    assert imported_with_nadam == "False"  # `import nadam` leaves the benchmark alone
    assert len(paths) == 2
    assert all(Path(path).is_relative_to(installed) for path in paths)


def test_quick_bench_runs_from_a_regular_install(installed: Path, tmp_path: Path) -> None:
    done = _run_installed(installed, tmp_path, "-m", "nadam", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Command: python -m nadam bench --quick" in out
    for case in ("1M", "20 tensors, 100k"):
        rows = {row.split("|")[2].strip(): row.split("|")[3].strip()
                for row in out.splitlines() if row.startswith(f"| {case} |")}
        labels = list(rows)
        assert labels[0].startswith("*limit: streaming 28 B/param"), out
        assert "**nadam** (`apply_gradients`, fused kernel)" in rows, out
        assert "plain NumPy, in place" in rows, out
        assert all(float(ms) > 0 for ms in rows.values())  # ms/step
    assert re.search(r"^Skipped `torch\.optim\.NAdam` \(foreach\): torch is not installed",
                     out, re.MULTILINE), out
    assert "## First step in a fresh process" in out
    assert "## Targets" in out
    assert "\nFailed:" not in out, out  # e.g. a module the wheel does not ship
