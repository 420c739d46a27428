"""The README's FSDP2 and ZeRO scripts run as printed, each on 2 gloo processes on 127.0.0.1
(they assert themselves that the resumed run continues the schedule)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nadam

ROOT = Path(__file__).resolve().parents[3]
SRC = Path(nadam.__file__).resolve().parent.parent
TIMEOUT_S = 90


def _snippet(heading: str) -> str:
    """The first python block under the README's `### <heading>`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n### {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("heading", [
    "Sharded parameters: FSDP2 (`fully_shard`) and DTensor",
    "ZeRO: `ZeroRedundancyOptimizer`",
])
def test_the_script_runs_on_two_gloo_processes(tmp_path, heading):
    script = tmp_path / "script.py"
    script.write_text(_snippet(heading))
    base = {**os.environ, "PYTHONPATH": str(SRC), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        base.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ranks = [
        subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                         env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    try:
        outputs = [rank.communicate(timeout=TIMEOUT_S) for rank in ranks]
    finally:
        for rank in ranks:  # only the processes this test started
            if rank.poll() is None:
                rank.kill()
                rank.wait(5)
    for rank, (_, err) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, err
