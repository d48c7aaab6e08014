"""Which memory model answers for a task: the trees shared by all tasks, or the task's own line.

The trees learn from every task at once and are calibrated on the latest runs, held out by
time; a task that ran early in a workflow (alignment before deduplication, say) has no runs
in that hold-out, so its upper bound is the width measured over *other* tasks, wide where
they are erratic. The task's own line (:class:`~scalable.advising.trend.InputTrend`) is
scaled by that task's own left-one-out errors. Neither is better everywhere, so each task
is judged on its own runs:

* where the task has at least ``min_compared`` held-out runs on which both were measured
  out of sample (the trees on the time hold-out, the line left-one-out), the one with the
  smaller root-mean-square log error answers;
* where it has fewer, the trees cannot show anything for this task, and the line, which is
  measured on this task's own runs, answers.

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
    return float(math.sqrt(float(np.mean(np.square(values)))))


def trend_tasks(
    trend: InputTrend,
    held_out_rows: np.ndarray,
    held_out_tasks: np.ndarray,
    model_errors: np.ndarray,
    min_history: int,
    min_compared: int = MIN_COMPARED,
) -> dict[str, str]:
    """Tasks the line answers for, each with the reason in words (for a recommendation's basis).

    ``held_out_rows`` are the frame rows the trees were calibrated on, ``held_out_tasks`` their
    tasks and ``model_errors`` the trees' log errors there (observed minus predicted).
    """
    line_errors: pd.Series = getattr(trend, "row_errors_", pd.Series(dtype=float))
    held = pd.DataFrame({"task": np.asarray(held_out_tasks, dtype=object).astype(str),
                         "model": np.asarray(model_errors, dtype=float)},
                        index=np.asarray(held_out_rows, dtype=int))
    held["line"] = line_errors.reindex(held.index).to_numpy(dtype=float) if len(line_errors) else np.nan
    both = held[np.isfinite(held["model"]) & np.isfinite(held["line"])]
    compared: Mapping[str, pd.DataFrame] = dict(tuple(both.groupby("task", sort=False)))
    out: dict[str, str] = {}
    for task, line in trend.trends_.items():
        if line.n < min_history:
            continue
        rows = compared.get(task)
        if rows is None or len(rows) < min_compared:
            n = 0 if rows is None else len(rows)
            out[task] = (f"chosen over the shared model, which has {n} held-out runs of this task to be judged on"
                         f" (fewer than {min_compared})")
            continue
        own, shared = _rms(rows["line"].to_numpy()), _rms(rows["model"].to_numpy())
        if own <= shared:
            out[task] = (f"chosen over the shared model: log error {own:.3f} against {shared:.3f} on "
                         f"{len(rows)} held-out runs of this task")
    return out
