"""The scaling poll's own rules on top of the AdaptiveScaler: persisted cooldown, bounds repair,
queue split across groups, and which object holds a group's replicas."""

from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.scaling_loop import GroupTarget, _shares, _with_cooldown, make_scaler
from scalable.controller.timestamps import parse_time
from scalable.scaling.decision import TagDecision


def _decision(action="scale_up", frm=2, to=5):
    return TagDecision(tag="default", action=action, from_workers=frm, to_workers=to, reason="busy", mode="reactive",
                       utilisation=2.0, queued=10, processing=2)


def test_persisted_cooldown_turns_a_change_into_a_hold():
    held = _with_cooldown(_decision(), last_scale=1000.0, cooldown=60, now=1030.0, low=1, high=10)
    assert held.action == "hold" and held.to_workers == 2
    assert "in cooldown for 30s more" in held.reason and held.reason.startswith("busy")


def test_after_the_cooldown_the_change_goes_through():
    assert _with_cooldown(_decision(), 1000.0, 60, 1060.0, 1, 10).action == "scale_up"
    assert _with_cooldown(_decision(), None, 60, 1000.0, 1, 10).action == "scale_up"


def test_bound_repairs_ignore_the_cooldown():
    below_min = _decision(frm=0, to=1)
    assert _with_cooldown(below_min, 1000.0, 60, 1001.0, 1, 10).action == "scale_up"
    above_max = _decision(action="scale_down", frm=12, to=10)
    assert _with_cooldown(above_max, 1000.0, 60, 1001.0, 1, 10).action == "scale_down"


def _spec(*groups, mode="Predictive"):
    return ScalableWorkflowSpec.model_validate({"clusterRef": {"name": "c"}, "workerGroups": list(groups), "scaling": {"mode": mode}})


def test_queue_split_follows_max_workers():
    spec = _spec({"name": "default", "task": "a", "maxWorkers": 30}, {"name": "gpu", "task": "b", "maxWorkers": 10})
    targets = [GroupTarget(g, "DaskCluster", "c", {}) for g in spec.workerGroups]
    assert _shares(targets) == {"default": 0.75, "gpu": 0.25}


def test_scaler_bounds_per_tag_and_no_advisor_unless_predictive():
    spec = _spec({"name": "default", "task": "a", "minWorkers": 2, "maxWorkers": 9, "tag": "sim"}, mode="Reactive")
    scaler = make_scaler(spec, advisor=object())
    assert scaler.bounds("sim") == (2, 9) and scaler.advisor is None


def test_threads_per_worker_come_from_the_cpu_limit():
    spec = _spec({"name": "default", "task": "a"})
    obj = {"spec": {"worker": {"replicas": 3, "spec": {"containers": [
        {"name": "worker", "resources": {"limits": {"cpu": "2500m"}}}]}}}}
    target = GroupTarget(spec.workerGroups[0], "DaskCluster", "c", obj)
    assert target.replicas == 3 and target.threads_per_worker() == 3


def test_time_round_trip():
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time("garbage") is None and parse_time(None) is None
