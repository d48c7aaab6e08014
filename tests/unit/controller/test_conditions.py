"""Conditions keep lastTransitionTime while their status holds, and move it when it changes."""

from scalable.controller.conditions import get_condition, merge_conditions, set_condition


def test_new_condition_is_appended_with_a_transition_time():
    out = set_condition([], "Ready", True, "Reconciled", "ok", now=0, generation=2)
    assert out == [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
                    "lastTransitionTime": "1970-01-01T00:00:00Z", "observedGeneration": 2}]


def test_same_status_keeps_transition_time_but_updates_message():
    first = set_condition([], "Scaling", True, "Active", "a", now=0)
    second = set_condition(first, "Scaling", True, "Active", "b", now=100)
    assert second[0]["lastTransitionTime"] == "1970-01-01T00:00:00Z"
    assert second[0]["message"] == "b"
    assert first[0]["message"] == "a"  # input untouched


def test_status_change_moves_transition_time_and_keeps_order():
    conds = merge_conditions([], [{"type": "Ready", "status": "True"}, {"type": "Scaling", "status": "True"}], now=0)
    conds = set_condition(conds, "Ready", "False", "ClusterMissing", "no DaskCluster c", now=60)
    assert [c["type"] for c in conds] == ["Ready", "Scaling"]
    assert get_condition(conds, "Ready")["lastTransitionTime"] == "1970-01-01T00:01:00Z"
    assert get_condition(conds, "Scaling")["lastTransitionTime"] == "1970-01-01T00:00:00Z"


def test_invalid_status_is_refused():
    import pytest

    with pytest.raises(ValueError):
        set_condition([], "Ready", "yes", "r")
