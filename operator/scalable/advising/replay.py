"""Time-ordered replay: score an advisor the way it would have been used.

Shuffled cross-validation flatters a memory advisor: it lets a recommendation see jobs that ran
*after* it, and a user's burst of near-identical jobs leaks straight into the answer. Here jobs
are replayed in submit order and a recommendation may use only jobs whose ``end_time`` is
before the recommended job was submitted. The later part of the history is scored.

How the replay keeps that promise cheaply: the scored jobs are cut into consecutive *blocks*.
Everything the advisor knows while answering a block is the set of jobs that finished before the
block's first submit time, so no job in the block can see anything that finished after its own
submission (it may see less than it could, never more). The advisor is refitted at checkpoints
(every ``refit_every`` scored jobs or ``refit_seconds`` of trace time) on what had finished by
then, and between refits its ``update()`` (if it has one) is given the newly known history.

Metrics (see :func:`score_memory`): the *under-provision rate* (recommended < used: the job
would have been OOM-killed) and the *slack*, ``sum(rec - used) / sum(rec)`` over the jobs that
fit. One number alone says nothing, since any advisor trades one for the other with a margin;
:func:`slack_at_rate` compares advisors at an *equal* under-provision rate by finding, for each,
the multiplicative margin that reaches that rate on the scored jobs.

This module is pure pandas/numpy and never imports the CLI, the scaler or Kubernetes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "TARGETS",
    "ReplayResult",
    "AdvisorPredictor",
    "PercentileBaseline",
    "replay",
    "replay_many",
    "under_provision_rate",
    "slack",
    "score_memory",
    "score_duration",
    "margin_for_rate",
    "slack_at_rate",
    "interpolate_at_rate",
    "tradeoff_curve",
    "margin_sweep",
    "best_percentile_at_rate",
    "requested_baseline",
    "last_jobs_mean",
    "summarize_memory",
    "DEFAULT_RATES",
]

#: under-provision rates at which advisors are compared
DEFAULT_RATES = (0.01, 0.02, 0.05)

#: target name -> (observed column in the task frame, attribute of a Recommendation)
TARGETS: dict[str, tuple[str, str]] = {
    "memory": ("peak_memory_bytes", "memory_bytes"),
    "duration": ("duration_s", "predicted_duration_s"),
}

FEATURE_PREFIX = "feature."

ProgressCallback = Callable[[int, int, str], None]


class Predictor(Protocol):
    """What the replay drives: fit on known history, answer a block of jobs as an array."""

    name: str

    def fit(self, history: pd.DataFrame) -> None: ...

    def update(self, history: pd.DataFrame, new: pd.DataFrame | None = None) -> None: ...

    def predict(self, jobs: pd.DataFrame, target: str) -> pd.DataFrame: ...


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def _clean(recommended: Any, used: Any) -> tuple[np.ndarray, np.ndarray]:
    rec = np.asarray(recommended, dtype=float)
    obs = np.asarray(used, dtype=float)
    if rec.shape != obs.shape:
        raise ValueError(f"recommended and used differ in shape: {rec.shape} vs {obs.shape}")
    keep = np.isfinite(obs) & ~np.isnan(rec)
    return rec[keep], obs[keep]


def under_provision_rate(recommended: Any, used: Any) -> float:
    """Fraction of jobs whose recommendation was below what they used (they would be killed)."""
    rec, obs = _clean(recommended, used)
    if rec.size == 0:
        return float("nan")
    return float(np.mean(rec < obs))


def slack(recommended: Any, used: Any) -> float:
    """``sum(rec - used) / sum(rec)`` over the jobs that fit: the share of reserved memory idle.

    Jobs that did not fit are excluded: they are counted by the under-provision rate, and
    their (negative) slack would otherwise reward under-provisioning.
    """
    rec, obs = _clean(recommended, used)
    fits = rec >= obs
    total = rec[fits].sum()
    if total <= 0:
        return float("nan")
    return float((rec[fits] - obs[fits]).sum() / total)


def score_memory(recommended: Any, used: Any) -> dict[str, float]:
    """Under-provision rate, slack, and the count they were measured on."""
    rec, obs = _clean(recommended, used)
    return {
        "n": int(rec.size),
        "under_provision_rate": under_provision_rate(rec, obs),
        "slack": slack(rec, obs),
    }


def score_duration(predicted: Any, actual: Any) -> dict[str, float]:
    """Errors of a duration prediction: MAE, median and relative errors, under-prediction rate."""
    pred, obs = _clean(predicted, actual)
    if pred.size == 0:
        return {"n": 0, "mae_s": float("nan"), "median_abs_error_s": float("nan"),
                "under_prediction_rate": float("nan"), "mean_bias_s": float("nan")}
    err = pred - obs
    return {
        "n": int(pred.size),
        "mae_s": float(np.mean(np.abs(err))),
        "median_abs_error_s": float(np.median(np.abs(err))),
        "under_prediction_rate": float(np.mean(pred < obs)),
        "mean_bias_s": float(np.mean(err)),
    }


def margin_for_rate(recommended: Any, used: Any, rate: float) -> float:
    """The smallest multiplicative margin ``m`` such that ``rec * m`` under-provisions at most
    ``rate`` of the jobs.

    Exact, not a grid search: job *i* is under-provisioned at margin ``m`` exactly when
    ``used_i / rec_i > m``, so the answer is an order statistic of those ratios.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), not {rate}")
    rec, obs = _clean(recommended, used)
    if rec.size == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rec > 0, obs / rec, np.where(obs > 0, np.inf, 0.0))
    ratio = np.sort(ratio)
    allowed = int(math.floor(rate * ratio.size + 1e-9))
    return float(ratio[ratio.size - allowed - 1])


def slack_at_rate(recommended: Any, used: Any, rate: float) -> dict[str, float]:
    """Slack after scaling the recommendations to reach ``rate`` under-provisioning.

    Applies the same oracle tuning to every advisor, so the comparison is fair: it asks which
    advisor wastes less memory for the same number of OOM kills.
    """
    rec, obs = _clean(recommended, used)
    margin = margin_for_rate(rec, obs, rate)
    if not math.isfinite(margin):
        return {"rate_target": rate, "margin": margin, "under_provision_rate": float("nan"),
                "slack": float("nan")}
    scaled = rec * margin
    return {
        "rate_target": rate,
        "margin": margin,
        "under_provision_rate": under_provision_rate(scaled, obs),
        "slack": slack(scaled, obs),
    }


def margin_sweep(recommended: Any, used: Any, *, max_rate: float = 0.2, include: Iterable[float] = (),
                 points: int = 161, pad: float = 1.25) -> np.ndarray:
    """Margins for a trade-off curve, derived from the data rather than fixed.

    Geometric from the margin that reaches ``max_rate`` under-provisioning to the one that
    reaches none (each widened by ``pad``), always spanning margin 1 (as answered) and every
    margin in ``include`` (e.g. the ones a table reports), which are also swept exactly. An
    advisor that over-asks tenfold needs margins near 0.1, one that under-asks needs more than
    1: a fixed range would leave its curve off the plot.
    """
    rec, obs = _clean(recommended, used)
    needed = [1.0, *[float(m) for m in include]]
    if rec.size:
        needed += [margin_for_rate(rec, obs, min(max_rate, 1 - 1e-9)), margin_for_rate(rec, obs, 0.0)]
    needed = [m for m in needed if math.isfinite(m) and m > 0]
    low, high = min(needed) / pad, max(needed) * pad
    extra = [m for m in include if math.isfinite(m) and m > 0]
    return np.unique(np.concatenate([np.geomspace(low, high, points), np.asarray(extra, dtype=float)]))


def tradeoff_curve(recommended: Any, used: Any, margins: Iterable[float] | None = None) -> pd.DataFrame:
    """Under-provision rate and slack for a sweep of multiplicative margins (for plots);
    by default the sweep :func:`margin_sweep` derives from the data."""
    rec, obs = _clean(recommended, used)
    if margins is None:
        margins = margin_sweep(rec, obs)
    rows = []
    for m in margins:
        scaled = rec * m
        rows.append({"margin": float(m), "under_provision_rate": under_provision_rate(scaled, obs),
                     "slack": slack(scaled, obs)})
    return pd.DataFrame(rows)


def interpolate_at_rate(rates: Sequence[float], slacks: Sequence[float], target: float) -> float:
    """Slack at under-provision rate ``target`` by linear interpolation along a sweep.

    For sweeps that cannot be solved exactly (e.g. of the coverage parameter, one replay per
    point). Points are sorted by rate; duplicates keep the smallest slack (the better point).
    Outside the swept range the answer is NaN rather than an extrapolation.
    """
    frame = pd.DataFrame({"rate": np.asarray(rates, float), "slack": np.asarray(slacks, float)}).dropna()
    if frame.empty:
        return float("nan")
    frame = frame.groupby("rate", as_index=False)["slack"].min().sort_values("rate")
    x, y = frame["rate"].to_numpy(), frame["slack"].to_numpy()
    if target < x[0] or target > x[-1]:
        return float("nan")
    return float(np.interp(target, x, y))


# --------------------------------------------------------------------------------------------
# predictors
# --------------------------------------------------------------------------------------------


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(FEATURE_PREFIX)]


def requests_from(jobs: pd.DataFrame) -> list[dict[str, Any]]:
    """``recommend_batch`` requests for the rows of a task frame (missing features left out).

    The tag (worker group, or the submitting user in imported traces) is part of the request
    when known: it is known when a job is submitted, and an advisor may use its history.
    """
    cols = feature_columns(jobs)
    names = [c[len(FEATURE_PREFIX):] for c in cols]
    tasks = jobs["task"].astype(str).tolist()
    tags = (jobs["tag"].astype(object).where(jobs["tag"].notna(), None).tolist()
            if "tag" in jobs.columns else [None] * len(tasks))
    values = jobs[cols].astype(object).to_numpy() if cols else [()] * len(tasks)
    out = []
    for task, tag, row in zip(tasks, tags, values):
        feats = {}
        for name, value in zip(names, row):
            if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
                continue
            if isinstance(value, np.generic):
                value = value.item()
            feats[name] = value
        request: dict[str, Any] = {"task": task, "input_features": feats}
        if tag is not None:
            request["tag"] = str(tag)
        out.append(request)
    return out


class AdvisorPredictor:
    """Drives a ResourceAdvisor/LearnedAdvisor-like object (``fit``, ``recommend_batch``,
    optional ``update``) through the replay.

    ``factory`` builds a fresh advisor for each refit, so no state survives from a fit on
    a different slice of history.
    """

    def __init__(self, name: str, factory: Callable[[], Any], *, use_update: bool = True,
                 prefer_extend: bool = True):
        self.name = name
        self.factory = factory
        self.use_update = use_update
        self.prefer_extend = prefer_extend
        self.advisor: Any = None
        self.fit_seconds = 0.0
        self.update_seconds = 0.0
        self.predict_seconds = 0.0
        self.fits = 0
        self.updates = 0

    def fit(self, history: pd.DataFrame) -> None:
        t0 = time.perf_counter()
        advisor = self.factory()
        result = advisor.fit(history)
        self.advisor = result if result is not None else advisor
        self.fit_seconds += time.perf_counter() - t0
        self.fits += 1

    def update(self, history: pd.DataFrame, new: pd.DataFrame | None = None) -> None:
        """Hand the advisor what became known since the last call: ``extend(new)`` when it
        offers one (only the new rows: cheaper over hundreds of blocks), else ``update(history)``."""
        if not self.use_update:
            return
        extend = getattr(self.advisor, "extend", None) if self.prefer_extend else None
        update = getattr(self.advisor, "update", None)
        t0 = time.perf_counter()
        if extend is not None and new is not None:
            if len(new):
                extend(new)
        elif update is not None:
            update(history)
        else:
            return
        self.update_seconds += time.perf_counter() - t0
        self.updates += 1

    def predict(self, jobs: pd.DataFrame, target: str) -> pd.DataFrame:
        t0 = time.perf_counter()
        recs = self.advisor.recommend_batch(requests_from(jobs))
        self.predict_seconds += time.perf_counter() - t0
        return pd.DataFrame(
            {
                "memory": [_attr(r, "memory_bytes") for r in recs],
                "duration": [_attr(r, "predicted_duration_s") for r in recs],
                "confidence": [_attr(r, "confidence") for r in recs],
                "method": [_attr(r, "method") for r in recs],
                # what a fallback answered with (e.g. "default" for a never-seen task), if said
                "fallback": [(getattr(r, "details", None) or {}).get("fallback_method") for r in recs],
                # the model's central estimate, when it says: lets a replay tell whether the
                # interval (not the estimate) is what costs slack
                "median": [(getattr(r, "details", None) or {}).get("predicted_median_memory_bytes") for r in recs],
            },
            index=jobs.index,
        )

    def stats(self) -> dict[str, float]:
        return {"fits": self.fits, "updates": self.updates, "fit_seconds": self.fit_seconds,
                "update_seconds": self.update_seconds, "predict_seconds": self.predict_seconds}


def _attr(rec: Any, name: str) -> Any:
    value = getattr(rec, name, None)
    if value is None and isinstance(rec, Mapping):
        value = rec.get(name)
    return float("nan") if value is None else value


class PercentileBaseline:
    """The honest baseline: a percentile of the task's own observed history.

    For each job, the ``percentile`` of the target over the task's finished jobs (optionally only
    its last ``window``); a task with fewer than ``min_history`` observations falls back to its
    tag (user), then to everything. Vectorised per block: a groupby over known history.
    Several percentiles and windows are answered in one pass (``predict_all``) so the "best
    percentile advisor" sweep costs one replay.
    """

    def __init__(self, percentiles: Sequence[float] = (50, 75, 90, 95, 99, 100),
                 windows: Sequence[int | None] = (None, 10), min_history: int = 1,
                 keys: Sequence[str] = ("task", "tag")):
        self.percentiles = tuple(percentiles)
        self.windows = tuple(windows)
        self.min_history = min_history
        self.keys = tuple(keys)
        self.name = "percentile"
        self.history: pd.DataFrame | None = None

    def variant_names(self) -> list[str]:
        return [self._variant(p, w) for w in self.windows for p in self.percentiles]

    @staticmethod
    def _variant(p: float, window: int | None) -> str:
        label = "max" if p == 100 else f"p{p:g}"
        return f"{label} of task" + ("" if window is None else f" (last {window})")

    def fit(self, history: pd.DataFrame) -> None:
        self.history = history

    def update(self, history: pd.DataFrame, new: pd.DataFrame | None = None) -> None:
        self.history = history

    def predict(self, jobs: pd.DataFrame, target: str) -> pd.DataFrame:
        column = TARGETS[target][0]
        hist = self.history
        out = pd.DataFrame(index=jobs.index)
        if hist is None or hist.empty:
            for name in self.variant_names():
                out[name] = np.nan
            return out
        hist = hist.loc[hist[column].notna() & (hist[column] >= 0), [*self.keys, column, "end_time"]]
        hist = hist.sort_values("end_time", kind="stable")
        # only the groups this block asks about (whole groups, so windows are unaffected): keeps a
        # block's cost proportional to its own jobs' history, not to all history
        relevant = {key: hist[hist[key].isin(pd.unique(jobs[key].dropna()))]
                    for key in self.keys if key in jobs.columns and key in hist.columns}
        qs = [p / 100.0 for p in self.percentiles]
        for window in self.windows:
            answers = {p: np.full(len(jobs), np.nan) for p in self.percentiles}
            filled = np.zeros(len(jobs), dtype=bool)
            for key in self.keys:
                if filled.all() or key not in relevant:
                    continue
                sub = relevant[key]
                hk = sub if window is None else sub.groupby(key, sort=False).tail(window)
                grouped = hk.groupby(key, sort=False)[column]
                counts = grouped.size()
                quant = grouped.quantile(qs).unstack()
                jk = jobs[key].to_numpy()
                enough = pd.Series(jk).map(counts).fillna(0).to_numpy() >= self.min_history
                take = enough & ~filled
                if take.any():
                    for p, q in zip(self.percentiles, qs):
                        vals = pd.Series(jk[take]).map(quant[q]).to_numpy(dtype=float)
                        answers[p][take] = vals
                    filled |= take
            if (~filled).any():
                h = hist if window is None else hist.groupby(self.keys[0], sort=False).tail(window)
                allq = h[column].quantile(qs).to_numpy()
                for p, v in zip(self.percentiles, allq):
                    answers[p][~filled] = v
            for p in self.percentiles:
                out[self._variant(p, window)] = answers[p]
        return out


# --------------------------------------------------------------------------------------------
# the replay
# --------------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a replay produced: one row per scored job, the predictors' answers beside the truth."""

    target: str
    scored: pd.DataFrame
    predictors: dict[str, dict[str, float]] = field(default_factory=dict)
    blocks: int = 0
    refits: int = 0
    seconds: float = 0.0
    n_jobs: int = 0
    leak_checks: int = 0

    @property
    def truth(self) -> pd.Series:
        return self.scored["used"]


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    required = {"task", "submitted_at", "end_time"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"task frame lacks columns {sorted(missing)}")
    jobs = frame.copy()
    if "tag" not in jobs.columns:
        jobs["tag"] = None
    # The replay needs a strict knowledge order; a job without an end time is never known.
    jobs["end_time"] = pd.to_numeric(jobs["end_time"], errors="coerce").fillna(np.inf)
    jobs = jobs.sort_values(["submitted_at", "end_time"], kind="stable").reset_index(drop=True)
    return jobs


def replay_many(
    frame: pd.DataFrame,
    predictors: Sequence[Predictor],
    *,
    target: str = "memory",
    score_fraction: float = 0.5,
    block_size: int = 200,
    refit_every: int | None = 5000,
    refit_seconds: float | None = None,
    min_history: int = 1,
    progress: ProgressCallback | None = None,
    carry: Sequence[str] = (),
) -> ReplayResult:
    """Replay ``frame`` in submit order through each predictor and collect scored answers.

    Every predictor sees exactly the same blocks and the same known history, so their answers
    are comparable row by row. ``refit_every`` (scored jobs) and ``refit_seconds`` (trace time)
    both trigger a refit, whichever comes first; between refits predictors get ``update``.
    ``carry`` names extra columns of ``frame`` copied into the scored rows (e.g. a baseline
    computed beforehand).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(TARGETS)}")
    if not 0 < score_fraction <= 1:
        raise ValueError("score_fraction must be in (0, 1]")
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    column = TARGETS[target][0]
    started = time.perf_counter()
    jobs = _prepare(frame)
    n = len(jobs)
    first = int(math.floor(n * (1 - score_fraction)))
    scored_idx = np.arange(first, n)
    # only jobs with an observation of the target are scored (they still count as history)
    observed = jobs[column].notna().to_numpy() if column in jobs.columns else np.zeros(n, bool)
    scored_idx = scored_idx[observed[scored_idx]]
    blocks = [scored_idx[i:i + block_size] for i in range(0, len(scored_idx), block_size)]

    end_time = jobs["end_time"].to_numpy(dtype=float)
    end_order = np.argsort(end_time, kind="stable")
    end_sorted = end_time[end_order]
    submitted = jobs["submitted_at"].to_numpy(dtype=float)

    answers: list[pd.DataFrame] = []
    last_fit_jobs = -1
    last_fit_time = -np.inf
    refits = 0
    leak_checks = 0
    known_count = -1
    done = 0
    for b, block in enumerate(blocks):
        cutoff = submitted[block[0]]
        known_n = int(np.searchsorted(end_sorted, cutoff, side="left"))
        known_rows = end_order[:known_n]
        if known_n < min_history:
            done += len(block)
            if progress:
                progress(done, len(scored_idx), "waiting for history")
            continue
        # the promise, checked on every block rather than trusted
        if known_n and not end_time[known_rows].max() < submitted[block].min():
            raise RuntimeError("replay would leak a job that finished after a recommended submit")
        leak_checks += 1
        history = jobs.iloc[np.sort(known_rows)]
        need_refit = (
            last_fit_jobs < 0
            or (refit_every is not None and done - last_fit_jobs >= refit_every)
            or (refit_seconds is not None and cutoff - last_fit_time >= refit_seconds)
        )
        if need_refit:
            for p in predictors:
                p.fit(history)
            last_fit_jobs, last_fit_time = done, cutoff
            refits += 1
        elif known_n != known_count:
            new_rows = jobs.iloc[np.sort(end_order[known_count:known_n])]
            for p in predictors:
                p.update(history, new_rows)
        known_count = known_n
        block_jobs = jobs.iloc[block]
        part = pd.DataFrame(index=block_jobs.index)
        for p in predictors:
            pred = p.predict(block_jobs, target)
            if isinstance(p, PercentileBaseline):
                for col in pred.columns:
                    part[col] = pred[col].to_numpy(dtype=float)
            else:
                part[p.name] = pd.to_numeric(pred[target], errors="coerce").to_numpy(dtype=float)
                if target != "duration":
                    part[f"{p.name}:duration"] = pd.to_numeric(pred["duration"], errors="coerce").to_numpy(dtype=float)
                part[f"{p.name}:confidence"] = pd.to_numeric(pred["confidence"], errors="coerce").to_numpy()
                part[f"{p.name}:method"] = pred["method"].to_numpy()
                part[f"{p.name}:fallback"] = pred["fallback"].to_numpy()
                part[f"{p.name}:median"] = pd.to_numeric(pred["median"], errors="coerce").to_numpy(dtype=float)
        answers.append(part)
        done += len(block)
        if progress:
            progress(done, len(scored_idx), f"block {b + 1}/{len(blocks)}")

    if answers:
        predicted = pd.concat(answers)
    else:
        predicted = pd.DataFrame(index=pd.Index([], dtype=int))
    base_cols = [c for c in ("task", "tag", "submitted_at", "end_time", "requested_memory_bytes",
                             "requested_cpus") if c in jobs.columns]
    feat_cols = [c for c in (f"{FEATURE_PREFIX}requested_time_s", f"{FEATURE_PREFIX}requested_memory_bytes")
                 if c in jobs.columns]
    extra = [c for c in carry if c in jobs.columns and c not in base_cols + feat_cols]
    scored = jobs.loc[predicted.index, base_cols + feat_cols + extra].copy()
    scored["used"] = jobs.loc[predicted.index, column].astype(float)
    if "duration_s" in jobs.columns:
        scored["duration_s"] = jobs.loc[predicted.index, "duration_s"].astype(float)
    scored = pd.concat([scored, predicted], axis=1)
    stats = {p.name: p.stats() for p in predictors if hasattr(p, "stats")}
    return ReplayResult(target=target, scored=scored, predictors=stats, blocks=len(blocks),
                        refits=refits, seconds=time.perf_counter() - started, n_jobs=n,
                        leak_checks=leak_checks)


def replay(frame: pd.DataFrame, predictor: Predictor, **kwargs: Any) -> ReplayResult:
    """Replay one predictor (see :func:`replay_many`)."""
    return replay_many(frame, [predictor], **kwargs)


# --------------------------------------------------------------------------------------------
# baselines and comparisons on a replay result
# --------------------------------------------------------------------------------------------


def best_percentile_at_rate(result: ReplayResult, rate: float,
                            variants: Sequence[str] | None = None) -> dict[str, Any]:
    """The percentile variant with the least slack once each is margin-tuned to ``rate``."""
    if variants is None:
        variants = [c for c in result.scored.columns if " of task" in c]
    best: dict[str, Any] | None = None
    for name in variants:
        res = slack_at_rate(result.scored[name], result.truth, rate)
        res["variant"] = name
        if best is None or (math.isfinite(res["slack"]) and not res["slack"] >= best["slack"]):
            best = res
    if best is None:
        return {"variant": None, "rate_target": rate, "margin": float("nan"),
                "under_provision_rate": float("nan"), "slack": float("nan")}
    return best


def requested_baseline(result: ReplayResult) -> pd.Series | None:
    """What the jobs asked for, as a reference advisor (None when the history never says)."""
    scored = result.scored
    if result.target == "memory":
        for col in ("requested_memory_bytes", f"{FEATURE_PREFIX}requested_memory_bytes"):
            if col in scored.columns and scored[col].notna().any():
                return pd.to_numeric(scored[col], errors="coerce")
        return None
    if result.target == "duration":
        col = f"{FEATURE_PREFIX}requested_time_s"
        if col in scored.columns and scored[col].notna().any():
            return pd.to_numeric(scored[col], errors="coerce")
    return None


def last_jobs_mean(frame: pd.DataFrame, *, key: str = "tag", column: str = "duration_s",
                   k: int = 2) -> pd.Series:
    """For each job, the mean ``column`` of the ``k`` most recent jobs of the same ``key`` that
    had *finished* before it was submitted (Tsafrir et al.'s "user's last two jobs" predictor,
    made honest: a job still running has no known duration). NaN without such history.

    Exact per job, via a sorted search per key. Indexed like ``frame``.
    """
    out = pd.Series(np.nan, index=frame.index, dtype=float)
    valid = frame[column].notna()
    for _, group in frame.groupby(key, sort=False):
        hist = group[valid.loc[group.index]].sort_values("end_time", kind="stable")
        if hist.empty:
            continue
        ends = hist["end_time"].to_numpy(dtype=float)
        vals = hist[column].to_numpy(dtype=float)
        csum = np.concatenate([[0.0], np.cumsum(vals)])
        pos = np.searchsorted(ends, group["submitted_at"].to_numpy(dtype=float), side="left")
        lo = np.maximum(pos - k, 0)
        cnt = pos - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (csum[pos] - csum[lo]) / cnt
        mean[cnt == 0] = np.nan
        out.loc[group.index] = mean
    return out


def summarize_memory(result: ReplayResult, advisors: Sequence[str],
                     rates: Sequence[float] = DEFAULT_RATES) -> dict[str, Any]:
    """The memory comparison in one structure (what the CLI prints and the benchmark records).

    For each advisor: the rate and slack as it answered (its own calibration), and the slack
    once margin-tuned to each of ``rates``. The best percentile advisor is tuned the same way
    (best variant chosen per rate); requested resources are reported as they were asked.
    """
    truth = result.truth
    out: dict[str, Any] = {"n_scored": int(truth.notna().sum()), "rates": list(rates), "advisors": {}}
    for name in advisors:
        # a replay in which no block had history yet has no answers at all (not an error here:
        # n_scored says so, and every score is NaN)
        rec = result.scored[name] if name in result.scored.columns else pd.Series(np.nan, index=truth.index)
        entry: dict[str, Any] = {"as_is": score_memory(rec, truth)}
        entry["at_rate"] = {f"{r:g}": slack_at_rate(rec, truth, r) for r in rates}
        method_col = f"{name}:method"
        if method_col in result.scored.columns:
            entry["methods"] = {str(k): int(v) for k, v in result.scored[method_col].value_counts().items()}
        dur_col = f"{name}:duration"
        if dur_col in result.scored.columns and "duration_s" in result.scored.columns:
            entry["duration"] = score_duration(result.scored[dur_col], result.scored["duration_s"])
        out["advisors"][name] = entry
    if any(" of task" in c for c in result.scored.columns):
        out["best_percentile"] = {f"{r:g}": best_percentile_at_rate(result, r) for r in rates}
    requested = requested_baseline(result)
    out["requested"] = None if requested is None else score_memory(requested, truth)
    return out
