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
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalable.advising.calibration import conformal_quantile
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
    ) -> "FallbackCalibration":
        """Scores of ``rows`` of ``frame`` (positions) against the answer
        :meth:`ResourceAdvisor.memory_percentile` would have given when each was submitted.

        One sweep through finish and submit events in time order keeps every task's and tag's
        known peaks sorted, so each answer is exact as of its own submission: the runs that
        ended strictly before it, no more (a run still going is unknown) and no fewer.
        """
        usable = usage_columns(frame)["memory"].to_numpy(dtype=float)
        used = frame["peak_memory_bytes"].to_numpy(dtype=float, na_value=np.nan)
        tasks = frame["task"].astype(str).to_numpy(dtype=object)
        tags = (frame["tag"].astype(object).where(frame["tag"].notna(), None).to_numpy(dtype=object)
                if "tag" in frame.columns else np.full(len(frame), None, dtype=object))
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[np.isfinite(used[rows]) & (used[rows] > 0)]
        finished = np.flatnonzero(np.isfinite(usable))
        times = np.concatenate([frame["submitted_at"].to_numpy(dtype=float)[rows],
                                frame["end_time"].to_numpy(dtype=float)[finished]])
        # at equal times a submission comes first: a run ending at that instant is not yet known
        kinds = np.concatenate([np.zeros(rows.size, dtype=np.int8), np.ones(finished.size, dtype=np.int8)])
        which = np.concatenate([rows, finished])
        order = np.lexsort((kinds, times))
        known: dict[tuple[str, Any], list[float]] = {}
        scores: list[float] = []
        sources: list[str] = []
        for kind, i in zip(kinds[order].tolist(), which[order].tolist()):
            if kind:
                insort(known.setdefault(("task", tasks[i]), []), usable[i])
                if tags[i] is not None:
                    insort(known.setdefault(("tag", tags[i]), []), usable[i])
                continue
            peaks, source = known.get(("task", tasks[i])), "task"
            if not peaks and use_tag_history and tags[i] is not None:
                peaks, source = known.get(("tag", tags[i])), "tag"
            if peaks:
                # numpy's "higher" quantile, the one the ResourceAdvisor's Percentile takes
                answer = peaks[math.ceil(quantile * (len(peaks) - 1) - 1e-12)]
                if answer > 0:
                    scores.append(math.log(used[i] / answer))
                    sources.append(source)
        return cls(np.asarray(scores, dtype=float), np.asarray(sources, dtype=object), quantile)

    def to_state(self) -> dict[str, Any]:
        return {"scores": self.scores, "from_tag": self.sources == "tag", "quantile": self.quantile}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "FallbackCalibration":
        from_tag = np.asarray(state["from_tag"], dtype=bool)
        return cls(np.asarray(state["scores"], dtype=float), np.where(from_tag, "tag", "task").astype(object),
                   float(state["quantile"]))
