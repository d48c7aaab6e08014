"""AdaptiveScaler: worker counts per tag from queue state plus the load the advisor predicts.

The scaler is a pure function of the snapshots it is shown and the times it is told, so the
local session, the operator and the benchmark drive the same code, and a test can replay a
sequence of snapshots exactly. It never talks to Dask or Kubernetes: callers read the queue
state, call :meth:`AdaptiveScaler.evaluate`, and apply the targets (retiring only idle
workers).

Utilisation is the tasks in flight (queued plus processing) over the capacity (workers x
threads per worker); it exceeds 1 when tasks wait. Thresholds apply to it:

* reactive: above ``scale_up_threshold`` scale up to the workers that bring utilisation to
  ``target_utilisation``; below ``scale_down_threshold`` scale down, gradually.
* predictive (an advisor with confident duration predictions): the queued tasks, half of
  the running ones and the tasks forecast to arrive within ``horizon_seconds`` are turned
  into work-seconds with the predicted durations; that work over the horizon is the
  predicted load (busy threads). The group is scaled up as soon as the predicted load
  crosses the threshold, before the queue fills, and is not scaled up for a queue the
  current workers will clear within the horizon anyway. It never asks for more threads
  than there are tasks (queued, running and forecast), however long they are, and a task
  counts for at most the horizon: within it, one thread is all a task can use.

Bounds are never left, and a scale-down never goes below the workers that are busy. A tag
changes at most once per ``cooldown_seconds`` from its last change, with two exceptions:
bound repairs, and a scale-up right after a scale-down. The cooldown is there against
flapping and to give new workers time to arrive; letting it hold tasks back behind a
scale-down would make the load that returned wait a whole cooldown (AWS target tracking
interrupts a scale-in cooldown the same way). At most one down-then-up pair fits in a
cooldown, since the scale-up starts a new one.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scalable.scaling.decision import ScalingDecision, TagDecision
from scalable.scaling.forecast import ArrivalForecaster

__all__ = ["AdaptiveScaler", "TagSnapshot"]

_CACHE_LIMIT = 4096
#: added to the cooldown for the default horizon: what it takes a new worker to start and join
_START_UP_ALLOWANCE_S = 30.0


@dataclass(frozen=True)
class TagSnapshot:
    """Queue state of one tag (worker group) at one moment.

    ``processing`` counts tasks executing on a worker thread, ``queued`` tasks waiting for
    one (on the scheduler or already assigned to a worker). ``submitted`` is the
    cumulative count of tasks ever submitted for the tag, used for the arrival forecast.
    ``pending`` optionally lists the queued and processing tasks as
    ``{"task": ..., "input_features": {...}}`` so that predicted work uses every task's
    own inputs; otherwise ``task`` and ``input_features`` describe a typical task.
    ``idle_workers`` are workers with nothing in flight, the only ones that may retire.
    """

    queued: int = 0
    processing: int = 0
    workers: int = 0
    threads_per_worker: int = 1
    task: str | None = None
    input_features: Mapping[str, Any] = field(default_factory=dict)
    idle_workers: int | None = None
    submitted: int | None = None
    pending: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def of(cls, value: "TagSnapshot | Mapping[str, Any]") -> "TagSnapshot":
        if isinstance(value, TagSnapshot):
            return value
        data = dict(value)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown snapshot fields {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}")
        data["pending"] = tuple(data.get("pending") or ())
        data["input_features"] = dict(data.get("input_features") or {})
        snapshot = cls(**data)
        for name in ("queued", "processing", "workers"):
            if getattr(snapshot, name) < 0:
                raise ValueError(f"snapshot field {name} must be >= 0, got {getattr(snapshot, name)}")
        if snapshot.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {snapshot.threads_per_worker}")
        return snapshot

    @property
    def demand(self) -> int:
        return self.queued + self.processing

    @property
    def busy_workers(self) -> int:
        """Workers that must not retire; without ``idle_workers`` assume tasks spread out."""
        if self.idle_workers is not None:
            return max(0, self.workers - self.idle_workers)
        return min(self.workers, self.demand)


@dataclass
class _TagState:
    forecaster: ArrivalForecaster
    last_change: float | None = None
    last_action: str | None = None
    last_prediction: "_Prediction | None" = None
    last_demand: int = 0


@dataclass(frozen=True)
class _Prediction:
    mean_duration_s: float
    confidence: float
    count: int


class AdaptiveScaler:
    """Decides worker counts per tag; see the module docstring for the rules.

    ``horizon_seconds`` defaults to the cooldown plus 30 s: what arrives before the scaler
    can act again and a new worker has joined is what it must provision for now.
    ``min_workers`` and ``max_workers`` are an int for every tag or a dict per tag (a dict
    may carry ``"*"`` as the default); a tag with no bounds is held. ``advisor`` is any
    object with ``recommend_batch([{"task", "input_features"}])`` returning
    recommendations with ``predicted_duration_s`` and ``confidence`` (the LearnedAdvisor).
    """

    def __init__(
        self,
        advisor: Any = None,
        min_workers: int | Mapping[str, int] = 0,
        max_workers: int | Mapping[str, int] = 10,
        scale_up_threshold: float = 0.8,
        scale_down_threshold: float = 0.3,
        cooldown_seconds: float = 60.0,
        *,
        target_utilisation: float | None = None,
        horizon_seconds: float | None = None,
        min_confidence: float = 0.5,
        max_scale_up_step: int | None = None,
        max_scale_down_step: int = 1,
        forecast_half_life_s: float = 2.0,
    ) -> None:
        if not 0 < scale_down_threshold < scale_up_threshold:
            raise ValueError(
                f"need 0 < scale_down_threshold < scale_up_threshold, got {scale_down_threshold} and {scale_up_threshold}"
            )
        if horizon_seconds is None:
            horizon_seconds = cooldown_seconds + _START_UP_ALLOWANCE_S
        if cooldown_seconds < 0 or horizon_seconds <= 0:
            raise ValueError("cooldown_seconds must be >= 0 and horizon_seconds > 0")
        if max_scale_down_step < 1 or (max_scale_up_step is not None and max_scale_up_step < 1):
            raise ValueError("scale steps must be >= 1")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.advisor = advisor
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.scale_up_threshold = scale_up_threshold
        self.scale_down_threshold = scale_down_threshold
        self.cooldown_seconds = cooldown_seconds
        self.target_utilisation = (
            target_utilisation if target_utilisation is not None else (scale_up_threshold + scale_down_threshold) / 2
        )
        if not scale_down_threshold <= self.target_utilisation <= scale_up_threshold:
            raise ValueError("target_utilisation must lie between the two thresholds")
        self.horizon_seconds = horizon_seconds
        self.min_confidence = min_confidence
        self.max_scale_up_step = max_scale_up_step
        self.max_scale_down_step = max_scale_down_step
        self.forecast_half_life_s = forecast_half_life_s
        self._states: dict[str, _TagState] = {}
        self._predictions: dict[tuple, tuple[float | None, float]] = {}
        self._check_bounds()

    def _check_bounds(self) -> None:
        tags = set()
        for bound in (self.min_workers, self.max_workers):
            if isinstance(bound, Mapping):
                tags |= set(bound)
        for tag in tags or {"*"}:
            low, high = self.bounds(tag)
            if low is None or high is None:
                continue
            if low < 0 or high < low:
                raise ValueError(f"tag {tag!r}: need 0 <= min_workers <= max_workers, got {low} and {high}")

    @staticmethod
    def _bound(bound: int | Mapping[str, int], tag: str) -> int | None:
        if isinstance(bound, Mapping):
            value = bound.get(tag, bound.get("*"))
            return None if value is None else int(value)
        return int(bound)

    def bounds(self, tag: str) -> tuple[int | None, int | None]:
        """(min, max) workers for ``tag``; None where the configuration has none."""
        low = self._bound(self.min_workers, tag)
        high = self._bound(self.max_workers, tag)
        if low is None and high is not None:
            low = 0
        return low, high

    def evaluate(self, snapshot: Mapping[str, Any], now: float | None = None) -> ScalingDecision:
        """Decide a target per tag in ``snapshot`` (tag -> queue state) at time ``now``.

        The scaler assumes every non-hold target is applied: the tag's cooldown starts now.
        """
        now = _time.time() if now is None else float(now)
        decisions = {}
        for tag, raw in snapshot.items():
            snap = TagSnapshot.of(raw)
            state = self._states.get(tag)
            if state is None:
                state = self._states[tag] = _TagState(ArrivalForecaster(self.forecast_half_life_s, 2 * self.forecast_half_life_s))
            submitted = snap.submitted
            if submitted is None:
                previous = state.forecaster.state.submitted if state.forecaster.state else 0
                submitted = previous + max(0, snap.demand - state.last_demand)
            state.forecaster.observe(now, submitted)
            state.last_demand = snap.demand
            decision = self._decide(tag, snap, state, now)
            if decision.action != "hold":
                state.last_change, state.last_action = now, decision.action
            decisions[tag] = decision
        return ScalingDecision(time=now, tags=decisions)

    def _decide(self, tag: str, snap: TagSnapshot, state: _TagState, now: float) -> TagDecision:
        low, high = self.bounds(tag)
        util = self._utilisation(snap.demand, snap.workers * snap.threads_per_worker)

        def make(action, to, reason, mode, load=None, confidence=None):
            return TagDecision(
                tag=tag, action=action, from_workers=snap.workers, to_workers=to, reason=reason, mode=mode,
                utilisation=util, queued=snap.queued, processing=snap.processing,
                predicted_load=load, confidence=confidence,
            )

        if high is None:
            return make("hold", snap.workers, f"no min/max workers configured for tag {tag!r}; holding", "hold")
        if snap.workers < low:
            return make("scale_up", low, f"{snap.workers} workers is below the minimum {low}", "reactive")
        if snap.workers > high:
            return make(
                "scale_down", high,
                f"{snap.workers} workers is above the maximum {high}; idle workers retire first, busy ones when they finish",
                "reactive",
            )

        prediction, fallback = self._predict(snap, state)
        if prediction is None:
            wanted, why = self._reactive(snap, util)
            mode, load, confidence = "reactive", None, None
            why = f"{fallback}; {why}"
        else:
            wanted, why, load = self._predictive(snap, util, prediction, state)
            mode, confidence = "predictive", prediction.confidence

        if wanted is None or wanted == snap.workers:
            return make("hold", snap.workers, why, mode, load, confidence)
        if wanted > snap.workers:
            if self.max_scale_up_step is not None:
                wanted = min(wanted, snap.workers + self.max_scale_up_step)
            target = min(wanted, high)
            if target < wanted:
                why += f"; capped at the maximum {high}"
        else:
            floor = max(low, snap.busy_workers, snap.workers - self.max_scale_down_step)
            target = max(wanted, floor)
            if target > wanted:
                why += f"; gradual and graceful: down to {target} (min {low}, {snap.busy_workers} busy, step {self.max_scale_down_step})"
        if target == snap.workers:
            return make("hold", snap.workers, why, mode, load, confidence)
        action = "scale_up" if target > snap.workers else "scale_down"
        reverses_scale_down = action == "scale_up" and state.last_action == "scale_down"
        if state.last_change is not None and now - state.last_change < self.cooldown_seconds and not reverses_scale_down:
            left = self.cooldown_seconds - (now - state.last_change)
            return make(
                "hold", snap.workers, f"{why}; in cooldown for {left:.0f}s more, holding at {snap.workers}", mode, load, confidence
            )
        if reverses_scale_down and state.last_change is not None and now - state.last_change < self.cooldown_seconds:
            why += "; a scale-down in cooldown does not hold back a scale-up"
        return make(action, target, why, mode, load, confidence)

    @staticmethod
    def _utilisation(demand: float, capacity: int) -> float:
        if capacity > 0:
            return demand / capacity
        return math.inf if demand > 0 else 0.0

    def _workers_for(self, busy_threads: float, threads: int) -> int:
        return math.ceil(round(busy_threads / (threads * self.target_utilisation), 9))

    def _reactive(self, snap: TagSnapshot, util: float) -> tuple[int | None, str]:
        capacity = snap.workers * snap.threads_per_worker
        seen = (
            f"utilisation {util:.2f} ({snap.queued} queued + {snap.processing} processing "
            f"on {snap.workers} workers x {snap.threads_per_worker} threads)"
        )
        if snap.demand == 0 and capacity == 0:
            return None, "no tasks and no workers"
        wanted = self._workers_for(snap.demand, snap.threads_per_worker)
        if util > self.scale_up_threshold:
            return wanted, f"{seen} above {self.scale_up_threshold}; {wanted} workers bring it to {self.target_utilisation:.2f}"
        if util < self.scale_down_threshold:
            return wanted, f"{seen} below {self.scale_down_threshold}"
        return None, f"{seen} within [{self.scale_down_threshold}, {self.scale_up_threshold}]"

    def _predict(self, snap: TagSnapshot, state: _TagState) -> tuple[_Prediction | None, str]:
        """Mean predicted duration and confidence of this tag's tasks, or why there is none."""
        if self.advisor is None:
            return None, "reactive: no advisor"
        items = [
            {"task": p["task"], "input_features": dict(p.get("input_features") or {})}
            for p in snap.pending
            if p.get("task")
        ]
        if not items and snap.task:
            items = [{"task": snap.task, "input_features": dict(snap.input_features)}]
        if not items:
            if state.last_prediction is not None and snap.demand == 0:
                return state.last_prediction, ""
            return None, "reactive: no task name to predict durations for"
        try:
            results = self._recommend(items)
        except Exception as exc:  # noqa: BLE001 - any advisor failure degrades to reactive
            return None, f"reactive: advisor failed ({type(exc).__name__}: {exc})"
        durations = [d for d, _ in results]
        if any(d is None for d in durations):
            return None, "reactive: advisor has no duration prediction for these tasks"
        confidence = sum(c for _, c in results) / len(results)
        if confidence < self.min_confidence:
            return None, f"reactive: advisor confidence {confidence:.2f} below {self.min_confidence:.2f}"
        state.last_prediction = _Prediction(sum(durations) / len(durations), confidence, len(items))
        return state.last_prediction, ""

    def _recommend(self, items: list[dict]) -> list[tuple[float | None, float]]:
        keys = [(i["task"], tuple(sorted((k, repr(v)) for k, v in i["input_features"].items()))) for i in items]
        missing = {}
        for key, item in zip(keys, items):
            if key not in self._predictions and key not in missing:
                missing[key] = item
        if missing:
            recs = self.advisor.recommend_batch(list(missing.values()))
            if len(self._predictions) + len(missing) > _CACHE_LIMIT:
                self._predictions.clear()
            for key, rec in zip(missing, recs):
                duration = getattr(rec, "predicted_duration_s", None)
                confidence = float(getattr(rec, "confidence", 0.0) or 0.0)
                self._predictions[key] = (None if duration is None else max(0.0, float(duration)), confidence)
        return [self._predictions[key] for key in keys]

    def _predictive(
        self, snap: TagSnapshot, util: float, prediction: _Prediction, state: _TagState
    ) -> tuple[int | None, str, float]:
        horizon = self.horizon_seconds
        arriving = state.forecaster.arrivals(horizon)
        mean = prediction.mean_duration_s
        work = (snap.queued + arriving) * min(mean, horizon) + snap.processing * min(mean / 2, horizon)
        load = work / horizon
        capacity = snap.workers * snap.threads_per_worker
        predicted_util = self._utilisation(load, capacity)
        tasks = snap.queued + snap.processing + math.ceil(arriving)
        wanted = min(self._workers_for(load, snap.threads_per_worker), math.ceil(tasks / snap.threads_per_worker))
        wanted = max(wanted, math.ceil(snap.processing / snap.threads_per_worker))
        seen = (
            f"predictive: ({snap.queued} queued + {snap.processing} processing/2 + {arriving:.1f} arriving in "
            f"{horizon:.0f}s) x {mean:.2f}s predicted (confidence {prediction.confidence:.2f}) = "
            f"{work:.1f} work-seconds, load {load:.2f} threads on capacity {capacity} (utilisation {predicted_util:.2f})"
        )
        if predicted_util > self.scale_up_threshold:
            return wanted, f"{seen} above {self.scale_up_threshold}; {wanted} workers bring it to {self.target_utilisation:.2f}", load
        if predicted_util < self.scale_down_threshold and util < self.scale_down_threshold:
            return min(wanted, snap.workers), f"{seen} below {self.scale_down_threshold}", load
        if util > self.scale_up_threshold:
            return None, f"{seen}: the current workers clear the queue (utilisation {util:.2f}) within the horizon", load
        return None, f"{seen} within [{self.scale_down_threshold}, {self.scale_up_threshold}]", load
