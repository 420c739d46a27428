"""The README's "Scale-out" snippets run as printed: the DDP script on 2 gloo processes on
127.0.0.1 (it asserts itself that every rank ends with the same model), and the in-backward
loop in one process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nadam

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(nadam.__file__).resolve().parent.parent
TIMEOUT_S = 120


def _snippet(heading: str) -> str:
    """The first python block under the README's `### <heading>`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n### {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_ddp_script_runs_on_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp_nadam.py"
    script.write_text(_snippet("Data-parallel: DistributedDataParallel"))
    base = {**os.environ, "PYTHONPATH": str(SRC), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
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


def test_the_in_backward_loop_runs(tmp_path):
    code = _snippet("The step inside backward: `in_backward=True`")
    assert "in_backward=True" in code and "remove_hooks()" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT_S, check=False,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
