"""The scaling poll's own rules on top of the AdaptiveScaler: the history rebuilt from what is
persisted, queue split across groups, and which object holds a group's replicas."""

import json

from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.dask_objects import ANNOTATION_LAST_SCALE, GroupTarget
from scalable.controller.scaling_loop import _shares, make_scaler, restore_history
from scalable.controller.timestamps import parse_time
from scalable.scaling.history import ScalingHistory


def _annotated(note: dict | str) -> dict:
    text = note if isinstance(note, str) else json.dumps(note)
    return {"metadata": {"annotations": {ANNOTATION_LAST_SCALE: text}}, "spec": {"worker": {"replicas": 3}}}


def test_history_is_restored_from_the_annotation_with_its_direction():
    spec = _spec({"name": "default", "task": "a", "tag": "sim"})
    obj = _annotated({"workflow": "ns/wf", "time": "1970-01-01T00:16:40.000000Z", "from": 5, "to": 3})
    history = restore_history(ScalingHistory(), [GroupTarget(spec.workerGroups[0], "DaskCluster", "c", obj)], {}, "ns/wf")
    assert history.of("sim").last_change == 1000.0 and history.of("sim").last_action == "scale_down"


def test_a_later_status_time_without_direction_holds_every_change():
    spec = _spec({"name": "default", "task": "a"})
    obj = _annotated({"workflow": "ns/wf", "time": "1970-01-01T00:16:40Z", "from": 5, "to": 3})
    status = {"default": {"lastScaleTime": "1970-01-01T00:16:50Z"}}
    history = restore_history(ScalingHistory(), [GroupTarget(spec.workerGroups[0], "DaskCluster", "c", obj)], status, "ns/wf")
    assert (history.of("default").last_change, history.of("default").last_action) == (1010.0, None)


def test_other_workflows_and_garbage_annotations_are_ignored_and_memory_wins_when_later():
    spec = _spec({"name": "default", "task": "a"})
    group = spec.workerGroups[0]
    for note in ({"workflow": "ns/other", "time": "1970-01-01T00:16:40Z", "from": 1, "to": 2}, "not json", "[1, 2]"):
        assert restore_history(ScalingHistory(), [GroupTarget(group, "DaskCluster", "c", _annotated(note))], {}, "ns/wf").of("default").last_change is None
    known = ScalingHistory().applied([("default", "scale_up", 2000.0)])
    obj = _annotated({"workflow": "ns/wf", "time": "1970-01-01T00:16:40Z", "from": 5, "to": 3})
    kept = restore_history(known, [GroupTarget(group, "DaskCluster", "c", obj)], {}, "ns/wf").of("default")
    assert (kept.last_change, kept.last_action) == (2000.0, "scale_up")


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
