"""What an allocation costs when a run below its peak is killed and run again at double.

The one cost rule the advisor judges its own answers by (which model answers a task, which
form a task's margin takes): every failed attempt costs its whole allocation for the run's
duration, the attempt that fits its allocation above the peak. It is the replay rule of
``benchmarks/bench_nextflow.py`` and of the Sizey paper's wastage.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UNTIMED_RUN_S", "retry_wastage"]

#: a run without a recorded duration counts as this many seconds (every run weighs the same)
UNTIMED_RUN_S = 1.0


def retry_wastage(upper_log: np.ndarray, log_peak: np.ndarray, runtime_s: np.ndarray | None = None) -> np.ndarray:
    """Byte-seconds each run would waste if first given ``exp(upper_log)`` and, each time that
    is below its peak, killed and run again at double."""
    allocation = np.exp(np.minimum(np.asarray(upper_log, dtype=float), 700.0))
    peak = np.exp(np.asarray(log_peak, dtype=float))
    runtime = np.full(peak.shape, UNTIMED_RUN_S) if runtime_s is None else np.asarray(runtime_s, dtype=float)
    runtime = np.where(np.isfinite(runtime) & (runtime > 0), runtime, UNTIMED_RUN_S)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        doublings = np.maximum(np.ceil(np.log2(peak / allocation)), 0.0)
        fits_at = allocation * np.exp2(doublings)
        return (allocation * (np.exp2(doublings) - 1.0) + (fits_at - peak)) * runtime
