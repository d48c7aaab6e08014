"""Sizing: recommendations are clamped, written as requests = limits, and patched safely.

The patches are applied with ``jsonpatch`` (kopf's own dependency) to the kind of object
dask-kubernetes stores, so the tests see exactly what the API server would apply.
"""

import json

import jsonpatch
import pytest

from scalable.controller import sizing
from scalable.controller.dask_objects import ANNOTATION_SIZED, SizedMark, TemplateError
from scalable.units import GiB, MiB


def _cluster(resources=None, annotations=None, containers=("worker",)):
    containers_spec = [{"name": name, "image": "ghcr.io/dask/dask:latest"} for name in containers]
    if resources is not None:
        containers_spec[-1]["resources"] = resources
    obj = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": "c-default", "namespace": "ns"},
        "spec": {"cluster": "c", "worker": {"replicas": 1, "spec": {"containers": containers_spec}}},
    }
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations
    return obj


def test_clamp_within_bounds_rounds_up_and_names_nothing():
    sized = sizing.clamp(1.2345, 3 * GiB + 1, {"cpu": "500m"}, {"cpu": "4", "memory": "8Gi"})
    assert sized.cpu == "1235m"
    assert sized.memory_bytes == 3 * GiB + MiB  # rounded up to whole MiB, never smaller
    assert sized.bounded_by == ()


def test_clamp_caps_at_max_allowed_and_says_so():
    sized = sizing.clamp(16, 64 * GiB, None, {"cpu": "4", "memory": "8Gi"})
    assert (sized.cpus, sized.memory_bytes) == (4.0, 8 * GiB)
    assert "cpu capped at maxAllowed 4" in sized.bounded_by
    assert "memory capped at maxAllowed 8Gi" in sized.bounded_by


def test_clamp_raises_to_min_allowed_and_to_the_floor():
    sized = sizing.clamp(0.01, 10 * MiB, {"memory": "1Gi"}, None)
    assert sized.cpus == sizing.MIN_CPU
    assert sized.memory_bytes == GiB
    assert any("floor" in b for b in sized.bounded_by)
    assert "memory raised to minAllowed 1Gi" in sized.bounded_by


def test_decimal_bounds_are_respected_exactly():
    sized = sizing.clamp(1, 10 * GiB, None, {"memory": "1500M"})
    assert sized.memory_bytes == 1_500_000_000
    block = sized.resources
    # 1500M is not a whole MiB: the quantity must still mean exactly the bound, not more
    assert block["limits"]["memory"] == "1500000000"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_clamp_refuses_nonsense(bad):
    with pytest.raises(sizing.SizingError):
        sizing.clamp(bad, GiB)
    with pytest.raises(sizing.SizingError):
        sizing.clamp(1, bad)


def test_requests_equal_limits():
    block = sizing.clamp(2, 6 * GiB).resources
    assert block == {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "2", "memory": "6Gi"}}


def test_patch_sets_only_the_named_container_and_records_the_annotation():
    obj = _cluster(containers=("sidecar", "worker"))
    sized = sizing.clamp(2, 6 * GiB)
    patched = jsonpatch.apply_patch(obj, sizing.template_patch(obj, "worker", sized, "ns/wf", 3))
    containers = patched["spec"]["worker"]["spec"]["containers"]
    assert "resources" not in containers[0]
    assert containers[1]["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    note = json.loads(patched["metadata"]["annotations"][ANNOTATION_SIZED])
    assert note == {"workflow": "ns/wf", "generation": 3, "cpu": "2", "memory": "6Gi", "model": None}


def test_patch_keeps_existing_annotations():
    obj = _cluster(annotations={"team": "hydro"})
    patched = jsonpatch.apply_patch(obj, sizing.template_patch(obj, "worker", sizing.clamp(1, GiB), "ns/wf", 1))
    assert patched["metadata"]["annotations"]["team"] == "hydro"
    assert ANNOTATION_SIZED in patched["metadata"]["annotations"]


def test_patch_fails_when_the_container_moved_meanwhile():
    obj = _cluster(containers=("sidecar", "worker"))
    ops = sizing.template_patch(obj, "worker", sizing.clamp(1, GiB), "ns/wf", 1)
    concurrently_edited = _cluster(containers=("worker", "sidecar"))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(concurrently_edited, ops)


def test_missing_container_is_a_clear_error():
    with pytest.raises(TemplateError, match="no container named 'worker'.*'dask'"):
        sizing.template_patch(_cluster(containers=("dask",)), "worker", sizing.clamp(1, GiB), "ns/wf", 1)


def _mark(generation, workflow="ns/wf"):
    """This workflow's mark as the operator reads it from an object another workflow may have sized."""
    obj = {"metadata": {"annotations": {ANNOTATION_SIZED: json.dumps({"workflow": workflow, "generation": generation})}}}
    return SizedMark.read(obj, "ns/wf")


def test_off_never_applies():
    ok, why = sizing.should_apply("Off", _cluster()["spec"]["worker"]["spec"]["containers"][0], sizing.clamp(1, GiB), None, 1)
    assert not ok and "Off" in why


def test_initial_applies_once_per_generation():
    container = {"name": "worker", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    sized = sizing.clamp(2, 2 * GiB)
    assert sizing.should_apply("Initial", container, sized, None, 1)[0]
    assert sizing.should_apply("Initial", container, sized, _mark(1, "ns/other"), 1)[0]
    assert not sizing.should_apply("Initial", container, sized, _mark(1), 1)[0]
    assert sizing.should_apply("Initial", container, sized, _mark(1), 2)[0]


def test_auto_follows_the_recommendation_with_hysteresis():
    container = {"name": "worker", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}
    small_move = sizing.clamp(2, 4 * GiB + 200 * MiB)
    big_move = sizing.clamp(2, 6 * GiB)
    assert not sizing.should_apply("Auto", container, small_move, _mark(1), 1)[0]
    assert sizing.should_apply("Auto", container, big_move, _mark(1), 1)[0]


def test_nothing_to_do_when_already_sized():
    container = {"name": "worker", "resources": {"requests": {"cpu": "2", "memory": "6Gi"}}}
    ok, why = sizing.should_apply("Auto", container, sizing.clamp(2, 6 * GiB), None, 1)
    assert not ok and "already" in why


def test_describe_change_names_old_new_basis_and_bounds():
    container = {"name": "worker", "resources": {"limits": {"cpu": "1", "memory": "2Gi"}}}
    sized = sizing.clamp(8, 4 * GiB, None, {"cpu": "4"})
    text = sizing.describe_change(container, sized, "p95 of 50 historical runs")
    assert text == "worker cpu 1 -> 4, memory 2Gi -> 4Gi (p95 of 50 historical runs); cpu capped at maxAllowed 4"


def test_initial_sizes_once_more_when_the_first_trained_model_arrives():
    container = {"name": "worker", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    sized = sizing.clamp(2, 2 * GiB)
    before_model = SizedMark("ns/wf", 1, "1", "1Gi", None)
    ok, why = sizing.should_apply("Initial", container, sized, before_model, 1, "v1")
    assert ok and "first trained model (v1)" in why
    from_model = SizedMark("ns/wf", 1, "1", "1Gi", "v1")
    assert not sizing.should_apply("Initial", container, sized, from_model, 1, "v2")[0], "later versions: Initial holds"
    assert not sizing.should_apply("Initial", container, sized, before_model, 1, None)[0]
    ops = sizing.template_patch(_cluster(), "worker", sized, "ns/wf", 1, "v1")
    assert json.loads(ops[-1]["value"][ANNOTATION_SIZED] if isinstance(ops[-1]["value"], dict) else ops[-1]["value"])["model"] == "v1"


def test_a_template_an_oom_kill_proved_too_small_is_resized_in_initial_mode_too():
    container = {"name": "worker", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
    retry = sizing.clamp(1, 2 * GiB)
    ok, why = sizing.should_apply("Initial", container, retry, _mark(1), 1, None, oom_killed_at=GiB)
    assert ok and "OOM-killed at 1Gi" in why
    assert not sizing.should_apply("Initial", container, retry, _mark(1), 1, None)[0], "without the kill Initial holds"
    assert not sizing.should_apply("Off", container, retry, _mark(1), 1, None, oom_killed_at=GiB)[0]
    bigger = {"name": "worker", "resources": {"limits": {"cpu": "1", "memory": "3Gi"}}}
    assert not sizing.should_apply("Initial", bigger, retry, _mark(1), 1, None, oom_killed_at=GiB)[0], \
        "a template already above the kill is not the one that was killed"


def test_requests_only_writes_requests_beside_the_limits_the_container_keeps():
    obj = _cluster(resources={"limits": {"cpu": "4", "memory": "8Gi"}})
    container = obj["spec"]["worker"]["spec"]["containers"][0]
    sized = sizing.under_limits(sizing.clamp(2, 6 * GiB), container, "RequestsOnly")
    patched = jsonpatch.apply_patch(obj, sizing.template_patch(obj, "worker", sized, "ns/wf", 1, None, "RequestsOnly"))
    assert patched["spec"]["worker"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}


def test_requests_only_caps_a_request_at_the_containers_limit_and_says_so():
    container = {"name": "worker", "resources": {"limits": {"cpu": "1", "memory": "3Gi"}}}
    sized = sizing.under_limits(sizing.clamp(2, 5 * GiB), container, "RequestsOnly")
    assert (sized.cpus, sized.memory_bytes) == (1.0, 3 * GiB)
    assert "memory capped at the container's limit 3Gi (controlledValues RequestsOnly)" in sized.bounded_by
    assert sized.recommended_memory_bytes == 5 * GiB, "what the advisor said is kept for uncappedTarget"


def test_requests_only_without_limits_writes_requests_alone():
    obj = _cluster()
    sized = sizing.under_limits(sizing.clamp(2, 6 * GiB), {"name": "worker"}, "RequestsOnly")
    patched = jsonpatch.apply_patch(obj, sizing.template_patch(obj, "worker", sized, "ns/wf", 1, None, "RequestsOnly"))
    assert patched["spec"]["worker"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "2", "memory": "6Gi"}}


def test_requests_and_limits_ignores_the_old_limits():
    container = {"name": "worker", "resources": {"limits": {"cpu": "1", "memory": "3Gi"}}}
    sized = sizing.clamp(2, 5 * GiB)
    assert sizing.under_limits(sized, container, "RequestsAndLimits") is sized
