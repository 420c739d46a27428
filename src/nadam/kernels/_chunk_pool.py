"""Helper threads for the fused CPU kernel: they join a job if they can, and are never awaited.

A job is a compiled `*_chunks` function of `kernels._cpu_numba` and its arguments: every thread
that runs it claims chunks from the job's shared counters until none is left. The calling
thread always runs it too, then waits only for chunks already claimed by a helper, never for a
helper that has not woken up yet. On a quiet machine the helpers share the work; on a busy one
(another process on the other core, where a fork-join loop such as numba's `prange` waits a
whole scheduler time slice for its second thread, about 8 ms here) the step costs at most what
the calling thread alone takes.

A helper can still be preempted in the middle of a chunk it claimed, and then the calling
thread waits for it. When that wait is long (another process owns the helper's core), the pool
runs the next calls on the calling thread alone, for a number of calls that doubles with every
such stall and halves with every call where the helpers kept up. The split of work never
changes results: every element is computed the same way by whichever thread.

Helpers are daemon threads, started when first needed; the compiled functions release the GIL.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def available_cores() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class ChunkPool:
    """Runs chunk-claiming jobs on the calling thread and up to `threads - 1` helpers.

    Example:
        >>> pool = ChunkPool()
        >>> pool.threads >= 1
        True
    """

    STALL_SECONDS = 0.002
    """A wait for helpers longer than this (many chunks' worth) means one was preempted."""
    MAX_SOLO_CALLS = 64

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or available_cores()
        self.stalls = 0  # calls where a preempted helper kept the caller waiting
        self._solo_calls_left = 0  # calls to run alone before trying the helpers again
        self._solo_calls_next = 0  # how many solo calls the next stall costs
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._helpers = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget_helpers)

    def _forget_helpers(self) -> None:
        # A forked child has none of its parent's threads: start new ones when needed.
        self._jobs = queue.SimpleQueue()
        self._helpers = 0
        self._lock = threading.Lock()

    def _serve(self, jobs: queue.SimpleQueue) -> None:
        while True:
            kernel, args = jobs.get()
            try:
                kernel(*args)
            except Exception:  # noqa: BLE001 - the caller makes the same call, and raises
                pass

    def _ensure_helpers(self, count: int) -> None:
        with self._lock:
            while self._helpers < count:
                self._helpers += 1
                threading.Thread(
                    target=self._serve, args=(self._jobs,), daemon=True,
                    name=f"nadam-cpu-helper-{self._helpers}",
                ).start()

    def run(
        self,
        kernel: Callable[..., None],
        args: tuple[Any, ...],
        chunks: int,
        finished: Callable[[np.ndarray], int],
    ) -> None:
        """Run `kernel(*args, counters)` here and on helpers until its `chunks` are finished.

        `finished(counters)` reads how many chunks are done (with their writes visible).
        """
        counters = np.zeros(2, dtype=np.int64)
        job = (kernel, (*args, counters))
        helpers = min(self.threads, chunks) - 1
        if helpers > 0 and self._solo_calls_left > 0:
            self._solo_calls_left -= 1
            helpers = 0
        if helpers > 0:
            self._ensure_helpers(helpers)
            for _ in range(helpers):
                self._jobs.put(job)
        kernel(*job[1])
        if helpers <= 0:
            return
        # Every chunk is claimed now; wait for the ones helpers are still finishing, yielding
        # the core in case one of them runs on it.
        waiting_since = time.perf_counter()
        while finished(counters) < chunks:
            time.sleep(0)
        self._adapt(stalled=time.perf_counter() - waiting_since > self.STALL_SECONDS)

    def _adapt(self, stalled: bool) -> None:
        if stalled:
            self.stalls += 1
            self._solo_calls_next = min(self.MAX_SOLO_CALLS, max(2, 2 * self._solo_calls_next))
            self._solo_calls_left = self._solo_calls_next
        else:
            self._solo_calls_next //= 2
