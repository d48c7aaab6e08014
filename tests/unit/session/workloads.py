"""Real tasks for the session tests: their time and memory depend on their inputs.

Shipped to the worker processes by value (cloudpickle), so the workers need not import
the test package.
"""

from __future__ import annotations

import os
import sys
import time

import cloudpickle


def run_demeter_scenario(i, size_mb=8, seconds=0.02):
    """Hold ``size_mb`` of touched memory for a time that grows with ``i``."""
    block = bytearray(size_mb * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(seconds * (1 + i % 4))
    return i


def where(i):
    """The name of the worker that ran the task."""
    from distributed import get_worker

    time.sleep(0.01)
    return str(get_worker().name)


def fail(i):
    raise RuntimeError(f"scenario {i} diverged")


def hog(size_mb):
    """Allocate far more than the worker may have, slowly enough for the nanny to see it."""
    blocks = []
    for _ in range(size_mb // 50):
        block = bytearray(50 * 1024 * 1024)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        blocks.append(block)
        time.sleep(0.05)
    time.sleep(5)
    return len(blocks)


def slow(seconds):
    time.sleep(seconds)
    return os.getpid()


cloudpickle.register_pickle_by_value(sys.modules[__name__])
