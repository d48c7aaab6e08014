"""Which memory model answers for a task: the trees shared by all tasks, or the task's own line.

The trees learn from every task at once and are calibrated on the latest runs, held out by
time; a task that ran early in a workflow (alignment before deduplication, say) has no runs
in that hold-out, so its upper bound is the width measured over *other* tasks, wide where
they are erratic. The task's own line (:class:`~scalable.advising.trend.InputTrend`) is
scaled by that task's own errors. Neither is better everywhere, so both are judged on the
same runs, the time hold-out, each fitted without them (the trees on the earlier runs, the
lines refitted on the earlier runs too, so the line is not credited with runs it has seen).

They are judged by what their answers would have cost, not by how close their centres came:
what a user pays for is the upper bound, and a run below its peak is killed and run again.
Each held-out run is given each model's upper bound at the advisor's coverage; a bound below
the run's peak costs that allocation for the run's duration and is retried at double until it
fits, and the attempt that fits costs its allocation above the peak for the duration
(:func:`~scalable.advising.wastage.retry_wastage`, the replay rule of ``benchmarks/bench_nextflow.py``). So a line that is
close on average but wide, or trees that are tight but miss, lose to the model that wastes
less memory-time on this task's own runs:

* a task with at least ``min_compared`` held-out runs goes to the one that would have wasted
  less on them (a tie goes to the line, the simpler model);
* a task with fewer goes to the line: the trees' interval for it would be the width measured
  over other tasks, the line's is measured on the task's own runs (left-one-out).

A task whose line was fitted on fewer than ``min_history`` runs is never given to the line:
that is the short-history path, with its own rule.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from scalable.advising.trend import InputTrend
from scalable.advising.wastage import retry_wastage

__all__ = ["MIN_COMPARED", "margin_forms", "trend_tasks"]

#: held-out runs of a task on which both models must be measured for the comparison to count
MIN_COMPARED = 5

def margin_forms(
    held_out_tasks: np.ndarray,
    by_factor: np.ndarray,
    by_amount: np.ndarray,
    log_peaks: np.ndarray,
    runtimes_s: np.ndarray,
    min_compared: int = MIN_COMPARED,
) -> dict[str, str]:
    """Per task with at least ``min_compared`` held-out runs, the margin form ("log": a factor
    on the line, "bytes": an amount added to it) whose upper bounds, from lines fitted on the
    earlier runs, would have wasted less on them. Each line picks a form on its own runs
    (left-one-out), but those runs were all seen by the fit; the later runs say which form
    holds when inputs move on."""
    held = pd.DataFrame({"task": np.asarray(held_out_tasks, dtype=object).astype(str),
                         "log": retry_wastage(by_factor, log_peaks, runtimes_s),
                         "bytes": retry_wastage(by_amount, log_peaks, runtimes_s)})
    held = held[np.isfinite(held["log"]) & np.isfinite(held["bytes"])]
    sums = held.groupby("task", sort=False).agg(n=("log", "size"), log=("log", "sum"), bytes=("bytes", "sum"))
    sums = sums[sums["n"] >= min_compared]
    return {str(task): ("bytes" if row["bytes"] < row["log"] else "log") for task, row in sums.iterrows()}


def trend_tasks(
    trend: InputTrend,
    held_out_tasks: np.ndarray,
    model_upper: np.ndarray,
    line_upper: np.ndarray,
    log_peaks: np.ndarray,
    runtimes_s: np.ndarray,
    min_history: int,
    min_compared: int = MIN_COMPARED,
) -> dict[str, str]:
    """Tasks the line answers for, each with the reason in words (for a recommendation's basis).

    ``held_out_tasks`` are the tasks of the held-out runs, ``model_upper`` the trees' log upper
    bounds for them and ``line_upper`` the lines' (fitted on the earlier runs; NaN where a task
    had no line then), ``log_peaks`` their observed log peaks and ``runtimes_s`` their durations.
    """
    held = pd.DataFrame({"task": np.asarray(held_out_tasks, dtype=object).astype(str),
                         "model": retry_wastage(model_upper, log_peaks, runtimes_s),
                         "line": retry_wastage(line_upper, log_peaks, runtimes_s),
                         "runtime": np.asarray(runtimes_s, dtype=float)})
    both = held[np.isfinite(held["model"]) & np.isfinite(held["line"])]
    compared: Mapping[str, pd.DataFrame] = dict(tuple(both.groupby("task", sort=False)))
    out: dict[str, str] = {}
    for task, line in trend.trends_.items():
        if line.n < min_history:
            continue
        rows = compared.get(task)
        if rows is None or len(rows) < min_compared:
            n = 0 if rows is None else len(rows)
            out[task] = (f"chosen over the shared model, which has {n} held-out runs of this task to be judged on "
                         f"(fewer than {min_compared}) and only the width measured over other tasks")
            continue
        own, shared = float(rows["line"].sum()), float(rows["model"].sum())
        if own <= shared:
            unit = "GB*h" if rows["runtime"].notna().any() else "GB*run"
            scale = 1e9 * (3600.0 if unit == "GB*h" else 1.0)
            out[task] = (f"chosen over the shared model: its upper bounds would have wasted {own / scale:.3g} {unit} "
                         f"against {shared / scale:.3g} on {len(rows)} held-out runs of this task "
                         f"(failed attempts retried at double)")
    return out
