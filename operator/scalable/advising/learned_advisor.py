"""LearnedAdvisor: a model of peak memory, CPU and duration with calibrated, honest confidence.

Separate plain models are easier to get right than one clever one, so the design is:

* a point model predicts log peak memory (and log cpus, log duration) from the task's input
  features and its history statistics (see :mod:`scalable.advising.features`);
* a spread model predicts how far off the point model tends to be for such a run, so noisy
  tasks get wide intervals and steady ones narrow;
* split-conformal calibration on the *latest* runs, held out by time, turns centre and spread
  into an upper quantile that keeps its promise (see :mod:`scalable.advising.calibration`).

Per task, the task's own input trend (:mod:`scalable.advising.trend`) answers instead of the
trees where it predicted the task's held-out runs better, or where the time hold-out holds
none of them (see :mod:`scalable.advising.model_choice`).

Confidence is what the calibration measured for this task (or its tag, or overall), times how
narrow its interval is, times how much history backs it. Below ``min_history`` runs of the
task, or below ``confidence_threshold``, the advisor answers with the ResourceAdvisor and says
why: a model that cannot show it is right for a task should not size its workers.

``update(frame)`` refreshes the history statistics (the strongest features) from everything
known now, without refitting the models: an online replay or the operator can call it after
every batch of finished runs and refit only occasionally.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from scalable.advising import defaults
from scalable.advising.adaptive import AdaptiveOffset
from scalable.advising.calibration import ConformalCalibrator, conditional_quantile, conformal_quantile
from scalable.advising.elasticity import pooled_elasticity
from scalable.advising.fallback_calibration import FallbackCalibration
from scalable.advising.features import FEATURE_PREFIX, FeatureEncoder, HistoryLog, log_targets, pack_history, unpack_history
from scalable.advising.model_choice import margin_forms, trend_tasks
from scalable.advising.recommendation import Recommendation, after_oom_kill, with_memory
from scalable.advising.resource_advisor import TARGETS, ResourceAdvisor
from scalable.advising.trend import InputTrend, TaskTrend, positive_number
from scalable.advising.arguments import check_coverage, existing_runs_dir
from scalable.units import format_memory, parse_memory

__all__ = ["LearnedAdvisor", "MODEL_TYPES"]

MODEL_TYPES = ("gradient_boosting", "random_forest", "quantile_regression")
#: the latest rows each model type is trained on at most (the training metadata records it):
#: enough to learn from, and what keeps training 1M records within a minute and 2 GiB on two
#: cores (the boosted trees copy their input to float64 before binning it)
DEFAULT_MAX_ROWS = {"gradient_boosting": 300_000, "random_forest": 150_000, "quantile_regression": 10_000}
#: the spread, cpu and duration models learn from at most the latest this many rows: they
#: need less precision than the memory centre, and it keeps 1M records under a minute
SECONDARY_MAX_ROWS = 300_000
MIN_SPREAD = 0.02
#: confidence from history: n / (n + 5) ("5 runs give basic predictions, 20+ reliable, 100+
#: high accuracy"), where runs of the task's tag count a tenth, at most 50 of them
HISTORY_SCALE = 5.0
NEIGHBOUR_WEIGHT = 0.1
NEIGHBOUR_CAP = 50.0
_LOG_TARGETS = ("memory", "cpus", "duration")


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"unknown model_type {model_type!r}: choose one of {', '.join(repr(m) for m in MODEL_TYPES)}"
        )


def _make_model(model_type: str, categorical: np.ndarray, random_state: int, role: str) -> Any:
    """A fresh regressor of ``model_type``; ``role`` is "point" (memory), "spread" (its error)
    or "secondary" (cpus, duration: smaller, they need less precision).

    Categories reach every model as ordinal codes: the boosted trees' own categorical support
    wraps prediction in a column transformer that costs milliseconds per call, more than the
    whole latency budget of a single recommendation.
    """
    if model_type == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            # the memory centre is a median (absolute error on log peak): a run that jumps
            # tenfold should widen the calibrated upper bound, not drag every estimate upward
            # (replayed Sandia-Ross: slack at 2% under-provision 0.47 -> 0.42 for the centre)
            loss="absolute_error" if role == "point" else "squared_error",
            max_iter={"point": 100, "spread": 30}.get(role, 40),
            learning_rate=0.1 if role == "point" else 0.25,
            max_leaf_nodes=31,
            max_bins=127,
            min_samples_leaf=20,
            l2_regularization=1.0,
            categorical_features=None,
            early_stopping=True,
            n_iter_no_change=10,
            random_state=random_state,
        )
    if model_type == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(
            n_estimators=60 if role == "point" else 30,
            min_samples_leaf=5,
            max_features=0.5,
            n_jobs=2,
            random_state=random_state,
        )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import QuantileRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        QuantileRegressor(quantile=0.5, alpha=1e-4, solver="highs"),
    )


class LearnedAdvisor(BaseEstimator):
    """Learned resource recommendations with calibrated coverage.

    Parameters
    ----------
    model_type:
        "gradient_boosting" (default), "random_forest" or "quantile_regression".
    coverage:
        The promised share of future runs whose peak memory fits the recommendation.
    min_history:
        Runs of a task needed before the model answers for it (users are told 5).
    confidence_threshold:
        Below this confidence the ResourceAdvisor answers instead.
    calibration_fraction:
        The latest share of runs (by end time) held out for calibration.
    min_group_calibration:
        Calibration runs a task needs for a quantile of its own.
    max_training_rows:
        Cap on training rows (latest kept); default depends on the model type.
    min_memory:
        Floor on recommended memory (VPA: 250Mi).
    fallback_params:
        Parameters of the ResourceAdvisor used as fallback (its coverage follows ``coverage``).
    spread_power:
        How far the predicted error scales the conformal score: the score is
        ``(log used - centre) / spread ** spread_power``. 0 (default) gives every run the same
        log-width above its centre, calibrated per task where the task has the calibration
        runs; 0.5 was the earlier default. On replayed Sandia-Ross memory the scaled scores
        cost slack at every under-provision rate.
    """

    def __init__(
        self,
        model_type: str = defaults.MODEL_TYPE,
        coverage: float = defaults.COVERAGE,
        min_history: int = defaults.MIN_HISTORY,
        confidence_threshold: float = defaults.CONFIDENCE_THRESHOLD,
        calibration_fraction: float = 0.2,
        min_group_calibration: int = 100,
        max_training_rows: int | None = None,
        min_memory: str | int = "250Mi",
        fallback_params: Mapping[str, Any] | None = None,
        random_state: int = 0,
        spread_power: float = 0.0,
    ) -> None:
        self.model_type = model_type
        self.coverage = coverage
        self.min_history = min_history
        self.confidence_threshold = confidence_threshold
        self.calibration_fraction = calibration_fraction
        self.min_group_calibration = min_group_calibration
        self.max_training_rows = max_training_rows
        self.min_memory = min_memory
        self.fallback_params = fallback_params
        self.random_state = random_state
        self.spread_power = spread_power

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_history(
        cls, runs_dir: Any = None, model_type: str = defaults.MODEL_TYPE, coverage: float = defaults.COVERAGE, **params: Any
    ) -> "LearnedAdvisor":
        """Train on every task observation under ``runs_dir`` (default ``./.scalable/runs``)."""
        _check_model_type(model_type)
        from scalable.telemetry.loader import load_tasks

        return cls(model_type=model_type, coverage=coverage, **params).fit(load_tasks(existing_runs_dir(runs_dir)).frame)

    def _fallback_advisor(self) -> ResourceAdvisor:
        params = {"min_memory": self.min_memory, "use_tag_history": True, **dict(self.fallback_params or {})}
        params["coverage"] = self.coverage
        return ResourceAdvisor(**params)

    def fit(self, frame: pd.DataFrame, y: Any = None, progress: Any = None) -> "LearnedAdvisor":
        """Train the models on the earlier runs and calibrate on the latest ones.

        ``progress``, if given, is called with a short description of each stage.
        """
        _check_model_type(self.model_type)
        check_coverage(self.coverage)
        if not 0.0 < float(self.calibration_fraction) < 1.0:
            raise ValueError("calibration_fraction must be in (0, 1)")
        started = time.perf_counter()
        say = progress or (lambda message: None)
        self.min_memory_bytes_ = parse_memory(self.min_memory)
        frame = frame.sort_values("end_time", kind="stable").reset_index(drop=True)
        say("resource advisor")
        self.fallback_ = self._fallback_advisor().fit(frame)
        say("features")
        self.encoder_ = FeatureEncoder().fit(frame)
        X = self.encoder_.transform_training(frame)
        runs_known = X[:, self.encoder_.feature_names_.index("task:memory:n")].copy()
        targets = log_targets(frame)
        self.history_ = self.encoder_.history(frame)
        self._log = HistoryLog.of(self.encoder_, frame)
        self.feature_names_ = list(self.encoder_.feature_names_)
        say("input trends")
        trend_inputs = frame[[c for c in frame.columns if c.startswith(FEATURE_PREFIX)]]
        trend_inputs = trend_inputs.rename(columns=lambda c: c[len(FEATURE_PREFIX):])
        runtimes = np.exp(targets["duration"].to_numpy())
        self.trend_ = InputTrend(coverage=self.coverage).fit(frame["task"].astype(str).to_numpy(dtype=object),
                                                             trend_inputs, targets["memory"].to_numpy(), runtimes)

        n = len(frame)
        n_cal = int(round(n * self.calibration_fraction))
        cal = np.arange(n - n_cal, n)
        train = np.arange(0, n - n_cal)
        cap = self.max_training_rows or DEFAULT_MAX_ROWS[self.model_type]
        subsampled = len(train) > cap
        if subsampled:
            train = train[-cap:]

        self.active_features_ = _varying_columns(X[train])
        self.feature_names_ = [self.encoder_.feature_names_[i] for i in self.active_features_]
        X = X[:, self.active_features_]
        self.models_: dict[str, Any] = {}
        mask = self.encoder_.categorical_mask_[self.active_features_]
        for target in _LOG_TARGETS:
            y_all = targets[target].to_numpy()
            rows = train[np.isfinite(y_all[train])]
            if len(rows) < 10:
                continue
            say(f"model: {target}")
            role = "point" if target == "memory" else "secondary"
            if role == "secondary":
                rows = rows[-SECONDARY_MAX_ROWS:]
            model = _make_model(self.model_type, mask, self.random_state, role)
            _fit_quietly(model, X[rows], y_all[rows])
            self.models_[target] = model
            if target == "memory" and float(self.spread_power) != 0.0:
                say("model: memory spread")
                rows = rows[-SECONDARY_MAX_ROWS:]
                residual = np.abs(y_all[rows] - _predict(model, X[rows]))
                spread = _make_model(self.model_type, mask, self.random_state, "spread")
                _fit_quietly(spread, X[rows], residual)
                self.models_["memory_spread"] = spread

        rng = np.random.default_rng(self.random_state)
        self.sample_rows_ = X[rng.choice(len(X), size=min(len(X), 32), replace=False)] if len(X) else X[:0]
        self._build_flat()

        say("calibration")
        self.calibrator_: ConformalCalibrator | None = None
        self.trend_tasks_: dict[str, str] = {}
        self.cpu_scores_ = np.zeros(0)
        self.quality_: dict[str, Any] = {}
        memory_cal = cal[np.isfinite(targets["memory"].to_numpy()[cal])] if "memory" in self.models_ else cal[:0]
        if memory_cal.size >= 20:
            centre, spread = self._memory_centre_spread(X[memory_cal])
            y_cal = targets["memory"].to_numpy()[memory_cal]
            scores = (y_cal - centre) / spread
            tasks = frame["task"].astype(str).to_numpy(dtype=object)[memory_cal]
            tags = _tags(frame)[memory_cal]
            self.calibrator_ = ConformalCalibrator(scores, tasks, tags, min_group=self.min_group_calibration)
            self.quality_["memory"] = _held_out_quality(
                scores, tasks, tags, centre, spread, y_cal, self.coverage, self.min_group_calibration
            )
            earlier = np.arange(0, n - n_cal)
            task_names = frame["task"].astype(str).to_numpy(dtype=object)
            earlier_lines = InputTrend(coverage=self.coverage).fit(
                task_names[earlier], trend_inputs.iloc[earlier], targets["memory"].to_numpy()[earlier], runtimes[earlier])
            model_upper = centre + self.calibrator_.thresholds(tasks, self.coverage) * spread
            held_inputs = trend_inputs.iloc[memory_cal]
            forms = margin_forms(tasks, earlier_lines.upper_log(tasks, held_inputs, self.coverage, margin="log"),
                                 earlier_lines.upper_log(tasks, held_inputs, self.coverage, margin="bytes"),
                                 y_cal, runtimes[memory_cal])
            self.trend_.with_margins(forms)
            line_upper = earlier_lines.with_margins(forms).upper_log(tasks, held_inputs, self.coverage)
            self.trend_tasks_ = trend_tasks(self.trend_, tasks, model_upper, line_upper, y_cal, runtimes[memory_cal],
                                            self.min_history)
            self.quality_["memory"]["tasks_answered_by_their_input_trend"] = len(self.trend_tasks_)
        if "cpus" in self.models_:
            rows = cal[np.isfinite(targets["cpus"].to_numpy()[cal])]
            if rows.size:
                y = targets["cpus"].to_numpy()[rows]
                predicted = _predict(self.models_["cpus"], X[rows])
                self.cpu_scores_ = np.sort(y - predicted)
                self.quality_["cpus"] = {"mae": float(np.mean(np.abs(np.exp(predicted) - np.exp(y)))), "n": int(rows.size)}
        if "duration" in self.models_:
            rows = cal[np.isfinite(targets["duration"].to_numpy()[cal])]
            if rows.size:
                y = targets["duration"].to_numpy()[rows]
                predicted = _predict(self.models_["duration"], X[rows])
                self.quality_["duration"] = {
                    "mae_s": float(np.mean(np.abs(np.exp(predicted) - np.exp(y)))),
                    "median_abs_log_error": float(np.median(np.abs(predicted - y))),
                    "n": int(rows.size),
                }
        # the runs the ResourceAdvisor will answer for: held-out runs whose task had fewer than
        # min_history runs finished when they were submitted
        short = memory_cal[runs_known[memory_cal] < self.min_history] if memory_cal.size else memory_cal
        self.fallback_calibration_: FallbackCalibration | None = None
        if short.size:
            say("calibration: short history")
            elasticity = pooled_elasticity(frame["task"].astype(str).to_numpy(dtype=object), trend_inputs,
                                           targets["memory"].to_numpy())
            self.fallback_calibration_ = FallbackCalibration.measure(
                frame, short, use_tag_history=self.fallback_.use_tag_history, elasticity=elasticity,
                inputs=trend_inputs)
            calibration = self.fallback_calibration_
            self.quality_["fallback"] = {"n_held_out": calibration.n, "coverage": self.coverage}
            for source in ("task", "tag"):
                found = calibration.margin(self.coverage, source)
                self.quality_["fallback"][f"from_{source}"] = {
                    "n_held_out": calibration.count(source), "margin": None if found is None else round(found[0], 4)}
        self.training_ = {
            "n_records": int(n),
            "n_train": int(len(train)),
            "n_calibration": int(n_cal),
            "subsampled": bool(subsampled),
            "max_training_rows": int(cap),
            "secondary_max_rows": SECONDARY_MAX_ROWS,
            "n_tasks": int(frame["task"].nunique()),
            "end_time_range": [float(frame["end_time"].min()), float(frame["end_time"].max())] if n else None,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.model_version_: str | None = None
        n_memory = int(np.isfinite(targets["memory"].to_numpy()).sum())
        if self.calibrator_ is not None and "memory" in self.models_:
            self.unavailable_reason_ = None
        elif n and n_memory == 0:
            self.unavailable_reason_ = f"none of the {n} records has a peak memory, so there is no memory model"
        else:
            self.unavailable_reason_ = (
                f"too little history to train and calibrate a memory model ({n} records, {n_memory} with memory)"
            )
        from scalable.advising.model_store import frame_digest

        self.training_digest_ = frame_digest(frame[["task", "end_time", "peak_memory_bytes", "duration_s"]])
        self.adaptive_ = AdaptiveOffset(1.0 - float(self.coverage))
        self.observed_until_ = float(frame["end_time"].max()) if n else -math.inf
        self._reset_caches()
        say("done")
        return self

    def _observe(self, new: pd.DataFrame) -> None:
        """Move the adaptive offset (:mod:`scalable.advising.adaptive`) by whether the runs that
        finished since it last looked fitted what this advisor recommends for them; an
        OOM-killed run is a miss whatever its recorded peak."""
        adaptive = getattr(self, "adaptive_", None)
        if adaptive is None or not self.ready or len(new) == 0 or "end_time" not in new:
            return
        state = new["state"].astype(str) if "state" in new else pd.Series("succeeded", index=new.index)
        ended = new["end_time"].to_numpy(dtype=float) > self.observed_until_
        measured = (state == "succeeded").to_numpy() & new["peak_memory_bytes"].notna().to_numpy()
        killed = (state == "oom_killed").to_numpy()
        rows = new[ended & (measured | killed)].sort_values("end_time", kind="stable")
        if len(rows):
            inputs = [c for c in rows.columns if c.startswith(FEATURE_PREFIX)]
            requests = []
            for record in rows[["task", *inputs, *(["tag"] if "tag" in rows else [])]].to_dict("records"):
                features = {c[len(FEATURE_PREFIX):]: v for c, v in record.items() if c in inputs and positive_number(v) is not None}
                tag = record.get("tag")
                requests.append({"task": str(record["task"]), "input_features": features,
                                 "tag": tag if isinstance(tag, str) else None})
            recommended = np.array([r.memory_bytes for r in self.recommend_batch(requests)], dtype=float)
            peaks = rows["peak_memory_bytes"].to_numpy(dtype=float)
            missed = (rows["state"].astype(str).to_numpy() == "oom_killed") if "state" in rows else np.zeros(len(rows), bool)
            missed = missed | (np.nan_to_num(peaks, nan=0.0) > recommended)
            adaptive.observe(missed)
            self.quality_["adaptive"] = {
                "observed": adaptive.observed, "missed": adaptive.missed, "miss_rate": adaptive.miss_rate,
                "promised_miss_rate": adaptive.target, "factor": round(adaptive.factor, 4)}
        self.observed_until_ = max(self.observed_until_, float(new["end_time"].max()))

    def _adapted(self, recs: list[Recommendation]) -> list[Recommendation]:
        """``recs`` with memory times the adaptive factor (the floors still apply last), and said."""
        adaptive = getattr(self, "adaptive_", None)
        if adaptive is None or not adaptive.observed or adaptive.offset == 0.0:
            return recs
        factor = adaptive.factor
        note = (f"; x{factor:.3f} after {adaptive.observed} runs finished since training, {adaptive.missed} of them "
                f"above their answer ({_percent(adaptive.target)}% promised; adaptive offset)")
        out = []
        for rec in recs:
            memory = max(math.ceil(rec.memory_bytes * factor), self.min_memory_bytes_, math.ceil(self._oom_floor(rec.task or "")))
            low = None if rec.interval is None else (min(rec.interval[0], memory), memory)
            out.append(with_memory(rec, memory, rec.basis + note, low, adaptive_factor=factor))
        return out

    def update(self, frame: pd.DataFrame) -> "LearnedAdvisor":
        """Refresh history statistics and the fallback from ``frame``, everything known now,
        without refitting the models or the calibration. Cheap; call it between refits."""
        self._require_fitted()
        frame = frame.sort_values("end_time", kind="stable").reset_index(drop=True)
        self._observe(frame)
        self.history_ = self.encoder_.history(frame)
        self._log = HistoryLog.of(self.encoder_, frame)
        self.fallback_.update(frame)
        self._reset_caches()
        return self

    def extend(self, new: pd.DataFrame) -> "LearnedAdvisor":
        """Add only newly finished runs: like ``update`` on everything known, but recomputing
        only the groups the new runs belong to. Needs the history this advisor was fitted or
        updated on (a loaded model has none: call ``update(history)`` once first)."""
        self._require_fitted()
        log = getattr(self, "_log", None)
        if log is None:
            raise RuntimeError("extend() needs the known history: call update(history) once after load()")
        if len(new) == 0:
            return self
        self._observe(new)
        self.history_, self._log = self.encoder_.extend_history(self.history_, log, new)
        self.fallback_.extend(new)
        self._reset_caches()
        return self

    def _reset_caches(self) -> None:
        self._single_cache: dict[tuple, Recommendation] = {}
        self._global_q_cache: dict[float, tuple[float, int]] = {}
        self._fallback_margin_cache: dict[tuple[float, str], tuple[float, int] | None] = {}
        self._cpu_q_cache: dict[float, float] = {}
        if not hasattr(self, "_flat"):
            self._flat = {}
        if hasattr(self, "encoder_"):
            names = self.encoder_.feature_names_
            self._n_task_column = names.index("task:memory:n")
            self._n_tag_column = names.index("tag:memory:n")

    def _require_fitted(self) -> None:
        if not hasattr(self, "encoder_"):
            raise RuntimeError("this LearnedAdvisor is not fitted yet: call fit(frame), from_history() or load()")

    # --- prediction ------------------------------------------------------------------------

    def _memory_centre_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale of the conformal score. The scale is the predicted absolute error
        to the power ``spread_power``: fully normalised scores (1) spend the miss budget evenly
        and pay for it with very wide intervals on erratic runs; unnormalised ones (0, the
        default) give every run the same log-width, which on replayed Sandia-Ross memory left
        the least slack at every under-provision rate (the square root was the earlier default)."""
        centre = self._predict("memory", X)
        power = float(getattr(self, "spread_power", 0.0) or 0.0)
        if power == 0.0 or "memory_spread" not in self.models_:
            return centre, np.ones_like(centre)
        spread = np.maximum(self._predict("memory_spread", X), MIN_SPREAD) ** power
        return centre, spread

    def _predict(self, name: str, X: np.ndarray) -> np.ndarray:
        if len(X) == 1:
            flat = self._flat.get(name)
            if flat is not None:
                return np.array([flat.predict_one(X[0].astype(np.float64))])
        return _predict(self.models_[name], X)

    def _build_flat(self) -> None:
        """Flatten the tree models for fast one-row answers (checked against ``predict``)."""
        from scalable.advising.fast_predict import flatten

        sample = getattr(self, "sample_rows_", None)
        self._flat = {name: flatten(model, sample) for name, model in self.models_.items()} if sample is not None else {}
        self._flat = {name: flat for name, flat in self._flat.items() if flat is not None}

    def _cpu_quantile(self, coverage: float) -> float:
        q = self._cpu_q_cache.get(coverage)
        if q is None:
            scores = self.cpu_scores_
            q = float(np.quantile(scores, coverage, method="higher")) if scores.size else 0.0
            self._cpu_q_cache[coverage] = q
        return q

    @property
    def model_version(self) -> str | None:
        """The store version this advisor was saved as or loaded from (None if never stored)."""
        return getattr(self, "model_version_", None)

    @property
    def ready(self) -> bool:
        """Whether the model can answer at all (trained and calibrated); if not, every answer
        comes from the ResourceAdvisor."""
        return hasattr(self, "encoder_") and self.calibrator_ is not None and "memory" in self.models_

    def recommend(
        self,
        task: str,
        input_features: Mapping[str, Any] | None = None,
        target: str | None = None,
        coverage: float | None = None,
        tag: str | None = None,
        failed_memory: str | int | None = None,
    ) -> Recommendation:
        """Resources for the next run of ``task`` with these inputs.

        ``failed_memory`` is the memory at which the last attempt of this run was OOM-killed
        (any quantity, "4Gi"): the answer is then the ``coverage`` quantile of what runs that
        needed more than that needed, from the same calibration, at most double the failed
        memory, and double it when too few runs needed more to say. An answer for the same question is cached until
        the next ``fit``/``update``.
        """
        if failed_memory is not None:
            plain = self.recommend(task, input_features, target, coverage, tag)
            return self._after_failure(plain, task, dict(input_features or {}), parse_memory(failed_memory),
                                       self._coverage(coverage))
        self._require_fitted()
        if target not in TARGETS:
            raise ValueError(f"target must be one of memory, cpus, duration or None, not {target!r}")
        coverage = self._coverage(coverage)
        features = dict(input_features or {})
        try:
            key = (task, tuple(sorted(features.items())), target, coverage, tag)
            cached = self._single_cache.get(key)
        except TypeError:
            key, cached = None, None
        if cached is not None:
            return cached
        rec = self._answer([task], [features], [tag], target, coverage, single=True)[0]
        if target in (None, "memory"):
            rec = self._adapted([rec])[0]
        if key is not None:
            if len(self._single_cache) > 10_000:
                self._single_cache.clear()
            self._single_cache[key] = rec
        return rec

    def recommend_batch(self, requests: Iterable[Mapping[str, Any] | str]) -> list[Recommendation]:
        """Recommendations for many requests (``{"task": ..., "input_features": {...}}``), in
        order, predicted in one vectorised pass; ``coverage``/``target`` may be given per
        request, they default to the advisor's."""
        self._require_fitted()
        requests = [{"task": r} if isinstance(r, str) else r for r in requests]
        if not requests:
            return []
        out: list[Recommendation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.get("target"), self._coverage(r.get("coverage"))), []).append(i)
        collecting = gc.isenabled()
        gc.disable()  # tens of thousands of new objects would set off needless full collections
        try:
            self._answer_groups(requests, groups, out)
        finally:
            if collecting:
                gc.enable()
        return out  # type: ignore[return-value]

    def _answer_groups(self, requests: list, groups: dict, out: list) -> None:
        for (target, coverage), index in groups.items():
            if target not in TARGETS:
                raise ValueError(f"target must be one of memory, cpus, duration or None, not {target!r}")
            recs = self._answer(
                [str(requests[i]["task"]) for i in index],
                [requests[i].get("input_features") or {} for i in index],
                [requests[i].get("tag") for i in index],
                target,
                coverage,
                single=False,
            )
            if target in (None, "memory"):
                recs = self._adapted(recs)
            for i, rec in zip(index, recs):
                out[i] = rec

    def _coverage(self, coverage: float | None) -> float:
        return check_coverage(self.coverage if coverage is None else coverage)

    def _answer(
        self,
        tasks: Sequence[str],
        features: Sequence[Mapping[str, Any]],
        tags: Sequence[str | None],
        target: str | None,
        coverage: float,
        single: bool,
    ) -> list[Recommendation]:
        if not self.ready:
            reason = getattr(self, "unavailable_reason_", None) or "the model is not trained"
            return self._answer_without_memory_model(tasks, features, tags, target, coverage, single, reason)
        X, tag_array = self._request_features(tasks, features, tags, single)
        n_hist = X[:, self._n_task_column].astype(float)
        n_tag = X[:, self._n_tag_column].astype(float)
        X = X[:, self.active_features_]
        centre, spread = self._memory_centre_spread(X)
        beyond = self._beyond_seen(tasks, features)
        if beyond:
            centre = centre.copy()
            for i, (added, line, x) in beyond.items():
                # the trees' edge leaf averages the upper sizes; the line itself is the floor there
                centre[i] = max(centre[i] + added, line.centre(x))
        task_array = np.asarray(tasks, dtype=object)
        calibrator = self.calibrator_
        q = calibrator.thresholds(task_array, coverage)
        lower_q = calibrator.levels(coverage).global_lower
        upper_log = centre + q * spread
        median = np.exp(centre)
        upper = np.exp(np.minimum(upper_log, 700.0))
        lower = np.exp(np.minimum(centre + lower_q * spread, 700.0))
        floors = np.fromiter((self._oom_floor(t) for t in tasks), dtype=float, count=len(tasks))
        memory = np.maximum(np.maximum(upper, self.min_memory_bytes_), floors)

        cpus = np.exp(self._predict("cpus", X) + self._cpu_quantile(coverage)) if "cpus" in self.models_ else None
        duration = np.exp(self._predict("duration", X)) if "duration" in self.models_ else None

        miss = calibrator.miss_rates(task_array, tag_array, coverage)
        alpha = 1.0 - coverage
        n_effective = n_hist + NEIGHBOUR_WEIGHT * np.minimum(n_tag, NEIGHBOUR_CAP)
        history_factor = n_effective / (n_effective + HISTORY_SCALE)
        width = upper / np.maximum(median, 1.0) - 1.0
        width_factor = 1.0 / (1.0 + np.maximum(width, 0.0))
        coverage_factor = np.minimum(1.0, alpha / np.maximum(miss, 1e-9))
        confidence = np.clip(history_factor * width_factor * coverage_factor, 0.0, 1.0)
        confidence = np.where(np.isfinite(confidence), confidence, 0.0)

        version = self.model_version_
        pct = _percent(coverage)
        levels = calibrator.levels(coverage)
        own_quantile, n_cal = levels.task_q, levels.n_task
        cpu_list = cpus.tolist() if cpus is not None else [1.0] * len(tasks)
        whole_cpus = (
            np.maximum(1, np.ceil(np.round(cpus, 6))).astype(int).tolist() if cpus is not None else [1] * len(tasks)
        )
        duration_list = duration.tolist() if duration is not None else [None] * len(tasks)
        rows = zip(
            tasks, tags, n_hist.tolist(), np.round(confidence, 2).tolist(), memory.tolist(), upper.tolist(),
            lower.tolist(), median.tolist(), miss.tolist(), width.tolist(), cpu_list, duration_list, whole_cpus,
        )
        out = []
        for i, (task, tag, n, conf, mem, up, low, med, miss_i, width_i, cpus_exact, dur, n_cpus) in enumerate(rows):
            if n < self.min_history:
                reason = f"only {int(n)} runs of {task!r} known (fewer than min_history={self.min_history})"
                out.append(self._fallback(task, target, coverage, reason, conf, dur, tag, inputs=features[i]))
                continue
            if not math.isfinite(mem) or conf < self.confidence_threshold:
                reason = (
                    f"model confidence {conf:.2f} below {self.confidence_threshold:g} "
                    f"(interval x{1 + width_i:.2f} of the median, held-out miss rate {miss_i:.1%})"
                )
                fallback = self._fallback(task, target, coverage, reason, conf, dur, tag, inputs=features[i])
                if target in (None, "memory"):
                    # the task's own line is a learned model too, and unlike the percentiles it
                    # follows the input: it answers before them when it is confident itself
                    why = f"the shared model's {reason}"
                    fallback = self._trend_answer(task, features[i], coverage, fallback, why=why) or fallback
                out.append(fallback)
                continue
            if target is None or target == "memory":
                scope = "this task" if task in own_quantile else "all tasks"
                basis = (
                    f"{self.model_type} model: p{pct} upper bound calibrated on held-out runs of {scope}"
                    f" ({n_cal.get(task, 0)} of this task), {int(n)} runs of history"
                )
                if i in beyond:
                    basis += _beyond_basis(*beyond[i][1:])
                basis += self._floor_basis(task, mem, up)
            elif target == "cpus":
                basis = f"{self.model_type} model: p{pct} of cpu usage ({cpus_exact:.2f} cpus)"
            else:
                basis = f"{self.model_type} model: predicted duration {dur:.1f}s" if dur is not None else "no duration model"
            memory_bytes = math.ceil(mem)
            out.append(
                Recommendation._trusted(
                    cpus=n_cpus,
                    memory_bytes=memory_bytes,
                    confidence=conf,
                    method="learned",
                    basis=basis,
                    predicted_duration_s=None if dur is None else round(dur, 3),
                    interval=(int(low), memory_bytes),
                    coverage=coverage,
                    model_version=version,
                    task=task,
                    cpus_exact=cpus_exact,
                    details={
                        "history": int(n),
                        "predicted_median_memory_bytes": med,
                        "heldout_miss_rate": miss_i,
                        "interval_width": width_i,
                    },
                )
            )
        chosen = getattr(self, "trend_tasks_", None)
        if chosen and target in (None, "memory"):
            for i, task in enumerate(tasks):
                why = chosen.get(task)
                if why is not None and n_hist[i] >= self.min_history:
                    out[i] = self._trend_answer(task, features[i], coverage, out[i], why=why) or out[i]
        return out

    def _request_features(
        self, tasks: Sequence[str], features: Sequence[Mapping[str, Any]], tags: Sequence[str | None], single: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The full feature rows of the requests and the tag each request runs with."""
        encoder = self.encoder_
        if single:
            X = encoder.transform_one(tasks[0], features[0], tags[0], self.history_)
            tag = tags[0] if tags[0] is not None else encoder.task_tags_.get(tasks[0], "")
            return X, np.array([tag], dtype=object)
        frame = encoder.request_frame(tasks, features, tags)
        X = encoder.transform_requests(frame, self.history_)
        return X, frame["tag"].astype(object).where(frame["tag"].notna(), "").to_numpy(dtype=object)

    def _answer_without_memory_model(
        self,
        tasks: Sequence[str],
        features: Sequence[Mapping[str, Any]],
        tags: Sequence[str | None],
        target: str | None,
        coverage: float,
        single: bool,
        reason: str,
    ) -> list[Recommendation]:
        """Memory (and cpus) from the ResourceAdvisor, but a duration from the model when one was
        trained: traces that log times and not memory still deserve the learned runtime."""
        models = getattr(self, "models_", {})
        if "duration" not in models or not hasattr(self, "active_features_"):
            answers = [self._fallback(t, target, coverage, reason, None, None, g, inputs=f) for t, g, f in zip(tasks, tags, features)]
        else:
            X, _ = self._request_features(tasks, features, tags, single)
            n_hist = X[:, self.encoder_.feature_names_.index("task:duration:n")].astype(float)
            duration = np.exp(self._predict("duration", X[:, self.active_features_]))
            answers = [
                self._fallback(t, target, coverage, reason, None, float(d), g, model_duration=n >= self.min_history, inputs=f)
                for t, g, d, n, f in zip(tasks, tags, duration.tolist(), n_hist.tolist(), features)
            ]
        if target not in (None, "memory") or getattr(self, "trend_", None) is None:
            return answers
        return [self._trend_answer(t, f, coverage, base) or base for t, f, base in zip(tasks, features, answers)]

    def _trend_answer(self, task: str, features: Mapping[str, Any], coverage: float,
                      base: Recommendation, why: str | None = None) -> Recommendation | None:
        """Memory from the task's input trend: when the trees have too little history to be
        trained and calibrated (``why`` None: only where an input is informative), or when the
        line was chosen for this task over the trees (``why``, see :mod:`scalable.advising.model_choice`).
        None when the task has too few runs, or no informative input on the short-history path."""
        found = self.trend_.upper(task, features, coverage)
        if found is None:
            return None
        centre, upper_log, line, how = found
        if (line.feature is None and why is None) or line.n < self.min_history:
            return None
        median, upper = math.exp(centre), math.exp(min(upper_log, 700.0))
        width = upper / max(median, 1.0) - 1.0
        n_effective = float(line.n)
        confidence = round(n_effective / (n_effective + HISTORY_SCALE) / (1.0 + max(width, 0.0)), 2)
        if confidence < self.confidence_threshold:
            return None
        memory = max(upper, self.min_memory_bytes_, self._oom_floor(task))
        x = features.get(line.feature)
        law = line.exponent if line.feature is not None else "its mean (no input predicts it better)"
        basis = (
            f"input trend: p{_percent(coverage)} upper bound of peak memory ~ {law} "
            f"over {line.n} runs of this task ({how})"
        )
        if why is not None:
            basis += f"; {why}"

        added, _, seen = self.trend_.extrapolation(task, features)
        if added > 0:
            basis += _beyond_basis(line, seen)
        basis += self._floor_basis(task, memory, upper)
        memory_bytes = math.ceil(memory)
        return Recommendation._trusted(
            cpus=base.cpus,
            memory_bytes=memory_bytes,
            confidence=confidence,
            method="learned",
            basis=basis,
            predicted_duration_s=base.predicted_duration_s,
            interval=(int(math.exp(centre - (upper_log - centre))), memory_bytes),
            coverage=coverage,
            model_version=self.model_version_,
            task=task,
            cpus_exact=base.cpus_exact,
            details={"history": line.n, "predicted_median_memory_bytes": median, "interval_width": width,
                     "memory_model": "input_trend", "trend_feature": line.feature, "trend_exponent": line.slope,
                     "trend_input": x},
        )

    def _after_failure(self, plain: Recommendation, task: str, features: Mapping[str, Any], failed: int,
                       coverage: float) -> Recommendation:
        """``plain`` for a run just OOM-killed at ``failed`` bytes (see :meth:`recommend`)."""
        median = plain.details.get("predicted_median_memory_bytes")
        answer: tuple[float, str] | None = None
        if plain.method == "learned" and median and failed > 0:
            centre = math.log(median)
            if plain.details.get("memory_model") == "input_trend":
                answer = self.trend_.after_failure(task, features, math.log(failed), coverage)
            elif float(getattr(self, "spread_power", 0.0) or 0.0) == 0.0 and self.calibrator_ is not None:
                found = conditional_quantile(self.calibrator_.scores_for(task), math.log(failed) - centre, coverage)
                if found is not None:
                    answer = (centre + found[0], f"conformal on the {found[1]} held-out runs that needed more")
        estimate = None
        if answer is not None:
            memory = math.exp(min(answer[0], 700.0))
            estimate = (math.ceil(memory), f"p{_percent(coverage)} of what runs needing more than that needed ({answer[1]})")
        return after_oom_kill(plain, failed, estimate)

    def _beyond_seen(self, tasks: Sequence[str], features: Sequence[Mapping[str, Any]]) -> dict[int, tuple[float, TaskTrend, float]]:
        """Requests whose input is above the largest their task ran with: (log-space addition to the
        centre along the task's trend, the trend, the input)."""
        trend = getattr(self, "trend_", None)
        if trend is None or not trend.trends_:
            return {}
        out = {}
        for i, (task, inputs) in enumerate(zip(tasks, features)):
            added, line, x = trend.extrapolation(task, inputs)
            if added > 0:
                out[i] = (added, line, x)
        return out

    def _floor_basis(self, task: str, memory: float, upper: float) -> str:
        """Says when a policy floor, not the model, decided the memory (applied after the model)."""
        if memory <= upper:
            return ""
        if memory == self._oom_floor(task) and memory > self.min_memory_bytes_:
            return f"; raised to the OOM floor {format_memory(memory)} (a run of this task was killed at less)"
        return f"; raised to the minimum {format_memory(self.min_memory_bytes_)} (the model said {format_memory(upper)})"

    def _request_ceiling(self, task: str, inputs: Mapping[str, Any] | None) -> int | None:
        """The most a short-history answer may ask: the memory the request itself asks for
        (``requested_memory_bytes``), while every known run of the task fitted under it and no
        run was OOM-killed at it. The fallback's margins are measured over other tasks' short
        histories; the request is the workflow author's word for this one, and it has held."""
        requested = positive_number(dict(inputs or {}).get("requested_memory_bytes"))
        if requested is None:
            return None
        history = self.fallback_.tasks_.get(task)
        if history is not None:
            memory = history.memory
            if memory.oom_floor >= requested or (memory.n and float(memory.values.max()) > requested):
                return None
        return int(math.ceil(max(requested, self.min_memory_bytes_)))

    def _oom_floor(self, task: str) -> float:
        history = self.fallback_.tasks_.get(task)
        return 0.0 if history is None else history.memory.oom_floor

    def _fallback(
        self,
        task: str,
        target: str | None,
        coverage: float,
        reason: str,
        model_confidence: float | None,
        duration: float | None = None,
        tag: str | None = None,
        model_duration: bool = False,
        inputs: Mapping[str, Any] | None = None,
    ) -> Recommendation:
        """The ResourceAdvisor's answer, saying why. ``model_duration``: the model's ``duration``
        replaces the ResourceAdvisor's median (the task has the history the model needs).
        ``inputs`` are the request's input features: for a task nobody has run, the memory the
        request itself asks for (``requested_memory_bytes``, as every importer names it) is the
        best knowledge there is, better than what all other tasks used."""
        base = self.fallback_.recommend(task, target=target, coverage=coverage, tag=tag)
        predicted = base.predicted_duration_s
        if duration is not None and (model_duration or predicted is None):
            predicted = round(duration, 3)
        memory_bytes, interval, basis = base.memory_bytes, base.interval, f"{reason}; ResourceAdvisor: {base.basis}"
        fallback_method = base.method
        calibrated = self._calibrated_fallback_memory(task, tag, coverage, inputs)
        if calibrated is not None:
            memory_bytes, interval, memory_basis = calibrated
            fallback_method = "calibrated_percentile"
            if target in (None, "memory"):
                basis = f"{reason}; ResourceAdvisor: {memory_basis}"
        elif base.method == "default" or base.details.get("memory_source") == "default":
            # neither the task nor its tag recorded memory: the request's own memory when it says
            # one, else the coverage quantile of every known peak is the data's answer, a fixed
            # default is nobody's (4Gi against runs of a few MiB held most of the reserved memory
            # of a whole replayed trace)
            requested = positive_number(dict(inputs or {}).get("requested_memory_bytes"))
            known, n_known = self._global_memory_quantile(coverage)
            if requested is not None:
                memory_bytes = int(math.ceil(max(requested, self.min_memory_bytes_)))
                interval = None
                if target in (None, "memory"):
                    basis = (f"{reason}; no memory recorded for task {task!r} or its tag: the memory the request "
                             f"asks for (requested_memory_bytes={format_memory(requested)})")
                fallback_method = "request"
            elif n_known and math.isfinite(known):
                memory_bytes = int(math.ceil(max(known, self.min_memory_bytes_)))
                interval = None
                if target in (None, "memory"):
                    basis = (
                        f"{reason}; {'no history' if base.method == 'default' else 'no memory recorded'} for task "
                        f"{task!r} or its tag: p{_percent(coverage)} of all "
                        f"{n_known} known runs ({memory_bytes} bytes) instead of the ResourceAdvisor default"
                    )
                fallback_method = "all_runs"
        ceiling = self._request_ceiling(task, inputs)
        if ceiling is not None and memory_bytes > ceiling:
            if target in (None, "memory"):
                basis += (f"; lowered to the memory the request asks for ({format_memory(ceiling)}): no run of "
                          f"this task needed more, and a short history does not outweigh it")
            memory_bytes = ceiling
            interval = None if interval is None else (min(interval[0], ceiling), ceiling)
        if model_duration and duration is not None and target == "duration":
            basis = f"{self.model_type} model: predicted duration {duration:.1f}s ({reason} for memory)"
        return Recommendation._trusted(
            cpus=base.cpus,
            memory_bytes=memory_bytes,
            confidence=base.confidence if model_confidence is None else min(base.confidence, model_confidence),
            method="percentile",
            basis=basis,
            predicted_duration_s=predicted,
            interval=interval,
            coverage=coverage,
            model_version=self.model_version_,
            task=task,
            cpus_exact=base.cpus_exact,
            details={**base.details, "model_confidence": model_confidence, "fallback_method": fallback_method},
            keys_shown=_FALLBACK_KEYS,
        )

    def _calibrated_fallback_memory(
        self, task: str, tag: str | None, coverage: float, inputs: Mapping[str, Any] | None = None
    ) -> tuple[int, tuple[int, int], str] | None:
        """Memory for a short-history task: the median its runs (else its tag's) used, scaled to
        the request's input by the law pooled over tasks when the calibration was measured so,
        times the margin measured on held-out short-history runs (see
        :mod:`scalable.advising.fallback_calibration`). None when there is no such calibration for
        ``coverage`` or no memory to start from."""
        calibration = getattr(self, "fallback_calibration_", None)
        if calibration is None:
            return None
        centre = self.fallback_.memory_percentile(task, calibration.quantile, tag)
        if centre is None:
            return None
        value, source, n_runs = centre
        margins = self._fallback_margin_cache
        if (coverage, source) not in margins:
            margins[(coverage, source)] = calibration.margin(coverage, source)
        found = margins[(coverage, source)]
        if found is None:
            return None
        margin, n_held_out = found
        whose = "this task" if source == "task" else "its tag"
        runs = "run" if n_runs == 1 else "runs"
        basis = f"p{_percent(calibration.quantile)} of {n_runs} {runs} of {whose} ({format_memory(int(value))})"
        law = calibration.elasticity
        shift = law.log_factor(task, dict(inputs or {})) if law is not None and source == "task" else 0.0
        if shift != 0.0:
            value = value * math.exp(min(shift, 700.0))
            basis += (f" scaled to this input by {law.feature}^{law.exponent:.2f} (x{math.exp(shift):.2f}; the law "
                      f"pooled over {law.n_tasks} tasks, {law.n_runs} runs) to {format_memory(int(value))}")
        memory = max(value * margin, self.min_memory_bytes_, self._oom_floor(task))
        memory_bytes = int(math.ceil(memory))
        basis += (f" x{margin:.2f}, the margin under which {_percent(coverage)}% of {n_held_out} held-out runs "
                  f"with short history fitted")
        if memory > value * margin:
            basis += "; raised to the minimum or an OOM floor"
        return memory_bytes, (int(value), memory_bytes), basis

    def _global_memory_quantile(self, coverage: float) -> tuple[float, int]:
        """The conformal ``coverage`` quantile of every known run's peak memory (the largest
        when too few runs back it) and how many runs it is taken over; (nan, 0) without any."""
        cache = getattr(self, "_global_q_cache", None)
        if cache is None:
            cache = self._global_q_cache = {}
        hit = cache.get(coverage)
        if hit is not None:
            return hit
        parts = [h.memory.values for h in getattr(self.fallback_, "tasks_", {}).values() if h.memory.n]
        values = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
        if values.size == 0:
            hit = (math.nan, 0)
        else:
            q = conformal_quantile(values, coverage)
            hit = (float(q if math.isfinite(q) else values[-1]), int(values.size))
        cache[coverage] = hit
        return hit

    # --- quality and persistence ------------------------------------------------------------

    @property
    def quality(self) -> dict[str, Any]:
        """Measured held-out quality (coverage, under-provision rate, slack, MAE per target)."""
        self._require_fitted()
        return dict(self.quality_)

    def metadata(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "model_type": self.model_type,
            "params": _jsonable(self.get_params()),
            "feature_names": list(self.feature_names_),
            "targets": sorted(t for t in self.models_ if t != "memory_spread"),
            "quality": _jsonable(self.quality_),
            "training": _jsonable(self.training_),
        }

    def save(self, path: str | Path, name: str = "default", training_digest: str | None = None) -> Path:
        """Write a new version into the model store at ``path``; returns its directory."""
        from scalable.advising.model_store import ModelStore

        self._require_fitted()
        store = ModelStore(path)
        if training_digest is None and getattr(self, "training_digest_", None):
            training_digest = self.training_digest_
        payload = {
            "models": dict(self.models_),
            "encoder": self.encoder_.to_state(),
            "history": pack_history(self.history_),
            "calibration": self.calibrator_.to_state() if self.calibrator_ is not None else None,
            "cpu_scores": self.cpu_scores_,
            "active_features": self.active_features_,
            "sample_rows": self.sample_rows_,
            "fallback": self.fallback_.to_state(),
            "fallback_calibration": (
                self.fallback_calibration_.to_state() if getattr(self, "fallback_calibration_", None) else None
            ),
            "trend": self.trend_.to_state() if getattr(self, "trend_", None) is not None else None,
            "trend_tasks": dict(getattr(self, "trend_tasks_", {})),
            "adaptive": self.adaptive_.to_state() if getattr(self, "adaptive_", None) is not None else None,
            "observed_until": float(getattr(self, "observed_until_", -math.inf)),
        }
        version_dir = store.save(name, payload, self.metadata(), training_digest=training_digest)
        self.model_version_ = version_dir.name
        self._reset_caches()
        return version_dir

    @classmethod
    def load(
        cls,
        path: str | Path,
        name: str | None = None,
        version: int | str | None = None,
        *,
        on_error: str = "raise",
        history: pd.DataFrame | None = None,
        runs_dir: Any = None,
    ) -> "LearnedAdvisor":
        """Load a stored model (the latest version unless ``version`` is given).

        ``path`` is a model store root (with ``name``, default "default"), a model's
        directory (``<root>/<name>``) or one version's directory (``<root>/<name>/v3``).

        A missing, tampered or untrusted model raises :class:`ModelStoreError`; with
        ``on_error="fallback"`` it gives instead an advisor that answers every request from
        the ResourceAdvisor (fitted on ``history`` or ``runs_dir`` if given) and says why.
        """
        from scalable.advising.model_store import ModelStore, ModelStoreError

        try:
            store = ModelStore(path)
            if name is None:
                store, name, found = store.resolve_root()
                version = found if version is None else version
            payload, metadata, version_dir = store.load_model(name, version)
            return cls._from_payload(payload, metadata, version_dir.name)
        except ModelStoreError as exc:
            if on_error != "fallback":
                raise
            return cls._unavailable(str(exc), history, runs_dir)

    @classmethod
    def _from_payload(cls, payload: Mapping[str, Any], metadata: Mapping[str, Any], version: str) -> "LearnedAdvisor":
        params = dict(metadata["params"])
        params.setdefault("spread_power", 0.5)  # stored before the parameter existed: it was the square root
        advisor = cls(**params)
        advisor.min_memory_bytes_ = parse_memory(advisor.min_memory)
        advisor.models_ = dict(payload["models"])
        advisor.encoder_ = FeatureEncoder.from_state(payload["encoder"])
        advisor.history_ = unpack_history(payload["history"])
        advisor.feature_names_ = list(metadata["feature_names"])
        advisor.active_features_ = np.asarray(payload["active_features"], dtype=np.int64)
        calibration = payload.get("calibration")
        advisor.calibrator_ = ConformalCalibrator.from_state(calibration) if calibration is not None else None
        advisor.cpu_scores_ = np.asarray(payload["cpu_scores"], dtype=float)
        advisor.fallback_ = ResourceAdvisor.from_state(payload["fallback"])
        stored = payload.get("fallback_calibration")
        advisor.fallback_calibration_ = FallbackCalibration.from_state(stored) if stored is not None else None
        trend = payload.get("trend")  # absent in models stored before input trends
        advisor.trend_ = InputTrend.from_state(trend) if trend is not None else None
        advisor.trend_tasks_ = dict(payload.get("trend_tasks") or {})
        adaptive = payload.get("adaptive")  # absent in models stored before the adaptive level
        advisor.adaptive_ = AdaptiveOffset.from_state(adaptive) if adaptive else AdaptiveOffset(1.0 - float(advisor.coverage))
        trained_until = ((metadata.get("training") or {}).get("end_time_range") or [None, math.inf])[1]
        advisor.observed_until_ = float(payload.get("observed_until", trained_until))
        advisor.quality_ = dict(metadata.get("quality") or {})
        advisor.training_ = dict(metadata.get("training") or {})
        advisor.model_version_ = version
        advisor.sample_rows_ = np.asarray(payload["sample_rows"], dtype=np.float32)
        advisor._reset_caches()
        advisor._build_flat()
        return advisor

    @classmethod
    def _unavailable(cls, reason: str, history: pd.DataFrame | None, runs_dir: Any) -> "LearnedAdvisor":
        advisor = cls()
        if history is None and runs_dir is not None:
            from scalable.telemetry.loader import load_tasks

            history = load_tasks(runs_dir).frame
        empty = history is None
        frame = history if history is not None else pd.DataFrame(
            {c: pd.Series(dtype=float) for c in ("task", "state", "peak_memory_bytes", "cpu_seconds", "duration_s", "end_time")}
        )
        advisor.min_memory_bytes_ = parse_memory(advisor.min_memory)
        advisor.fallback_ = advisor._fallback_advisor().fit(frame)
        advisor.encoder_ = FeatureEncoder().fit(frame.assign(task=frame["task"].astype(str)) if not empty else frame)
        advisor.history_ = advisor.encoder_.history(frame) if not empty else {}
        advisor.models_ = {}
        advisor.calibrator_ = None
        advisor.fallback_calibration_ = None
        advisor.trend_ = None
        advisor.trend_tasks_ = {}
        advisor.cpu_scores_ = np.zeros(0)
        advisor.quality_ = {}
        advisor.training_ = {}
        advisor.feature_names_ = []
        advisor.active_features_ = np.zeros(0, dtype=np.int64)
        advisor.model_version_ = None
        advisor.unavailable_reason_ = reason
        advisor._reset_caches()
        return advisor


#: below this many rows OpenMP's thread start-up and, on a shared machine, its spin-waiting
#: cost more than a second core gains
_PARALLEL_ROWS = 50_000


def _beyond_basis(line: TaskTrend, x: float) -> str:
    return (f"; {line.feature}={x:g} is {x / line.x_max:.1f}x the largest this task ran with ({line.x_max:g}): "
            f"memory continues its trend ~ {line.exponent}")


def _threads(n_rows: int, n_jobs: int | None) -> int | None:
    if n_jobs is not None:
        return n_jobs
    return 1 if n_rows < _PARALLEL_ROWS else None


def _fit_quietly(model: Any, X: np.ndarray, y: np.ndarray, n_jobs: int | None = None) -> None:
    """Fit with the thread count the row count deserves.

    A column can vary over all training rows and still be missing on every row one model
    learns from (a duration model's rows of a trace whose failed tasks alone have an input);
    the boosted trees' binning raises on an all-missing column, so such a column is given to
    that model as a constant, which no tree can split on.
    """
    from threadpoolctl import threadpool_limits

    if X.dtype.kind == "f" and len(X):
        empty = np.isnan(X).all(axis=0)
        if empty.any():
            X = X.copy()
            X[:, empty] = 0.0
    with warnings.catch_warnings(), threadpool_limits(_threads(len(X), n_jobs), user_api="openmp"):
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(X, y)


def _predict(model: Any, X: np.ndarray, n_jobs: int | None = None) -> np.ndarray:
    """``model.predict``; a single row of a boosted model skips the thread pool and the
    re-validation of a matrix this module built itself, which is most of a 1-row call."""
    if len(X) == 1 and hasattr(model, "_raw_predict") and getattr(model, "_loss", None) is not None:
        return model._loss.link.inverse(model._raw_predict(X, n_threads=1).ravel())
    if len(X) < _PARALLEL_ROWS and n_jobs is None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="openmp"):
            return model.predict(X)
    return model.predict(X)


_FALLBACK_KEYS = ("cpus", "memory", "confidence", "method", "basis", "predicted_duration_s")


def _varying_columns(X: np.ndarray) -> np.ndarray:
    """Indices of the columns with at least two distinct finite values in the training rows: a
    constant column carries nothing, and the boosted trees' binning rejects one."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        low = np.nanmin(np.where(np.isfinite(X), X, np.nan), axis=0) if len(X) else np.zeros(X.shape[1])
        high = np.nanmax(np.where(np.isfinite(X), X, np.nan), axis=0) if len(X) else np.zeros(X.shape[1])
    return np.flatnonzero(high > low)


def _tags(frame: pd.DataFrame) -> np.ndarray:
    if "tag" not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    return frame["tag"].astype(object).where(frame["tag"].notna(), "").astype(str).to_numpy(dtype=object)


def _held_out_quality(
    scores: np.ndarray,
    tasks: np.ndarray,
    tags: np.ndarray,
    centre: np.ndarray,
    spread: np.ndarray,
    y_log: np.ndarray,
    coverage: float,
    min_group: int,
) -> dict[str, Any]:
    """Honest quality: calibrate on the earlier half of the held-out runs, measure on the later."""
    n = scores.size
    half = n // 2
    early = ConformalCalibrator(scores[:half], tasks[:half], tags[:half], min_group=min_group)
    q = early.thresholds(tasks[half:], coverage)
    rec = np.exp(centre[half:] + q * spread[half:])
    used = np.exp(y_log[half:])
    fits = rec >= used
    return {
        "coverage_promised": coverage,
        "coverage_measured": float(fits.mean()) if fits.size else None,
        "under_provision_rate": float(1 - fits.mean()) if fits.size else None,
        "slack": float(np.sum(rec[fits] - used[fits]) / np.sum(rec[fits])) if fits.any() else None,
        "mae_bytes": float(np.mean(np.abs(np.exp(centre[half:]) - used))) if fits.size else None,
        "n_calibration": int(n),
        "n_measured": int(n - half),
    }


def _percent(q: float) -> str:
    value = q * 100
    return f"{value:.0f}" if math.isclose(value, round(value)) else f"{value:g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
