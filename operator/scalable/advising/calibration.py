"""Split-conformal calibration of an upper quantile, per task where the task has the data.

The model predicts a centre ``m`` and a spread ``s`` of log peak memory; the nonconformity
score of a held-out run is ``(log used - m) / s``. For a promised coverage ``c`` the
recommendation is ``exp(m + q_c s)`` where ``q_c`` is the ``ceil((n + 1) c) / n`` empirical
quantile of the scores: on exchangeable data, at least ``c`` of future runs fit. Runs drift
in time, so the scores come from the *latest* runs, held out from training.

Scores are kept (not one quantile) so that any coverage can be asked for later without
refitting. A task with enough calibration runs gets its own quantile (Mondrian conformal);
the others share the global one. The measured miss rate per task, per tag and overall is
what confidence is derived from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

__all__ = ["ConformalCalibrator", "conditional_quantile", "conformal_quantile"]


def conformal_quantile(sorted_scores: np.ndarray, coverage: float) -> float:
    """The finite-sample conformal quantile; ``inf`` when there are too few scores to promise
    ``coverage`` (fewer than ``1 / (1 - coverage) - 1``)."""
    n = sorted_scores.size
    if n == 0:
        return math.inf
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        return math.inf
    return float(sorted_scores[max(rank, 1) - 1])


def conditional_quantile(sorted_scores: np.ndarray, above: float, coverage: float) -> tuple[float, int] | None:
    """The conformal ``coverage`` quantile of the scores above ``above`` and how many there are:
    what the next attempt needs when the last one failed at ``above``. None when too few runs
    needed more than that to promise ``coverage``."""
    tail = sorted_scores[np.searchsorted(sorted_scores, above, side="right"):]
    q = conformal_quantile(tail, coverage)
    return (q, int(tail.size)) if math.isfinite(q) else None


def _mapped(values: Mapping[str, float], keys: np.ndarray, default: float) -> np.ndarray:
    """``values[key]`` for each key, ``default`` when absent, in one vectorised lookup."""
    if not values:
        return np.full(len(keys), default, dtype=float)
    index = pd.Index(list(values), dtype=object)
    table = np.append(np.fromiter(values.values(), dtype=float, count=len(values)), default)
    position = index.get_indexer(np.asarray(keys, dtype=object))
    return table[np.where(position >= 0, position, len(values))]


@dataclass
class _Levels:
    """Everything derived from the scores for one coverage, cached."""

    task_q: dict[str, float]
    global_q: float
    global_lower: float
    task_miss: dict[str, float]
    tag_miss: dict[str, float]
    global_miss: float
    n_task: dict[str, int]


@dataclass
class ConformalCalibrator:
    """Scores of held-out runs with their task and tag, and the quantiles derived from them.

    ``min_group`` is how many calibration runs a task needs before its own quantile replaces
    the global one; ``prior_runs`` is the weight of the promise when estimating a group's miss
    rate from few runs (a smoothed estimate, so one miss in three runs is not read as 33%).
    """

    scores: np.ndarray
    tasks: np.ndarray
    tags: np.ndarray
    min_group: int = 100
    prior_runs: float = 20.0
    _levels: dict[float, _Levels] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=float)
        self.tasks = np.asarray(self.tasks, dtype=object)
        self.tags = np.asarray(self.tags, dtype=object)
        order = np.argsort(self.scores, kind="stable")
        self._sorted = self.scores[order]
        frame = pd.DataFrame({"task": self.tasks, "score": self.scores})
        self._by_task = {
            str(task): np.sort(group.to_numpy())
            for task, group in frame.groupby("task", sort=False)["score"]
            if len(group) >= self.min_group
        }

    @property
    def n(self) -> int:
        return int(self.scores.size)

    def levels(self, coverage: float) -> _Levels:
        cached = self._levels.get(coverage)
        if cached is not None:
            return cached
        global_q = conformal_quantile(self._sorted, coverage)
        if not math.isfinite(global_q) and self._sorted.size:
            global_q = float(self._sorted[-1])
        global_lower = (
            float(np.quantile(self._sorted, 1 - coverage, method="lower")) if self._sorted.size else -math.inf
        )
        task_q = {}
        for task, scores in self._by_task.items():
            q = conformal_quantile(scores, coverage)
            if math.isfinite(q):
                task_q[task] = q
        threshold = np.array([task_q.get(str(t), global_q) for t in self.tasks]) if self.n else np.zeros(0)
        miss = self.scores > threshold
        alpha = 1.0 - coverage
        frame = pd.DataFrame({"task": self.tasks, "tag": self.tags, "miss": miss})

        def smoothed(by: str) -> dict[str, float]:
            grouped = frame.groupby(by, sort=False)["miss"].agg(["sum", "count"])
            rate = (grouped["sum"] + alpha * self.prior_runs) / (grouped["count"] + self.prior_runs)
            return {str(k): float(v) for k, v in rate.items()}

        levels = _Levels(
            task_q=task_q,
            global_q=global_q,
            global_lower=global_lower,
            task_miss=smoothed("task") if self.n else {},
            tag_miss=smoothed("tag") if self.n else {},
            global_miss=float(miss.mean()) if self.n else alpha,
            n_task={str(k): int(v) for k, v in frame["task"].value_counts().items()} if self.n else {},
        )
        self._levels[coverage] = levels
        return levels

    def scores_for(self, task: str) -> np.ndarray:
        """The sorted scores a task's quantile comes from: its own when it has enough, else all."""
        return self._by_task.get(str(task), self._sorted)

    def thresholds(self, tasks: np.ndarray, coverage: float) -> np.ndarray:
        levels = self.levels(coverage)
        if len(tasks) == 1:
            return np.array([levels.task_q.get(tasks[0], levels.global_q)])
        return _mapped(levels.task_q, tasks, levels.global_q)

    def miss_rates(self, tasks: np.ndarray, tags: np.ndarray, coverage: float) -> np.ndarray:
        """Measured (smoothed) held-out miss rate of each task, else of its tag, else overall."""
        levels = self.levels(coverage)
        if len(tasks) == 1:
            rate = levels.task_miss.get(tasks[0])
            return np.array([rate if rate is not None else levels.tag_miss.get(tags[0], levels.global_miss)])
        by_tag = _mapped(levels.tag_miss, tags, levels.global_miss)
        by_task = _mapped(levels.task_miss, tasks, np.nan)
        return np.where(np.isnan(by_task), by_tag, by_task)

    def to_state(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "tasks": [str(t) for t in self.tasks],
            "tags": [str(t) for t in self.tags],
            "min_group": int(self.min_group),
            "prior_runs": float(self.prior_runs),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ConformalCalibrator":
        return cls(
            scores=np.asarray(state["scores"], dtype=float),
            tasks=np.array(list(state["tasks"]), dtype=object),
            tags=np.array(list(state["tags"]), dtype=object),
            min_group=int(state["min_group"]),
            prior_runs=float(state["prior_runs"]),
        )
