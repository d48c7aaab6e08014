"""The operator against the real API server: sizing, invalid references, conflicts, deletion.

The operator runs in this process (``run_operator``, what ``scalable operator run`` starts),
reconciling a namespace of the local control plane. Telemetry is written to its volume (a
temporary directory) the way clients and the operator itself write it.
"""

from __future__ import annotations

import json

from scalable.controller.sizing import ANNOTATION_SIZED
from scalable.units import parse_memory
from tests.integration.harness import (
    DASK,
    condition,
    create,
    create_dask_cluster,
    dask_cluster,
    dask_worker_group,
    delete,
    get,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
    write_history,
)


def _worker_resources(obj):
    return obj["spec"]["worker"]["spec"]["containers"][0].get("resources")


async def _events(api, namespace, involved_name):
    async with api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        return [e for e in response.json()["items"] if e["involvedObject"]["name"] == involved_name]


async def test_sizing_reaches_the_default_worker_group_clamped(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", peak_gib=5.0, n=40)
    await create_dask_cluster(kube_api, namespace, "sim")
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4,
               "resourcePolicy": {"mode": "Initial", "maxAllowed": {"memory": "4Gi", "cpu": "2"}}}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling={"mode": "Off"}))
    async with running_operator(operator_options(namespace, tmp_path)):
        group = await wait_until(
            lambda: _sized(kube_api, namespace, "DaskWorkerGroup", "sim-default"), what="DaskWorkerGroup sized")
        # the history peaks near 5 GiB; maxAllowed 4Gi caps it, and requests equal limits
        assert _worker_resources(group) == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
        cluster = await get(kube_api, namespace, "DaskCluster", "sim")
        assert _worker_resources(cluster) == _worker_resources(group), "the DaskCluster must stay the source of truth"
        note = json.loads(group["metadata"]["annotations"][ANNOTATION_SIZED])
        assert note["workflow"] == f"{namespace}/wf"
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Sized", "True"), what="Sized=True")
        rec = wf["status"]["groups"][0]["recommendation"]
        assert rec["memory"] == "4Gi" and rec["method"] == "percentile"
        assert "capped at maxAllowed 4Gi" in rec["basis"]
        assert wf["status"]["memory"] == "4Gi" and wf["status"]["cpu"] == "2"
        events = await wait_until(lambda: _events(kube_api, namespace, "wf"), what="an Event")
        resized = [e for e in events if e["reason"] == "Resized"]
        assert resized and "memory unset -> 4Gi" in resized[0]["message"] and "capped at maxAllowed 4Gi" in resized[0]["message"]


async def test_requests_only_keeps_the_containers_limits_and_caps_the_request_at_them(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", peak_gib=5.0, n=40)
    limits = {"cpu": "3", "memory": "3Gi"}
    for obj in (dask_cluster("sim"), dask_worker_group("sim-default", "sim")):
        obj["spec"]["worker"]["spec"]["containers"][0]["resources"] = {"limits": dict(limits)}
        await create(kube_api, namespace, obj)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4,
               "resourcePolicy": {"mode": "Initial", "controlledValues": "RequestsOnly"}}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling={"mode": "Off"}))
    async with running_operator(operator_options(namespace, tmp_path)):
        group = await wait_until(lambda: _requested(kube_api, namespace, "DaskWorkerGroup", "sim-default"),
                                 what="DaskWorkerGroup requests written")
        resources = _worker_resources(group)
        assert resources["limits"] == limits, "RequestsOnly never touches the limits"
        # the history peaks near 5 GiB: the request would exceed the 3Gi limit, so it is capped there
        assert resources["requests"]["memory"] == "3Gi", resources
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Sized", "True"), what="Sized=True")
        rec = wf["status"]["groups"][0]["recommendation"]
        assert parse_memory(rec["uncappedTarget"]["memory"]) > 4 * 2**30, rec
        events = [e for e in await _events(kube_api, namespace, "wf") if e["reason"] == "Resized"]
        assert events and "capped at the container's limit 3Gi (controlledValues RequestsOnly)" in events[0]["message"]


async def _requested(api, namespace, kind, name):
    obj = await get(api, namespace, kind, name)
    return obj if obj and (_worker_resources(obj) or {}).get("requests") else None


async def _sized(api, namespace, kind, name):
    obj = await get(api, namespace, kind, name)
    return obj if obj and _worker_resources(obj) else None


async def _with_condition(api, namespace, type_, status, name="wf"):
    obj = await get(api, namespace, "ScalableWorkflow", name)
    c = condition(obj, type_)
    return obj if c and c["status"] == status else None


async def test_mode_off_recommends_without_touching_the_template(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", peak_gib=2.0)
    await create_dask_cluster(kube_api, namespace, "sim")
    groups = [{"name": "default", "task": "simulate", "maxWorkers": 4, "resourcePolicy": {"mode": "Off"}}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling={"mode": "Off"}))
    async with running_operator(operator_options(namespace, tmp_path)):
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Sized", "False"), what="Sized=False")
        assert condition(wf, "Sized")["reason"] == "RecommendOnly"
        rec = wf["status"]["groups"][0]["recommendation"]
        assert rec["memory"]
        # VPA-style bounds from the advisor's interval, bracketing the target
        assert parse_memory(rec["lowerBound"]) <= parse_memory(rec["memory"]) <= parse_memory(rec["upperBound"]), rec
        assert parse_memory(rec["lowerBound"]) < parse_memory(rec["upperBound"]), rec
        assert condition(wf, "Scaling")["reason"] == "ScalingOff"
        for kind, name in (("DaskCluster", "sim"), ("DaskWorkerGroup", "sim-default")):
            assert _worker_resources(await get(kube_api, namespace, kind, name)) is None


async def test_missing_references_are_conditions_and_recover(kube_api, namespace, tmp_path):
    await create(kube_api, namespace, scalable_workflow("wf", "later", advisor_model="absent"))
    async with running_operator(operator_options(namespace, tmp_path)):
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Ready", "False"), what="Ready=False")
        assert condition(wf, "Ready")["reason"] == "ClusterNotFound"
        assert "'later'" in condition(wf, "Ready")["message"]
        assert condition(wf, "ModelReady")["reason"] == "AdvisorModelNotFound"
        await create_dask_cluster(kube_api, namespace, "later")
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Ready", "True"), timeout=30, what="Ready=True")
        assert condition(wf, "ModelReady")["status"] == "False"  # still absent, and still not a crash


async def test_refuses_to_fight_a_daskautoscaler(kube_api, namespace, tmp_path):
    await create_dask_cluster(kube_api, namespace, "sim", replicas=2)
    await create(kube_api, namespace, {"apiVersion": DASK, "kind": "DaskAutoscaler", "metadata": {"name": "theirs"},
                                       "spec": {"cluster": "sim", "minimum": 1, "maximum": 9}})
    await create(kube_api, namespace, scalable_workflow("wf", "sim"))
    async with running_operator(operator_options(namespace, tmp_path)):
        wf = await wait_until(lambda: _with_condition(kube_api, namespace, "Scaling", "False"), what="Scaling=False")
        assert condition(wf, "Scaling")["reason"] == "ConflictingAutoscaler"
        assert "'theirs'" in condition(wf, "Scaling")["message"]
        assert (await get(kube_api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["replicas"] == 2


async def test_deleting_the_workflow_leaves_the_daskcluster(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs")
    await create_dask_cluster(kube_api, namespace, "sim")
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    async with running_operator(operator_options(namespace, tmp_path)):
        await wait_until(lambda: _sized(kube_api, namespace, "DaskCluster", "sim"), what="sized")
        await delete(kube_api, namespace, "ScalableWorkflow", "wf")
        await wait_until(lambda: _gone(kube_api, namespace, "ScalableWorkflow", "wf"), what="workflow deleted (finalizer done)")
        cluster = await get(kube_api, namespace, "DaskCluster", "sim")
        assert cluster is not None, "the DaskCluster must survive its ScalableWorkflow"
        assert _worker_resources(cluster), "resources already written stay: they are the cluster's configuration"
        assert ANNOTATION_SIZED not in (cluster["metadata"].get("annotations") or {})
        group = await get(kube_api, namespace, "DaskWorkerGroup", "sim-default")
        assert ANNOTATION_SIZED not in (group["metadata"].get("annotations") or {})
    assert (tmp_path / namespace / "runs").is_dir(), "telemetry is the namespace's history and stays"


async def _gone(api, namespace, kind, name):
    return await get(api, namespace, kind, name) is None
