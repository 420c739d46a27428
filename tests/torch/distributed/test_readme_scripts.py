"""The README's scale-out snippets run as printed: the DDP, FSDP2 and ZeRO scripts each on 2
gloo processes on 127.0.0.1 (each asserts itself what it shows: every rank ends with the same
model, a resumed run continues the schedule), and the in-backward loop in one process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gloo_processes import free_port

import nadam

ROOT = Path(__file__).resolve().parents[3]
SRC = Path(nadam.__file__).resolve().parent.parent

# README heading -> seconds each rank may take. DDP's script trains longest.
SCRIPTS = {
    "Data-parallel: DistributedDataParallel": 120,
    "Sharded parameters: FSDP2 (`fully_shard`) and DTensor": 90,
    "ZeRO: `ZeroRedundancyOptimizer`": 90,
}
IN_BACKWARD_TIMEOUT_S = 120


def _snippet(heading: str) -> str:
    """The first python block under the README's `### <heading>`.

    Example:
        >>> "import" in _snippet("ZeRO: `ZeroRedundancyOptimizer`")
        True
    """
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n### {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run_on_two_gloo_processes(script: Path, timeout_s: float) -> None:
    """Runs `script` as ranks 0 and 1 of a 2-process job; fails with the stderr of a rank that
    exits non-zero. Kills only the ranks it started if they outlive `timeout_s`."""
    base = {**os.environ, "PYTHONPATH": str(SRC), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        # The address is loopback: let gloo pick that interface rather than guess one.
        base.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ranks = [
        subprocess.Popen([sys.executable, str(script)], cwd=script.parent,
                         env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    try:
        outputs = [rank.communicate(timeout=timeout_s) for rank in ranks]
    finally:
        for rank in ranks:  # only the processes this test started
            if rank.poll() is None:
                rank.kill()
                rank.wait(5)
    for rank, (_, err) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, err


@pytest.mark.parametrize("heading", list(SCRIPTS))
def test_the_script_runs_on_two_gloo_processes(tmp_path: Path, heading: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(_snippet(heading))
    _run_on_two_gloo_processes(script, SCRIPTS[heading])


def test_the_in_backward_loop_runs(tmp_path: Path) -> None:
    code = _snippet("The step inside backward: `in_backward=True`")
    assert "in_backward=True" in code and "remove_hooks()" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=IN_BACKWARD_TIMEOUT_S, check=False,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
