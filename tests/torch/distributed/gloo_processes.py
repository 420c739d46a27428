"""Starting gloo process groups from a test: a free port on 127.0.0.1, and ranks that are
always reaped.

Example:
    >>> 0 < free_port() < 65536
    True
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp

TIMEOUT_S = 90


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(
    target: Callable[..., None], world: int, args: tuple[Any, ...], timeout_s: float = TIMEOUT_S
) -> None:
    """Run `target(rank, *args)` on `world` spawned processes; fail after `timeout_s`, and
    terminate whatever this call started that is still running (only those processes)."""
    context = mp.start_processes(target, args=args, nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} gloo processes did not finish in {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
