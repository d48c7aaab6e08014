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
* predictive (an advisor with confident duration predictions): every task in flight gets
  its predicted duration, and the tasks forecast to arrive within ``horizon_seconds`` the
  predicted duration of the latest submissions. From them the scaler draws the profile of
  busy threads over the horizon if no task waited: running tasks keep their thread for
  their predicted remaining time, waiting tasks take the threads the current workers free
  before a new worker could join (``worker_startup_seconds``) and the rest start when it
  joins, each forecast arrival runs from its arrival for its duration. The predicted load
  is the peak of that profile from the moment a new worker could join to the end of the
  horizon: the threads needed so that no task waits, at the worst moment the decision
  still covers (the next one comes a cooldown later). The group is scaled up as soon as
  the predicted load crosses the threshold, before the queue fills, and is not scaled up
  for a queue the current workers clear before a new worker could join anyway. It never
  asks for more threads than there are tasks (queued, running and forecast), however
  long they are: one thread is all a task can use.

Bounds are never left, and a scale-down never goes below the workers that are busy. A tag
changes at most once per cooldown (:mod:`scalable.scaling.cooldown`, the one rule), bound
repairs excepted.

The scaler keeps no decision state of its own: :meth:`AdaptiveScaler.evaluate` takes a
:class:`~scalable.scaling.history.ScalingHistory` and changes nothing, and the caller commits
the changes it really applied (:meth:`ScalingDecision.commit`). Its configuration is one
frozen :class:`~scalable.scaling.config.ScalerConfig`.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scalable.scaling.config import DEFAULTS, ScalerConfig
from scalable.scaling.cooldown import cooldown
from scalable.scaling.decision import ScalingDecision, TagDecision
from scalable.scaling.forecast import ArrivalForecaster
from scalable.scaling.history import ScalingHistory, TagHistory

__all__ = ["AdaptiveScaler", "TagSnapshot"]

_CACHE_LIMIT = 4096
#: points of the busy-thread profile over the horizon
_PROFILE_STEPS = 64
#: the latest submissions whose mean predicted duration stands for the next arrivals
_RECENT_TASKS = 10


@dataclass(frozen=True)
class TagSnapshot:
    """Queue state of one tag (worker group) at one moment.

    ``processing`` counts tasks executing on a worker thread, ``queued`` tasks waiting for
    one (on the scheduler or already assigned to a worker). ``submitted`` is the
    cumulative count of tasks ever submitted for the tag, used for the arrival forecast.
    ``pending`` optionally lists the queued and processing tasks in submission order as
    ``{"task": ..., "input_features": {...}}``, with ``"started_at"`` (epoch seconds) for
    those a worker runs, so that predicted work uses every task's own inputs and the time
    a running task has left; otherwise ``task`` and ``input_features`` describe a
    typical task.
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


@dataclass(frozen=True)
class _Prediction:
    """Predicted durations of the tag's tasks in flight, and of the ones about to arrive.

    ``running`` holds, per task a worker thread runs, its predicted duration and the
    seconds it has run (None when unknown); ``queued`` the predicted durations of the
    waiting tasks in submission order. ``arrival_duration_s`` is the mean predicted
    duration of the most recently submitted tasks: what the next arrivals are like.
    """

    mean_duration_s: float
    confidence: float
    count: int
    running: tuple[tuple[float, float | None], ...] = ()
    queued: tuple[float, ...] = ()
    arrival_duration_s: float = 0.0


class AdaptiveScaler:
    """Decides worker counts per tag; see the module docstring for the rules.

    ``config`` is a :class:`ScalerConfig` (the library's defaults when omitted); keyword
    settings (``min_workers=2, cooldown_seconds=30``, any field of ScalerConfig) change it.
    ``advisor`` is any object with ``recommend_batch([{"task", "input_features"}])``
    returning recommendations with ``predicted_duration_s`` and ``confidence`` (the
    LearnedAdvisor); without one the scaler is reactive.
    """

    def __init__(self, advisor: Any = None, config: ScalerConfig | None = None, **settings: Any) -> None:
        self.advisor = advisor
        self.config = (config or DEFAULTS).with_changes(**settings) if settings else (config or DEFAULTS)
        self._predictions: dict[tuple, tuple[float | None, float]] = {}

    def bounds(self, tag: str) -> tuple[int | None, int | None]:
        """(min, max) workers for ``tag``; None where the configuration has none."""
        return self.config.bounds(tag)

    def evaluate(self, snapshot: Mapping[str, Any], now: float | None = None,
                 history: ScalingHistory | None = None) -> ScalingDecision:
        """Decide a target per tag in ``snapshot`` (tag -> queue state) at time ``now``.

        ``history`` is what :meth:`ScalingDecision.commit` returned last time (empty when
        omitted); it is not changed. Apply the decision, then commit what was applied.
        """
        now = _time.time() if now is None else float(now)
        history = history or ScalingHistory()
        half_life = self.config.forecast_half_life_seconds
        decisions, observed = {}, {}
        for tag, raw in snapshot.items():
            snap = TagSnapshot.of(raw)
            past = history.of(tag)
            forecaster = ArrivalForecaster(half_life, 2 * half_life, state=past.forecast)
            submitted = snap.submitted
            if submitted is None:
                previous = past.forecast.submitted if past.forecast else 0
                submitted = previous + max(0, snap.demand - past.last_demand)
            forecaster.observe(now, submitted)
            decision, prediction = self._decide(tag, snap, past, forecaster, now)
            decisions[tag] = decision
            observed[tag] = replace(past, forecast=forecaster.state, last_demand=snap.demand,
                                    last_prediction=prediction if prediction is not None else past.last_prediction)
        return ScalingDecision(time=now, tags=decisions, observed=history.with_tags(observed))

    def _decide(self, tag: str, snap: TagSnapshot, past: TagHistory, forecaster: ArrivalForecaster,
                now: float) -> tuple[TagDecision, "_Prediction | None"]:
        low, high = self.bounds(tag)
        util = self._utilisation(snap.demand, snap.workers * snap.threads_per_worker)

        def make(action, to, reason, mode, load=None, confidence=None):
            return TagDecision(
                tag=tag, action=action, from_workers=snap.workers, to_workers=to, reason=reason, mode=mode,
                utilisation=util, queued=snap.queued, processing=snap.processing,
                predicted_load=load, confidence=confidence,
            )

        if high is None:
            return make("hold", snap.workers, f"no min/max workers configured for tag {tag!r}; holding", "hold"), None
        if snap.workers < low:
            return make("scale_up", low, f"{snap.workers} workers is below the minimum {low}", "reactive"), None
        if snap.workers > high:
            return make(
                "scale_down", high,
                f"{snap.workers} workers is above the maximum {high}; idle workers retire first, busy ones when they finish",
                "reactive",
            ), None

        prediction, fallback = self._predict(snap, past, now)
        if prediction is None:
            wanted, why = self._reactive(snap, util)
            mode, load, confidence = "reactive", None, None
            why = f"{fallback}; {why}"
        else:
            wanted, why, load = self._predictive(snap, util, prediction, forecaster)
            mode, confidence = "predictive", prediction.confidence

        if wanted is None or wanted == snap.workers:
            return make("hold", snap.workers, why, mode, load, confidence), prediction
        if wanted > snap.workers:
            if self.config.max_scale_up_step is not None:
                wanted = min(wanted, snap.workers + self.config.max_scale_up_step)
            target = min(wanted, high)
            if target < wanted:
                why += f"; capped at the maximum {high}"
        else:
            floor = max(low, snap.busy_workers, snap.workers - self.config.max_scale_down_step)
            target = max(wanted, floor)
            if target > wanted:
                why += f"; gradual and graceful: down to {target} (min {low}, {snap.busy_workers} busy, step {self.config.max_scale_down_step})"
        if target == snap.workers:
            return make("hold", snap.workers, why, mode, load, confidence), prediction
        action = "scale_up" if target > snap.workers else "scale_down"
        verdict = cooldown(action, past.last_change, past.last_action, now, self.config.cooldown_seconds)
        if not verdict.allowed:
            return make(
                "hold", snap.workers, f"{why}; in cooldown for {verdict.seconds_left:.0f}s more, holding at {snap.workers}",
                mode, load, confidence,
            ), prediction
        if verdict.note:
            why += f"; {verdict.note}"
        return make(action, target, why, mode, load, confidence), prediction

    @staticmethod
    def _utilisation(demand: float, capacity: int) -> float:
        if capacity > 0:
            return demand / capacity
        return math.inf if demand > 0 else 0.0

    def _workers_for(self, busy_threads: float, threads: int) -> int:
        return math.ceil(round(busy_threads / (threads * self.config.utilisation_target), 9))

    def _reactive(self, snap: TagSnapshot, util: float) -> tuple[int | None, str]:
        capacity = snap.workers * snap.threads_per_worker
        seen = (
            f"utilisation {util:.2f} ({snap.queued} queued + {snap.processing} processing "
            f"on {snap.workers} workers x {snap.threads_per_worker} threads)"
        )
        if snap.demand == 0 and capacity == 0:
            return None, "no tasks and no workers"
        wanted = self._workers_for(snap.demand, snap.threads_per_worker)
        if util > self.config.scale_up_threshold:
            return wanted, f"{seen} above {self.config.scale_up_threshold}; {wanted} workers bring it to {self.config.utilisation_target:.2f}"
        if util < self.config.scale_down_threshold:
            return wanted, f"{seen} below {self.config.scale_down_threshold}"
        return None, f"{seen} within [{self.config.scale_down_threshold}, {self.config.scale_up_threshold}]"

    def _predict(self, snap: TagSnapshot, past: TagHistory, now: float) -> tuple[_Prediction | None, str]:
        """Predicted durations of this tag's tasks and the confidence, or why there are none."""
        if self.advisor is None:
            return None, "reactive: no advisor"
        entries = [p for p in snap.pending if p.get("task")]
        items = [{"task": p["task"], "input_features": dict(p.get("input_features") or {})} for p in entries]
        if not items and snap.task:
            items = [{"task": snap.task, "input_features": dict(snap.input_features)}]
        if not items:
            if past.last_prediction is not None and snap.demand == 0:
                return replace(past.last_prediction, running=(), queued=()), ""
            return None, "reactive: no task name to predict durations for"
        try:
            results = self._recommend(items)
        except Exception as exc:  # noqa: BLE001 - any advisor failure degrades to reactive
            return None, f"reactive: advisor failed ({type(exc).__name__}: {exc})"
        durations = [d for d, _ in results]
        if any(d is None for d in durations):
            return None, "reactive: advisor has no duration prediction for these tasks"
        confidence = sum(c for _, c in results) / len(results)
        if confidence < self.config.min_confidence:
            return None, f"reactive: advisor confidence {confidence:.2f} below {self.config.min_confidence:.2f}"
        mean = sum(durations) / len(durations)
        running: list[tuple[float, float | None]] = []
        queued: list[float] = []
        if entries:
            if any(p.get("started_at") is not None for p in entries):
                for p, d in zip(entries, durations):
                    if p.get("started_at") is not None:
                        running.append((d, max(0.0, now - float(p["started_at"]))))
                    else:
                        queued.append(d)
            else:  # no start times: tasks start roughly in submission order
                running = [(d, None) for d in durations[: snap.processing]]
                queued = durations[snap.processing :]
        # the scheduler's counts are authoritative; a typical task stands in for the unlisted
        running = running[: snap.processing] + [(mean, None)] * max(0, snap.processing - len(running))
        queued = queued[: snap.queued] + [mean] * max(0, snap.queued - len(queued))
        recent = durations[-_RECENT_TASKS:]
        return _Prediction(mean, confidence, len(items), tuple(running), tuple(queued), sum(recent) / len(recent)), ""

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

    def _peak_load(self, snap: TagSnapshot, prediction: _Prediction, forecaster: ArrivalForecaster) -> float:
        """Peak of the busy threads the tasks need, from when a new worker could join to the horizon.

        Running tasks keep their thread for their predicted remaining time (half their
        predicted duration when their start is unknown). Waiting tasks go, in order, to the
        threads the current workers free before a new worker could join
        (``worker_startup_seconds``, the lead). The rest are spread over the fewest extra
        threads, from the lead, on which each starts within one more lead: a long task
        gets a thread of its own, short ones share, since a task that would wait less
        than a worker's start-up is not worth a worker. A task forecast to arrive at
        ``u`` keeps a thread busy from ``u`` for the predicted duration of the latest
        submissions.
        """
        horizon = self.config.horizon
        lead = min(self.config.worker_startup_seconds, horizon)
        starts: list[float] = []
        ends: list[float] = []

        def run(start: float, duration: float) -> float:
            starts.append(start)
            ends.append(start + duration)
            return start + duration

        free = []
        for duration, elapsed in prediction.running:
            left = duration / 2 if elapsed is None else max(0.0, duration - elapsed)
            free.append(run(0.0, left))
        free += [0.0] * max(0, snap.workers * snap.threads_per_worker - len(free))
        heapq.heapify(free)
        queued = list(prediction.queued)
        while queued and free and free[0] < lead:
            heapq.heappush(free, run(heapq.heappop(free), queued.pop(0)))
        if queued:
            # threads free at the lead (or later) and ``extra`` new ones joining at the lead
            def schedule(extra: int, record: bool) -> bool:
                threads = [max(lead, f) for f in free] + [lead] * extra
                heapq.heapify(threads)
                for duration in queued:
                    start = heapq.heappop(threads)
                    if not record and start > 2 * lead + 1e-9:
                        return False
                    heapq.heappush(threads, run(start, duration) if record else start + duration)
                return True

            low, high = 0, len(queued)
            while low < high:
                middle = (low + high) // 2
                if schedule(middle, record=False):
                    high = middle
                else:
                    low = middle + 1
            schedule(low, record=True)
        starts.sort()
        ends.sort()
        # arrivals: the cumulative forecast on a grid (trapezoids); at s, those of the last duration
        grid = [horizon * k / _PROFILE_STEPS for k in range(_PROFILE_STEPS + 1)]
        rates = [forecaster.rate(x) for x in grid]
        cumulative = [0.0]
        for k in range(1, len(grid)):
            cumulative.append(cumulative[-1] + (rates[k - 1] + rates[k]) / 2 * (grid[k] - grid[k - 1]))
        duration = prediction.arrival_duration_s

        def busy(x: float) -> float:
            running = bisect.bisect_right(starts, x) - bisect.bisect_right(ends, x)
            arriving = _interpolate(grid, cumulative, x) - _interpolate(grid, cumulative, x - duration)
            return running + arriving

        # the step function peaks where a task starts; the arrivals are smooth on the grid
        points = [lead] + [x for x in starts if lead <= x <= horizon] + [x for x in grid if x >= lead]
        return max(busy(x) for x in points)

    def _predictive(
        self, snap: TagSnapshot, util: float, prediction: _Prediction, forecaster: ArrivalForecaster
    ) -> tuple[int | None, str, float]:
        horizon = self.config.horizon
        lead = min(self.config.worker_startup_seconds, horizon)
        arriving = forecaster.arrivals(horizon)
        load = self._peak_load(snap, prediction, forecaster)
        capacity = snap.workers * snap.threads_per_worker
        predicted_util = self._utilisation(load, capacity)
        tasks = snap.queued + snap.processing + math.ceil(arriving)
        wanted = min(self._workers_for(load, snap.threads_per_worker), math.ceil(tasks / snap.threads_per_worker))
        wanted = max(wanted, math.ceil(snap.processing / snap.threads_per_worker))
        seen = (
            f"predictive: {snap.queued} queued and {snap.processing} running ({prediction.mean_duration_s:.2f}s "
            f"predicted on average, confidence {prediction.confidence:.2f}) and {arriving:.1f} forecast to arrive in "
            f"{horizon:.0f}s ({prediction.arrival_duration_s:.2f}s each) keep up to {load:.2f} threads busy once a new "
            f"worker could join ({lead:.0f}s), on capacity {capacity} (utilisation {predicted_util:.2f})"
        )
        if predicted_util > self.config.scale_up_threshold:
            return wanted, f"{seen} above {self.config.scale_up_threshold}; {wanted} workers bring it to {self.config.utilisation_target:.2f}", load
        if predicted_util < self.config.scale_down_threshold and util < self.config.scale_down_threshold:
            return min(wanted, snap.workers), f"{seen} below {self.config.scale_down_threshold}", load
        if util > self.config.scale_up_threshold:
            return None, f"{seen}: the current workers clear the queue (utilisation {util:.2f}) before a new worker could join", load
        return None, f"{seen} within [{self.config.scale_down_threshold}, {self.config.scale_up_threshold}]", load


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """``ys`` at ``x`` on the increasing grid ``xs``, linear inside and flat outside."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    k = bisect.bisect_right(xs, x) - 1
    span = xs[k + 1] - xs[k]
    return ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / span if span > 0 else ys[k]
