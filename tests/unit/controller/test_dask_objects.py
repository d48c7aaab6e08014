"""dask_objects: dask-kubernetes' objects read one way, our annotations through one codec."""

from __future__ import annotations

import json

import pytest

from scalable.controller.dask_objects import (
    ANNOTATION_LAST_SCALE,
    ANNOTATION_SIZED,
    ContainerResources,
    LastScale,
    SizedMark,
    TemplateError,
    annotation_pointer,
    find_container,
    marks_of,
    replicas,
    worker_pod_spec,
)
from scalable.units import GiB, MiB, resources_block


def _container(requests=None, limits=None):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": "worker", "resources": resources}


def test_guaranteed_resources_are_the_requests_threads_follow_the_cpu_limit():
    both = ContainerResources.of(_container({"cpu": "1", "memory": "1Gi"}, {"cpu": "2500m", "memory": "2Gi"}))
    assert (both.cpus, both.memory_bytes, both.threads) == (1.0, GiB, 3)
    only_limits = ContainerResources.of(_container(limits={"cpu": "2", "memory": "512Mi"}))
    assert (only_limits.cpus, only_limits.memory_bytes, only_limits.threads) == (2.0, 512 * MiB, 2)
    only_requests = ContainerResources.of(_container({"cpu": "250m"}))
    assert (only_requests.cpus, only_requests.memory_bytes, only_requests.threads) == (0.25, None, 1)
    assert ContainerResources.of({"name": "worker"}).threads == 1
    with pytest.raises(TemplateError, match="cannot be read"):
        ContainerResources.of(_container({"memory": "lots"}))


def test_the_pod_template_path_and_the_container_lookup():
    obj = {"spec": {"worker": {"replicas": 4, "spec": {"containers": [{"name": "sidecar"}, {"name": "worker"}]}}}}
    assert replicas(obj) == 4 and replicas({}) == 0
    index, container = find_container(worker_pod_spec(obj), "worker")
    assert index == 1 and container["name"] == "worker"
    with pytest.raises(TemplateError, match="no container named 'dask'.*'sidecar', 'worker'"):
        find_container(worker_pod_spec(obj), "dask")


def test_annotations_round_trip_and_belong_to_one_workflow():
    scale = LastScale("ns/wf", 1000.25, 2, 5)
    sized = SizedMark("ns/wf", 3, "2", "4Gi")
    obj = {"metadata": {"annotations": {ANNOTATION_LAST_SCALE: scale.encode(), ANNOTATION_SIZED: sized.encode()}}}
    assert LastScale.read(obj, "ns/wf") == scale and scale.action == "scale_up"
    assert SizedMark.read(obj, "ns/wf") == sized
    assert LastScale.read(obj, "ns/other") is None and SizedMark.read(obj, "ns/other") is None
    assert marks_of(obj, "ns/wf") == [ANNOTATION_SIZED, ANNOTATION_LAST_SCALE] and marks_of(obj, "ns/other") == []
    # another workflow whose key merely contains ours is not ours
    lookalike = {"metadata": {"annotations": {ANNOTATION_SIZED: json.dumps({"workflow": "ns/wf-2", "generation": 1})}}}
    assert marks_of(lookalike, "ns/wf") == []


def test_garbage_annotations_read_as_absent_or_direction_unknown():
    for text in ("not json", "[1]", json.dumps({"workflow": "ns/wf"})):
        obj = {"metadata": {"annotations": {ANNOTATION_LAST_SCALE: text}}}
        assert LastScale.read(obj, "ns/wf") is None
    no_direction = {"metadata": {"annotations": {ANNOTATION_LAST_SCALE: json.dumps({"workflow": "ns/wf", "time": "1970-01-01T00:16:40Z"})}}}
    note = LastScale.read(no_direction, "ns/wf")
    assert note.time == 1000.0 and note.action is None
    assert annotation_pointer(ANNOTATION_SIZED) == "/metadata/annotations/scalable.dev~1sized"


def test_one_resources_block_exact_memory_requests_equal_limits():
    assert resources_block(0.25, 6 * GiB) == {"requests": {"cpu": "250m", "memory": "6Gi"}, "limits": {"cpu": "250m", "memory": "6Gi"}}
    assert resources_block(2, 1_500_000_000)["limits"]["memory"] == "1500000000", "never rounded above a bound"
