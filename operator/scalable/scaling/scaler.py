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
changes at most once per ``cooldown_seconds`` from its last change, with two exceptions:
bound repairs, and a scale-up right after a scale-down. The cooldown is there against
flapping and to give new workers time to arrive; letting it hold tasks back behind a
scale-down would make the load that returned wait a whole cooldown (AWS target tracking
interrupts a scale-in cooldown the same way). At most one down-then-up pair fits in a
cooldown, since the scale-up starts a new one.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scalable.scaling.decision import ScalingDecision, TagDecision
from scalable.scaling.forecast import ArrivalForecaster

__all__ = ["AdaptiveScaler", "TagSnapshot"]

_CACHE_LIMIT = 4096
#: added to the cooldown for the default horizon: what it takes a new worker to start and join
_START_UP_ALLOWANCE_S = 30.0
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


@dataclass
class _TagState:
    forecaster: ArrivalForecaster
    last_change: float | None = None
    last_action: str | None = None
    last_prediction: "_Prediction | None" = None
    last_demand: int = 0


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

    ``worker_startup_seconds`` is how long a worker asked for now takes to join (30 s by
    default, a pod's; a local worker process takes a second or two). ``horizon_seconds``
    defaults to the cooldown plus that: what arrives before the scaler can act again and a
    new worker has joined is what it must provision for now.
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
        worker_startup_seconds: float = _START_UP_ALLOWANCE_S,
    ) -> None:
        if not 0 < scale_down_threshold < scale_up_threshold:
            raise ValueError(
                f"need 0 < scale_down_threshold < scale_up_threshold, got {scale_down_threshold} and {scale_up_threshold}"
            )
        if worker_startup_seconds < 0:
            raise ValueError(f"worker_startup_seconds must be >= 0, got {worker_startup_seconds}")
        if horizon_seconds is None:
            horizon_seconds = cooldown_seconds + worker_startup_seconds
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
        self.worker_startup_seconds = worker_startup_seconds
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

        prediction, fallback = self._predict(snap, state, now)
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

    def _predict(self, snap: TagSnapshot, state: _TagState, now: float) -> tuple[_Prediction | None, str]:
        """Predicted durations of this tag's tasks and the confidence, or why there are none."""
        if self.advisor is None:
            return None, "reactive: no advisor"
        entries = [p for p in snap.pending if p.get("task")]
        items = [{"task": p["task"], "input_features": dict(p.get("input_features") or {})} for p in entries]
        if not items and snap.task:
            items = [{"task": snap.task, "input_features": dict(snap.input_features)}]
        if not items:
            if state.last_prediction is not None and snap.demand == 0:
                return replace(state.last_prediction, running=(), queued=()), ""
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
        state.last_prediction = _Prediction(
            mean, confidence, len(items), tuple(running), tuple(queued), sum(recent) / len(recent)
        )
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
        horizon = self.horizon_seconds
        lead = min(self.worker_startup_seconds, horizon)
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
        self, snap: TagSnapshot, util: float, prediction: _Prediction, state: _TagState
    ) -> tuple[int | None, str, float]:
        horizon = self.horizon_seconds
        lead = min(self.worker_startup_seconds, horizon)
        arriving = state.forecaster.arrivals(horizon)
        load = self._peak_load(snap, prediction, state.forecaster)
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
        if predicted_util > self.scale_up_threshold:
            return wanted, f"{seen} above {self.scale_up_threshold}; {wanted} workers bring it to {self.target_utilisation:.2f}", load
        if predicted_util < self.scale_down_threshold and util < self.scale_down_threshold:
            return min(wanted, snap.workers), f"{seen} below {self.scale_down_threshold}", load
        if util > self.scale_up_threshold:
            return None, f"{seen}: the current workers clear the queue (utilisation {util:.2f}) before a new worker could join", load
        return None, f"{seen} within [{self.scale_down_threshold}, {self.scale_up_threshold}]", load


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """``ys`` at ``x`` on the increasing grid ``xs``, linear inside and flat outside."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    k = bisect.bisect_right(xs, x) - 1
    span = xs[k + 1] - xs[k]
    return ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / span if span > 0 else ys[k]
