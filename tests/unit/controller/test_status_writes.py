"""The rule that decides whether a poll writes the workflow's status (status_writes.py).

Each case is one way a wrong rule would break: a write every poll (the API server load this
exists to remove), or a real change left unwritten (a status that lies)."""

from __future__ import annotations

import copy

import pytest

from scalable.controller.conditions import merge_conditions
from scalable.controller.status_writes import HEARTBEAT_INTERVAL_S, StatusWrites, changed

NOW = 1_800_000_000.0


def status(now: float = NOW, **decision) -> dict:
    """A status as the loop builds it: a holding group with its last decision, three conditions."""
    last = {"time": f"2027-01-15T08:00:{int(now) % 60:02d}Z", "action": "hold", "from": 3, "to": 3,
            "reason": "reactive: 4 queued on 3 workers is within target", "mode": "reactive",
            "predictedLoad": None, "confidence": None, "queued": 4.0, "processing": 12.0}
    last.update(decision)
    updates = [{"type": "Ready", "status": True, "reason": "Reconciled", "message": "found"},
               {"type": "Scaling", "status": True, "reason": "Active", "message": "reactive scaling from prometheus metrics"},
               {"type": "PrometheusAvailable", "status": True, "reason": "Queried", "message": "queue metrics"}]
    return {
        "cpu": None, "memory": None, "confidence": None, "currentWorkers": 3, "desiredWorkers": 3,
        "groups": [{"name": "default", "currentReplicas": 3, "desiredReplicas": 3, "lastDecision": last}],
        "observedGeneration": 2,
        "conditions": merge_conditions(None, updates, generation=2, now=NOW - 600),
    }


def stored(written: dict) -> dict:
    """What the API server gives back for a merge-patched status: nulls gone, 4.0 read as 4."""
    def prune(value):
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [prune(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    return prune(copy.deepcopy(written))


def test_the_same_status_again_is_not_written():
    previous = stored(status())
    writes = StatusWrites()
    assert changed(previous, status()) == (False, False)
    assert not writes.due(previous, status(), tick=0.0)


def test_conditions_rebuilt_at_a_later_time_are_unchanged():
    # merge_conditions moves lastTransitionTime only with the status, so a poll minutes later
    # rebuilding the same conditions must compare equal, not as "new time, write"
    before = status()
    again = dict(before, conditions=merge_conditions(before["conditions"], [
        {"type": "Scaling", "status": True, "reason": "Active", "message": "reactive scaling from prometheus metrics"}],
        generation=2, now=NOW + 900))
    assert changed(stored(before), again) == (False, False)


def test_a_hold_that_only_moves_its_time_is_written_at_most_every_heartbeat_interval():
    previous = stored(status(NOW))
    later = status(NOW + 15)
    assert changed(previous, later) == (False, True)
    writes = StatusWrites()
    # a new process has not written yet: the first poll refreshes the heartbeat
    assert writes.due(previous, later, tick=100.0)
    writes.wrote(100.0)
    assert not writes.due(previous, later, tick=100.0 + 15)
    assert not writes.due(previous, later, tick=100.0 + HEARTBEAT_INTERVAL_S - 0.1)
    assert writes.due(previous, later, tick=100.0 + HEARTBEAT_INTERVAL_S)


@pytest.mark.parametrize("field, value", [
    ("action", "scale_up"), ("from", 2), ("to", 5), ("reason", "reactive: 40 queued on 3 workers"),
    ("queued", 40.0), ("processing", 0.0), ("mode", "predictive"), ("predictedLoad", 7.5), ("confidence", 0.8),
])
def test_any_change_of_the_decision_but_its_time_is_written_at_once(field, value):
    writes = StatusWrites()
    writes.wrote(100.0)
    new = status(NOW + 15, **{field: value})
    assert changed(stored(status(NOW)), new) == (True, False)
    assert writes.due(stored(status(NOW)), new, tick=101.0)


@pytest.mark.parametrize("key, value", [("status", "False"), ("reason", "NoMetrics"), ("message", "holding"),
                                        ("observedGeneration", 3)])
def test_any_change_of_a_condition_is_written_at_once(key, value):
    writes = StatusWrites()
    writes.wrote(100.0)
    new = status()
    new["conditions"] = [dict(c, **{key: value}) if c["type"] == "Scaling" else c for c in new["conditions"]]
    assert writes.due(stored(status()), new, tick=101.0)


@pytest.mark.parametrize("edit", [
    lambda s: s["groups"][0].update(currentReplicas=4),
    lambda s: s["groups"][0].update(lastScaleTime="2027-01-15T08:00:00.123456Z"),
    lambda s: s["groups"][0].update(recommendation={"cpu": "1", "memory": "2Gi"}),
    lambda s: s.update(observedGeneration=3),
    lambda s: s.update(desiredWorkers=4),
    lambda s: s["groups"].append({"name": "gpu", "currentReplicas": 0}),
])
def test_replicas_recommendations_and_generation_are_significant(edit):
    new = status()
    edit(new)
    assert changed(stored(status()), new) == (True, False)


def test_fields_the_patch_does_not_carry_are_not_compared():
    previous = stored(status())
    previous["somethingElse"] = {"written": "by someone else"}
    assert changed(previous, status()) == (False, False)


def test_a_null_the_patch_carries_is_the_same_as_a_missing_field():
    previous = stored(status())
    assert "cpu" not in previous
    new = status()
    new["groups"][0]["lastScaleTime"] = None
    assert changed(previous, new) == (False, False)
    previous["cpu"] = "2"
    assert changed(previous, new)[0], "a field the patch deletes (cpu: null) is a change"


@pytest.mark.parametrize("before, after, threshold, significant", [
    (0, 1, 3, True),    # the first failure: the count starts
    (1, 2, 3, True),    # below the threshold every count decides when the fallback starts
    (2, 3, 3, True),    # reaching it starts the fallback
    (3, 4, 3, False),   # past it the count decides nothing: heartbeat
    (40, 41, 3, False),
    (41, 0, 3, True),   # metrics are back
    (1, 2, 1, False),   # no fallback (threshold 1): only "failing or not" matters
    (5, 0, 1, True),
])
def test_metrics_failures_matter_up_to_the_fallback_threshold(before, after, threshold, significant):
    previous = stored(dict(status(), metricsFailures=before))
    new = dict(status(), metricsFailures=after)
    assert changed(previous, new, threshold) == (significant, not significant)
