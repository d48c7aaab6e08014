"""Time-ordered cross-validation of the advisors.

Shuffled k-fold flatters a memory advisor: a fold's training data would hold runs that ended
after the runs it is scored on, often siblings of the same batch. Here the runs are ordered by
submission and cut into consecutive test blocks (scikit-learn's ``TimeSeriesSplit``); each
block is advised by an advisor trained only on runs that had *ended* before the block's first
submission, so no task's future reaches its training data, whichever task it is.

Scores, per target and per fold and pooled:

* ``coverage``: share of runs whose usage fit the recommendation; ``under_provision_rate`` is
  its complement (memory: the run would have been OOM-killed);
* ``slack``: ``sum(rec - used) / sum(rec)`` over the runs that fit, the share of what was
  reserved that went unused;
* ``mae``: mean absolute error of the advisor's central estimate (median memory, cpus,
  predicted duration).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import TimeSeriesSplit

from scalable.advising.learned_advisor import LearnedAdvisor, _check_model_type
from scalable.advising.resource_advisor import ResourceAdvisor, usage_columns

__all__ = ["cross_validate", "CrossValidationResult", "score"]

_FEATURE_PREFIX = "feature."


def score(recommended: np.ndarray, used: np.ndarray, central: np.ndarray | None = None) -> dict[str, float]:
    """Coverage, under-provision rate, slack (and MAE of ``central``) over the finite pairs."""
    recommended = np.asarray(recommended, dtype=float)
    used = np.asarray(used, dtype=float)
    ok = np.isfinite(recommended) & np.isfinite(used)
    rec, obs = recommended[ok], used[ok]
    fits = rec >= obs
    out = {
        "n": int(ok.sum()),
        "coverage": float(fits.mean()) if ok.any() else float("nan"),
        "under_provision_rate": float(1 - fits.mean()) if ok.any() else float("nan"),
        "slack": float(np.sum(rec[fits] - obs[fits]) / np.sum(rec[fits])) if fits.any() and np.sum(rec[fits]) > 0 else float("nan"),
    }
    if central is not None:
        c = np.asarray(central, dtype=float)[ok]
        finite = np.isfinite(c)
        out["mae"] = float(np.mean(np.abs(c[finite] - obs[finite]))) if finite.any() else float("nan")
    return out


@dataclass
class CrossValidationResult:
    """Per-fold and pooled scores; ``summary`` has one row per target."""

    folds: pd.DataFrame
    summary: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dict(self.settings),
            "summary": self.summary.reset_index().to_dict(orient="records"),
            "folds": self.folds.to_dict(orient="records"),
        }

    def __repr__(self) -> str:
        return f"CrossValidationResult({self.settings})\n{self.summary.to_string()}"


def _requests(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = [c for c in frame.columns if c.startswith(_FEATURE_PREFIX)]
    names = [c[len(_FEATURE_PREFIX):] for c in columns]
    values = frame[columns].astype(object).to_numpy() if columns else np.empty((len(frame), 0), dtype=object)
    tags = frame["tag"].tolist() if "tag" in frame.columns else [None] * len(frame)
    out = []
    for task, tag, row in zip(frame["task"].astype(str).tolist(), tags, values):
        features = {n: v for n, v in zip(names, row) if v is not None and v is not pd.NA and v == v}
        out.append({"task": task, "tag": tag if isinstance(tag, str) else None, "input_features": features})
    return out


def cross_validate(
    frame_or_runs_dir: pd.DataFrame | str | os.PathLike[str],
    model_type: str = "gradient_boosting",
    n_splits: int = 5,
    coverage: float = 0.95,
    advisor: str = "learned",
    min_train_runs: int = 50,
    **params: Any,
) -> CrossValidationResult:
    """Expanding-window, time-ordered cross-validation of an advisor.

    ``advisor`` is "learned" (a :class:`LearnedAdvisor` of ``model_type``) or "percentile" (a
    :class:`ResourceAdvisor`); ``params`` go to its constructor. A fold whose training data
    has fewer than ``min_train_runs`` runs is skipped.
    """
    if advisor not in ("learned", "percentile"):
        raise ValueError(f"advisor must be 'learned' or 'percentile', not {advisor!r}")
    if advisor == "learned":
        _check_model_type(model_type)
    if isinstance(frame_or_runs_dir, pd.DataFrame):
        frame = frame_or_runs_dir
    else:
        from scalable.telemetry.loader import load_tasks

        frame = load_tasks(frame_or_runs_dir).frame
    if len(frame) < n_splits + 1:
        raise ValueError(f"{len(frame)} runs are too few for {n_splits} time-ordered folds")
    frame = frame.sort_values(["submitted_at", "end_time"], kind="stable").reset_index(drop=True)
    usage = usage_columns(frame)
    end_time = frame["end_time"].to_numpy(dtype=float)
    submitted = frame["submitted_at"].to_numpy(dtype=float)

    rows = []
    pooled: dict[str, list[np.ndarray]] = {t: [] for t in ("memory", "cpus", "duration")}
    for fold, (_, test) in enumerate(TimeSeriesSplit(n_splits=n_splits).split(frame)):
        cutoff = submitted[test[0]]
        train = np.flatnonzero(end_time < cutoff)
        if len(train) < min_train_runs:
            continue
        if advisor == "learned":
            model: Any = LearnedAdvisor(model_type=model_type, coverage=coverage, **params)
        else:
            model = ResourceAdvisor(coverage=coverage, **params)
        model.fit(frame.iloc[train])
        test_frame = frame.iloc[test]
        recs = model.recommend_batch(_requests(test_frame))
        memory = np.array([r.memory_bytes for r in recs], dtype=float)
        memory_central = np.array(
            [r.details.get("predicted_median_memory_bytes", r.interval[0] if r.interval else np.nan) for r in recs],
            dtype=float,
        )
        cpus = np.array([r.cpus_exact if r.cpus_exact is not None else r.cpus for r in recs], dtype=float)
        duration = np.array([np.nan if r.predicted_duration_s is None else r.predicted_duration_s for r in recs])
        learned_share = float(np.mean([r.method == "learned" for r in recs]))
        used = usage.iloc[test]
        per_target = {
            "memory": (memory, used["memory"].to_numpy(), memory_central),
            "cpus": (cpus, used["cpus"].to_numpy(), cpus),
            "duration": (duration, used["duration"].to_numpy(), duration),
        }
        for target, (rec, obs, central) in per_target.items():
            rows.append({"fold": fold, "target": target, "n_train": int(len(train)), "learned_share": learned_share,
                         **score(rec, obs, central)})
            pooled[target].append(np.vstack([rec, obs, central]))
    folds = pd.DataFrame(rows)
    summary_rows = []
    for target, parts in pooled.items():
        if not parts:
            continue
        rec, obs, central = np.hstack(parts)
        summary_rows.append({"target": target, **score(rec, obs, central)})
    summary = pd.DataFrame(summary_rows).set_index("target") if summary_rows else pd.DataFrame()
    settings = {"advisor": advisor, "model_type": model_type if advisor == "learned" else None,
                "n_splits": n_splits, "coverage": coverage, "folds_scored": int(folds["fold"].nunique()) if len(folds) else 0}
    return CrossValidationResult(folds=folds, summary=summary, settings=settings)
