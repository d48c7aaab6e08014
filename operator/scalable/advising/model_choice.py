"""Which memory model answers for a task: the trees shared by all tasks, or the task's own line.

The trees learn from every task at once and are calibrated on the latest runs, held out by
time; a task that ran early in a workflow (alignment before deduplication, say) has no runs
in that hold-out, so its upper bound is the width measured over *other* tasks, wide where
they are erratic. The task's own line (:class:`~scalable.advising.trend.InputTrend`) is
scaled by that task's own errors. Neither is better everywhere, so both are judged on the
same runs, the time hold-out, each fitted without them (the trees on the earlier runs, the
lines refitted on the earlier runs too, so the line is not credited with runs it has seen):

* a task with at least ``min_compared`` held-out runs goes to the one with the smaller
  root-mean-square log error on them;
* a task with fewer goes to the line: the trees' interval for it would be the width measured
  over other tasks, the line's is measured on the task's own runs (left-one-out).

A task whose line was fitted on fewer than ``min_history`` runs is never given to the line:
that is the short-history path, with its own rule.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from scalable.advising.trend import InputTrend

__all__ = ["MIN_COMPARED", "trend_tasks"]

#: held-out runs of a task on which both models must be measured for the comparison to count
MIN_COMPARED = 5


def _rms(values: np.ndarray) -> float:
    return float(math.sqrt(float(np.mean(np.square(values))))) if len(values) else math.nan


def trend_tasks(
    trend: InputTrend,
    held_out_tasks: np.ndarray,
    model_errors: np.ndarray,
    line_errors: np.ndarray,
    min_history: int,
    min_compared: int = MIN_COMPARED,
) -> dict[str, str]:
    """Tasks the line answers for, each with the reason in words (for a recommendation's basis).

    ``held_out_tasks`` are the tasks of the held-out runs, ``model_errors`` the trees' log errors
    on them and ``line_errors`` the lines' (fitted on the earlier runs; NaN where a task had no
    line then), both observed minus predicted.
    """
    held = pd.DataFrame({"task": np.asarray(held_out_tasks, dtype=object).astype(str),
                         "model": np.asarray(model_errors, dtype=float),
                         "line": np.asarray(line_errors, dtype=float)})
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
        own, shared = _rms(rows["line"].to_numpy()), _rms(rows["model"].to_numpy())
        if own <= shared:
            out[task] = (f"chosen over the shared model: log error {own:.3f} against {shared:.3f} on "
                         f"{len(rows)} held-out runs of this task")
    return out
