"""AdaptiveScaler: bounds, cooldown, graceful scale-down, predictive versus reactive."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalable.scaling.history import ScalingHistory
from scalable.scaling.scaler import AdaptiveScaler
from scalable.telemetry.schema import ScalingDecisionRecord


@dataclass
class _Rec:
    predicted_duration_s: float | None
    confidence: float


class _FixedAdvisor:
    """Stands in for the LearnedAdvisor in these one-function tests: fixed duration and confidence."""

    def __init__(self, duration: float | None = 2.0, confidence: float = 0.9) -> None:
        self.duration = duration
        self.confidence = confidence
        self.calls = 0

    def recommend_batch(self, items):
        self.calls += 1
        return [_Rec(self.duration, self.confidence) for _ in items]


class Applying:
    """A caller that applies every change it is given and commits it, as the session does when
    nothing fails: the scaler's history threads from one decision to the next."""

    def __init__(self, scaler: AdaptiveScaler) -> None:
        self.scaler = scaler
        self.history = ScalingHistory()

    def evaluate(self, snapshot, now=None):
        decision = self.scaler.evaluate(snapshot, now, self.history)
        self.history = decision.commit(decision.changes)
        return decision

    def __getattr__(self, name):
        return getattr(self.scaler, name)


def snap(queued=0, processing=0, workers=1, threads=1, **extra):
    return {"demeter": {"queued": queued, "processing": processing, "workers": workers, "threads_per_worker": threads, **extra}}


def test_reactive_scale_up_to_target_utilisation_and_reasoning():
    scaler = Applying(AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=0))
    decision = scaler.evaluate(snap(queued=8, processing=2, workers=2), now=0)
    assert decision.actions == {"demeter": "scale_up"}
    assert decision.targets == {"demeter": 19}  # ceil(10 / 0.55)
    reason = decision.reasoning["demeter"]
    assert "no advisor" in reason and "utilisation 5.00" in reason
    assert decision.tags["demeter"].mode == "reactive"
    assert decision.confidence is None


def test_per_tag_bounds_and_cap_at_maximum():
    scaler = Applying(AdaptiveScaler(min_workers={"demeter": 2, "gcam": 1}, max_workers={"demeter": 5, "gcam": 3}, cooldown_seconds=0))
    decision = scaler.evaluate(
        {"demeter": {"queued": 50, "processing": 2, "workers": 2}, "gcam": {"queued": 0, "processing": 0, "workers": 0}},
        now=0,
    )
    assert decision.targets == {"demeter": 5, "gcam": 1}
    assert "capped at the maximum 5" in decision.reasoning["demeter"]
    assert "below the minimum 1" in decision.reasoning["gcam"]


def test_tag_without_bounds_is_held():
    scaler = Applying(AdaptiveScaler(min_workers={"demeter": 1}, max_workers={"demeter": 4}))
    decision = scaler.evaluate({"other": {"queued": 100, "processing": 1, "workers": 1}}, now=0)
    assert decision.actions == {"other": "hold"}
    assert "no min/max" in decision.reasoning["other"]


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="min_workers <= max_workers"):
        AdaptiveScaler(min_workers={"demeter": 5}, max_workers={"demeter": 2})
    with pytest.raises(ValueError, match="scale_down_threshold < scale_up_threshold"):
        AdaptiveScaler(scale_up_threshold=0.3, scale_down_threshold=0.5)
    with pytest.raises(ValueError, match="unknown snapshot fields"):
        AdaptiveScaler().evaluate({"demeter": {"queue": 3}}, now=0)


def test_cooldown_counts_from_the_last_change_per_tag():
    scaler = Applying(AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=60))
    first = scaler.evaluate(snap(queued=4, processing=1, workers=1), now=100)
    assert first.actions["demeter"] == "scale_up"
    held = scaler.evaluate(snap(queued=30, processing=10, workers=10), now=130)
    assert held.actions["demeter"] == "hold"
    assert "cooldown for 30s" in held.reasoning["demeter"]
    again = scaler.evaluate(snap(queued=30, processing=10, workers=10), now=160)
    assert again.actions["demeter"] == "scale_up"
    down = scaler.evaluate(snap(queued=0, processing=0, workers=20, idle_workers=20), now=230)
    assert down.actions["demeter"] == "scale_down"
    assert scaler.evaluate(snap(queued=0, processing=0, workers=19, idle_workers=19), now=240).actions["demeter"] == "hold"
    back = scaler.evaluate(snap(queued=30, processing=19, workers=19), now=241)
    assert back.actions["demeter"] == "scale_up", "a scale-down in cooldown must not hold tasks back"
    assert "does not hold back a scale-up" in back.reasoning["demeter"]
    assert scaler.evaluate(snap(queued=0, processing=0, workers=20, idle_workers=20), now=250).actions["demeter"] == "hold"
    other = scaler.evaluate({"gcam": {"queued": 9, "processing": 1, "workers": 1}}, now=161)
    assert other.actions["gcam"] == "scale_up", "cooldown of one tag must not hold another"


def test_scale_down_is_gradual_and_spares_busy_workers():
    scaler = Applying(AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=0, max_scale_down_step=2))
    decision = scaler.evaluate(snap(queued=0, processing=2, workers=10, idle_workers=8), now=0)
    assert decision.actions["demeter"] == "scale_down"
    assert decision.targets["demeter"] == 8
    assert decision.tags["demeter"].retire == 2
    busy = scaler.evaluate(snap(queued=0, processing=2, workers=3, idle_workers=0), now=1)
    assert busy.actions["demeter"] == "hold", "no worker is idle, none may retire"
    assert busy.targets["demeter"] == 3


def test_scale_down_without_idle_count_assumes_tasks_spread_over_workers():
    scaler = Applying(AdaptiveScaler(min_workers=0, max_workers=20, cooldown_seconds=0, max_scale_down_step=10))
    decision = scaler.evaluate(snap(queued=0, processing=3, workers=12, threads=4), now=0)
    assert decision.targets["demeter"] == 3


def test_predictive_scales_up_before_the_queue_fills():
    """A wave ramps up: predictive adds workers while reactive still sees utilisation under the threshold."""
    advisor = _FixedAdvisor(duration=4.0, confidence=0.9)
    predictive = Applying(AdaptiveScaler(advisor=advisor, min_workers=2, max_workers=20, cooldown_seconds=0, horizon_seconds=10))
    reactive = Applying(AdaptiveScaler(min_workers=2, max_workers=20, cooldown_seconds=0))
    first_up = {}
    workers = {"predictive": 2, "reactive": 2}
    # tasks arrive at 0.5/s each taking 4 s: the queue grows only slowly at first
    for second in range(0, 20):
        submitted = second // 2
        for name, scaler in (("predictive", predictive), ("reactive", reactive)):
            processing = min(submitted, workers[name])  # 4 s tasks: none has finished yet
            state = snap(
                queued=submitted - processing, processing=processing, workers=workers[name],
                task="run_demeter_scenario", submitted=submitted,
            )
            decision = scaler.evaluate(state, now=second)
            if decision.actions["demeter"] == "scale_up":
                first_up.setdefault(name, second)
                workers[name] = decision.targets["demeter"]
    assert "predictive" in first_up
    assert first_up["predictive"] < first_up.get("reactive", 99)
    assert advisor.calls >= 1


def test_predictive_holds_for_a_queue_the_workers_clear_before_a_new_worker_could_join():
    advisor = _FixedAdvisor(duration=0.1, confidence=0.95)
    scaler = Applying(AdaptiveScaler(advisor=advisor, min_workers=1, max_workers=20, cooldown_seconds=0, horizon_seconds=30))
    decision = scaler.evaluate(snap(queued=40, processing=1, workers=1, task="quick"), now=0)
    assert decision.actions["demeter"] == "hold"
    assert "clear the queue" in decision.reasoning["demeter"]
    assert decision.tags["demeter"].predicted_load == pytest.approx(0.0), "4 s of work, done before a pod (30 s) joins"
    assert decision.confidence == pytest.approx(0.95)
    # the same queue where a worker joins in a second: the 30 tasks left then would wait 3 s
    # more; spread so that each starts within another second, they need 3 threads, not 30
    fast = Applying(AdaptiveScaler(
        advisor=advisor, min_workers=1, max_workers=20, cooldown_seconds=0, horizon_seconds=30, worker_startup_seconds=1
    ))
    quick = fast.evaluate(snap(queued=40, processing=1, workers=1, task="quick"), now=0)
    assert quick.actions["demeter"] == "scale_up"
    assert quick.tags["demeter"].predicted_load == pytest.approx(3.0)


def test_running_tasks_keep_their_threads_for_their_predicted_remaining_time():
    """Two 10 s tasks about to finish free their threads for the queue; two just started do not."""
    def decide(started_at):
        scaler = Applying(AdaptiveScaler(
            advisor=_FixedAdvisor(duration=10.0), min_workers=1, max_workers=20, cooldown_seconds=0,
            horizon_seconds=10, worker_startup_seconds=1,
        ))
        pending = [{"task": "run", "input_features": {"i": i}, "started_at": started_at} for i in range(2)]
        pending += [{"task": "run", "input_features": {"i": i}} for i in range(2, 4)]
        return scaler.evaluate(snap(queued=2, processing=2, workers=3, pending=pending), now=100.0).tags["demeter"]

    finishing = decide(started_at=90.1)
    assert finishing.action == "hold" and finishing.predicted_load == pytest.approx(2.0)
    starting = decide(started_at=100.0)
    assert starting.action == "scale_up" and starting.predicted_load == pytest.approx(4.0)
    assert starting.to_workers == 4, "four tasks, four threads"


def test_waiting_tasks_are_predicted_with_their_own_durations():
    """A long task at the head of the queue is a busy thread for the whole horizon; short ones are not."""
    class _ByInput(_FixedAdvisor):
        def recommend_batch(self, items):
            return [_Rec(float(i["input_features"]["seconds"]), 0.9) for i in items]

    def load(seconds):
        scaler = Applying(AdaptiveScaler(
            advisor=_ByInput(), min_workers=1, max_workers=20, cooldown_seconds=0, horizon_seconds=10, worker_startup_seconds=1
        ))
        pending = [{"task": "run", "input_features": {"seconds": s}} for s in seconds]
        return scaler.evaluate(snap(queued=len(seconds), processing=0, workers=1, pending=pending), now=0).tags["demeter"].predicted_load

    assert load([0.2, 0.2, 0.2]) == pytest.approx(0.0)
    assert load([30.0, 0.2, 0.2]) == pytest.approx(2.0), "the long task holds the worker, the short ones start when a new one joins"


def test_low_confidence_falls_back_to_reactive_and_says_so():
    scaler = Applying(AdaptiveScaler(advisor=_FixedAdvisor(confidence=0.2), min_workers=1, max_workers=20, min_confidence=0.5))
    decision = scaler.evaluate(snap(queued=10, processing=1, workers=1, task="run"), now=0)
    assert decision.tags["demeter"].mode == "reactive"
    assert "confidence 0.20 below 0.50" in decision.reasoning["demeter"]
    no_duration = Applying(AdaptiveScaler(advisor=_FixedAdvisor(duration=None), min_workers=1, max_workers=20))
    assert "no duration" in no_duration.evaluate(snap(queued=3, task="run"), now=0).reasoning["demeter"]


def test_pending_tasks_are_predicted_one_by_one_and_cached():
    advisor = _FixedAdvisor(duration=3.0)
    scaler = Applying(AdaptiveScaler(advisor=advisor, min_workers=1, max_workers=20, cooldown_seconds=0, horizon_seconds=10))
    pending = [{"task": "run", "input_features": {"i": i % 3}} for i in range(12)]
    scaler.evaluate(snap(queued=11, processing=1, workers=1, pending=pending), now=0)
    scaler.evaluate(snap(queued=11, processing=1, workers=1, pending=pending), now=1)
    assert advisor.calls == 1


def test_decision_converts_to_telemetry_records():
    scaler = Applying(AdaptiveScaler(advisor=_FixedAdvisor(), min_workers=1, max_workers=8, cooldown_seconds=0))
    decision = scaler.evaluate(snap(queued=20, processing=1, workers=1, task="run"), now=42.0)
    (record,) = decision.to_records("run-1")
    assert isinstance(record, ScalingDecisionRecord)
    assert (record.tag, record.action, record.from_workers, record.to_workers, record.mode) == ("demeter", "scale_up", 1, 2, "predictive")
    # the worker starts 15 of the 2 s tasks before a new one could join (30 s), the other 5 within
    # another 30 s: one thread busy at 30 s on a capacity of 1, brought to 0.55 by 2 workers
    assert record.time == 42.0 and record.confidence == pytest.approx(0.9) and record.queued == 20
    assert "demeter: scale_up 1->2 (predictive)" in str(decision)


_tag_state = st.fixed_dictionaries(
    {
        "queued": st.integers(0, 200),
        "processing": st.integers(0, 50),
        "workers": st.integers(0, 30),
        "threads_per_worker": st.integers(1, 4),
        "idle_workers": st.none() | st.integers(0, 30),
        "task": st.sampled_from([None, "run"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0, 120), _tag_state), min_size=1, max_size=25),
    low=st.integers(0, 5),
    extra=st.integers(0, 10),
    confidence=st.floats(0, 1),
    cooldown=st.sampled_from([0, 10, 60]),
    down_step=st.integers(1, 4),
)
def test_no_sequence_of_snapshots_leaves_bounds_or_retires_busy_workers(steps, low, extra, confidence, cooldown, down_step):
    high = low + extra
    scaler = Applying(AdaptiveScaler(
        advisor=_FixedAdvisor(duration=1.5, confidence=confidence), min_workers={"demeter": low}, max_workers={"demeter": high},
        cooldown_seconds=cooldown, max_scale_down_step=down_step,
    ))
    now = 0.0
    last_change = last_action = None
    for gap, state in steps:
        now += gap
        state = dict(state)
        if state["idle_workers"] is not None:
            state["idle_workers"] = min(state["idle_workers"], state["workers"])
        decision = scaler.evaluate({"demeter": state}, now=now).tags["demeter"]
        assert low <= decision.to_workers <= high
        if decision.action == "hold":
            assert decision.to_workers == state["workers"]
            continue
        in_bounds = low <= state["workers"] <= high
        if in_bounds and last_change is not None and not (decision.action == "scale_up" and last_action == "scale_down"):
            assert now - last_change >= cooldown
        last_change, last_action = now, decision.action
        if decision.action == "scale_down" and in_bounds:
            busy = state["workers"] - state["idle_workers"] if state["idle_workers"] is not None else min(state["workers"], state["queued"] + state["processing"])
            assert decision.to_workers >= busy
            assert state["workers"] - decision.to_workers <= down_step


def test_predictive_never_asks_for_more_threads_than_tasks():
    scaler = Applying(AdaptiveScaler(advisor=_FixedAdvisor(duration=600.0), min_workers=1, max_workers=50, cooldown_seconds=0, horizon_seconds=10))
    decision = scaler.evaluate(snap(queued=2, processing=1, workers=1, task="long"), now=0)
    assert decision.targets["demeter"] == 3, "three ten-minute tasks need three threads, not sixty"


def test_a_task_longer_than_the_horizon_counts_as_one_busy_thread():
    scaler = Applying(AdaptiveScaler(advisor=_FixedAdvisor(duration=100.0), min_workers=1, max_workers=50, cooldown_seconds=0, horizon_seconds=10))
    decision = scaler.evaluate(snap(queued=4, processing=2, workers=2, task="long"), now=0)
    assert decision.tags["demeter"].predicted_load == pytest.approx(6.0)
