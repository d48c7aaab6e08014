"""A calibrated margin for the answers the LearnedAdvisor hands to the ResourceAdvisor.

Below ``min_history`` runs of a task the model does not answer; the ResourceAdvisor does. Its
own chain for that case (a high percentile of one to four runs, widened by ``1 + 1/n``) is safe
but arbitrary: on replayed Sandia-Ross memory it left more idle memory than the model for the
same number of OOM kills. Here the fallback's answer is instead the *median* of what the task
(else its tag) used, times one margin measured on held-out runs that had short history when
they were submitted: the smallest margin under which ``coverage`` of them fitted (split
conformal, as :mod:`scalable.advising.calibration` does for the model). Answers from the task's
own runs and answers from its tag's runs err very differently (a user's tasks differ more than
one task's runs), so each source gets its own margin when it has the runs to back one.

The held-out answers are the ResourceAdvisor's as of each run's submission: only the runs that
had finished by then count (never one that ended after it was submitted).

With an :class:`~scalable.advising.elasticity.Elasticity` (the law of memory on an input pooled
over tasks), an answer from the task's own runs is scaled to the run's input before it is
scored, ``(x / x_ref) ** exponent`` with ``x_ref`` the median input of the runs it came from, and
the margin is the one under which those scaled answers fitted: the first runs to finish are
the small ones, and the margin alone cannot know by how much a later input is larger.
"""

from __future__ import annotations

import math
import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalable.advising.calibration import conformal_quantile
from scalable.advising.elasticity import Elasticity
from scalable.advising.resource_advisor import usage_columns

__all__ = ["FallbackCalibration", "FALLBACK_QUANTILE"]

#: the percentile of a short history the calibrated margin multiplies
FALLBACK_QUANTILE = 0.5


SOURCES = ("task", "tag")


@dataclass
class FallbackCalibration:
    """Log-ratios ``log(used / median answer)`` of held-out short-history runs, and where each
    answer came from ("task" or "tag", as :meth:`ResourceAdvisor.memory_percentile` says)."""

    scores: np.ndarray
    sources: np.ndarray | None = None
    quantile: float = FALLBACK_QUANTILE
    #: how answers from a task's own runs were scaled to the run's input (None: not scaled)
    elasticity: Elasticity | None = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=float)
        sources = (np.full(scores.size, "task", dtype=object) if self.sources is None
                   else np.asarray(self.sources, dtype=object))
        order = np.argsort(scores, kind="stable")
        self.scores, self.sources = scores[order], sources[order]

    @property
    def n(self) -> int:
        return int(self.scores.size)

    def count(self, source: str) -> int:
        return int(np.count_nonzero(self.sources == source))

    def margin(self, coverage: float, source: str | None = None) -> tuple[float, int] | None:
        """The factor on the median answer under which ``coverage`` of the held-out runs of
        ``source`` fitted, and how many runs back it; all sources pooled when that one has too
        few runs; None when even the pool cannot promise ``coverage``."""
        for scores in (self.scores[self.sources == source] if source is not None else None, self.scores):
            if scores is None:
                continue
            q = conformal_quantile(scores, coverage)
            if math.isfinite(q):
                return math.exp(q), int(scores.size)
        return None

    @classmethod
    def measure(
        cls,
        frame: pd.DataFrame,
        rows: np.ndarray,
        quantile: float = FALLBACK_QUANTILE,
        use_tag_history: bool = True,
        elasticity: Elasticity | None = None,
        inputs: pd.DataFrame | None = None,
    ) -> "FallbackCalibration":
        """Scores of ``rows`` of ``frame`` (positions) against the answer
        :meth:`ResourceAdvisor.memory_percentile` would have given when each was submitted:
        from the task's runs that had ended strictly before, else from its tag's (a run still
        going is unknown, and no known run is left out). ``inputs`` (the input features, one
        column each, row-aligned with ``frame``) with an ``elasticity`` scale the task answers."""
        usable = usage_columns(frame)["memory"].to_numpy(dtype=float)
        used = frame["peak_memory_bytes"].to_numpy(dtype=float, na_value=np.nan)
        submitted = frame["submitted_at"].to_numpy(dtype=float)
        ended = frame["end_time"].to_numpy(dtype=float)
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[np.isfinite(used[rows]) & (used[rows] > 0)]
        tasks = frame["task"].astype(str).to_numpy(dtype=object)
        answer = _as_of_quantiles(tasks, usable, ended, rows, submitted, quantile)
        source = np.where(np.isnan(answer), None, "task").astype(object)
        if use_tag_history and "tag" in frame.columns:
            tags = frame["tag"].astype(object).where(frame["tag"].notna(), None).to_numpy(dtype=object)
            need = np.flatnonzero(np.isnan(answer))
            need = need[pd.notna(tags[rows[need]])]
            if need.size:
                from_tag = _as_of_quantiles(tags, usable, ended, rows[need], submitted, quantile)
                hit = ~np.isnan(from_tag)
                answer[need[hit]] = from_tag[hit]
                source[need[hit]] = "tag"
        scaled = elasticity if elasticity is not None and elasticity.feature is not None else None
        if scaled is not None and inputs is not None and scaled.feature in inputs.columns:
            x = pd.to_numeric(inputs[scaled.feature], errors="coerce").to_numpy(dtype=float, copy=True)
            x[~(x > 0)] = np.nan
            with np.errstate(divide="ignore", invalid="ignore"):
                log_x = np.log(x)
            reference = _as_of_quantiles(tasks, log_x, ended, rows, submitted, 0.5)
            shift = scaled.exponent * (log_x[rows] - reference)
            by_task = (source == "task") & np.isfinite(shift)
            answer[by_task] = answer[by_task] * np.exp(shift[by_task])
        else:
            scaled = None
        keep = np.isfinite(answer) & (answer > 0)
        scores = np.log(used[rows[keep]] / answer[keep])
        return cls(scores, source[keep], quantile, scaled)

    def to_state(self) -> dict[str, Any]:
        return {"scores": self.scores, "from_tag": self.sources == "tag", "quantile": self.quantile,
                "elasticity": None if self.elasticity is None else self.elasticity.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "FallbackCalibration":
        from_tag = np.asarray(state["from_tag"], dtype=bool)
        stored = state.get("elasticity")  # absent in models stored before input scaling
        return cls(np.asarray(state["scores"], dtype=float), np.where(from_tag, "tag", "task").astype(object),
                   float(state["quantile"]), Elasticity.from_state(stored) if stored is not None else None)


def _as_of_quantiles(
    keys: np.ndarray, values: np.ndarray, ended: np.ndarray, asked: np.ndarray, submitted: np.ndarray, q: float
) -> np.ndarray:
    """For each row in ``asked``, the ``q`` quantile of ``values`` over the rows of the same key
    that ended strictly before it was submitted (NaN when there is none). One sweep through
    end and submit events in time order, over the keys that are asked about only."""
    out = np.full(asked.size, np.nan)
    wanted = set(keys[asked].tolist())
    known_rows = np.flatnonzero(np.isfinite(values) & pd.Series(keys).isin(wanted).to_numpy())
    times = np.concatenate([submitted[asked], ended[known_rows]])
    # at equal times a submission comes first: a run ending at that instant is not yet known
    kinds = np.concatenate([np.zeros(asked.size, dtype=np.int8), np.ones(known_rows.size, dtype=np.int8)])
    which = np.concatenate([np.arange(asked.size), known_rows])
    order = np.lexsort((kinds, times))
    running: dict[Any, _RunningQuantile] = {}
    key_list, value_list, asked_keys = keys.tolist(), values.tolist(), keys[asked].tolist()
    for kind, i in zip(kinds[order].tolist(), which[order].tolist()):
        if kind:
            state = running.get(key_list[i])
            if state is None:
                state = running[key_list[i]] = _RunningQuantile(q)
            state.add(value_list[i])
        else:
            state = running.get(asked_keys[i])
            if state is not None:
                out[i] = state.value
    return out


class _RunningQuantile:
    """numpy's "higher" ``q`` quantile (the one the ResourceAdvisor's Percentile takes) of a
    growing set of values, in O(log n) per value: the smallest ``ceil(q (n - 1)) + 1`` values
    sit in a max-heap whose top is the answer, the rest in a min-heap."""

    __slots__ = ("q", "low", "high")

    def __init__(self, q: float) -> None:
        self.q = q
        self.low: list[float] = []  # negated
        self.high: list[float] = []

    def add(self, value: float) -> None:
        if self.low and value < -self.low[0]:
            heapq.heappush(self.low, -value)
        else:
            heapq.heappush(self.high, value)
        n = len(self.low) + len(self.high)
        want = math.ceil(self.q * (n - 1) - 1e-12) + 1
        while len(self.low) < want:
            heapq.heappush(self.low, -heapq.heappop(self.high))
        while len(self.low) > want:
            heapq.heappush(self.high, -heapq.heappop(self.low))

    @property
    def value(self) -> float:
        return -self.low[0]
