"""Task functions for real Dask workers in tests. They live in an importable module (not in
a test file) because workers unpickle functions by reference; DaskProcesses puts the
repository root on the workers' PYTHONPATH so `tests.support.workloads` imports there."""

from __future__ import annotations

import time


def slow_square(x: int, seconds: float = 0.05) -> int:
    time.sleep(seconds)
    return x * x


def sleep_task(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def allocate(nbytes: int, hold_seconds: float = 0.0, delay_seconds: float = 0.0) -> int:
    """Touch nbytes of memory (observable peak memory) and hold it a while; with
    delay_seconds, first work a little without it (so a task killed at its peak has been seen
    starting)."""
    time.sleep(delay_seconds)
    buf = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        buf[i] = 1
    time.sleep(hold_seconds)
    return len(buf)


def processing_counts(dask_scheduler) -> dict[str, int]:
    """For ``Client.run_on_scheduler``: how many times each task key went to a worker (a lost
    worker, or one retired while busy, makes its task run again)."""
    counts: dict[str, int] = {}
    for entry in dask_scheduler.transition_log:
        key, finish = entry[0], entry[2]
        if finish == "processing":
            counts[str(key)] = counts.get(str(key), 0) + 1
    return counts
