"""The pause annotation against the real API server, as KEDA's ``autoscaling.keda.sh/paused``.

``scalable.dev/paused: "true"`` on a ScalableWorkflow holds scaling (no replica patch) and
sizing (no template write), says so in the Scaling and Sized conditions, and removing it
resumes at once: the annotation change wakes the loop, which otherwise waits a whole poll
interval (300 s here, far beyond the test's timeouts).
"""

from __future__ import annotations

import asyncio

from scalable.controller.dask_objects import ANNOTATION_PAUSED
from tests.integration.harness import (
    QueueExporter,
    condition,
    create,
    create_dask_cluster,
    get,
    merge_patch,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
    write_history,
)
from tests.support.testenv import free_port


async def _replicas(api, namespace):
    return (await get(api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["replicas"]


def _resources(obj):
    return obj["spec"]["worker"]["spec"]["containers"][0].get("resources")


async def _reasons(api, namespace, scaling, sized):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    a, b = condition(wf, "Scaling"), condition(wf, "Sized")
    return wf if a and b and a["reason"] == scaling and b["reason"] == sized else None


async def test_paused_workflow_holds_scaling_and_sizing_and_resumes_when_unannotated(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", peak_gib=2.0)
    scheduler = await QueueExporter(queued=20, processing=2).start()  # enough work for 5 workers
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 5}]
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0,
               "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeoutSeconds": 1}}
    workflow = scalable_workflow("wf", "sim", groups=groups, scaling=scaling)
    workflow["metadata"]["annotations"] = {ANNOTATION_PAUSED: "true"}
    await create(kube_api, namespace, workflow)
    try:
        async with running_operator(operator_options(namespace, tmp_path, scheduler_url=scheduler.url)):
            wf = await wait_until(lambda: _reasons(kube_api, namespace, "Paused", "Paused"), what="Scaling and Sized Paused")
            for type_, held in (("Scaling", "replicas are left alone"), ("Sized", "worker templates are left alone")):
                c = condition(wf, type_)
                assert c["status"] == "False" and held in c["message"], c
                assert f"kubectl annotate scalableworkflow wf {ANNOTATION_PAUSED}-" in c["message"], c
            await asyncio.sleep(3)  # three polls with work queued for five workers
            assert await _replicas(kube_api, namespace) == 1
            for kind, name in (("DaskCluster", "sim"), ("DaskWorkerGroup", "sim-default")):
                assert _resources(await get(kube_api, namespace, kind, name)) is None, f"{kind} {name} was sized while paused"

            # from now on the loop sleeps 300 s between polls unless something wakes it
            await merge_patch(kube_api, namespace, "ScalableWorkflow", "wf", {"spec": {"scaling": {"pollIntervalSeconds": 300}}})
            await wait_until(lambda: _observed(kube_api, namespace, 2), what="the 300 s spec observed")
            await asyncio.sleep(1)
            assert await _replicas(kube_api, namespace) == 1

            await merge_patch(kube_api, namespace, "ScalableWorkflow", "wf", {"metadata": {"annotations": {ANNOTATION_PAUSED: None}}})
            await wait_until(lambda: _equals(kube_api, namespace, 5), timeout=30, what="scaled once resumed")
            group = await wait_until(lambda: _sized(kube_api, namespace), timeout=30, what="template sized once resumed")
            assert _resources(group)["limits"]["memory"]
            wf = await wait_until(lambda: _active(kube_api, namespace), timeout=30, what="Scaling no longer Paused")
            assert condition(wf, "Sized")["reason"] != "Paused"

            # pausing again wakes the loop too, and holds from then on
            await merge_patch(kube_api, namespace, "ScalableWorkflow", "wf", {"metadata": {"annotations": {ANNOTATION_PAUSED: "true"}}})
            await wait_until(lambda: _reasons(kube_api, namespace, "Paused", "Paused"), timeout=30, what="paused again")
    finally:
        await scheduler.stop()


async def _observed(api, namespace, generation):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    return wf if (wf.get("status") or {}).get("observedGeneration") == generation else None


async def _equals(api, namespace, value):
    return await _replicas(api, namespace) == value


async def _sized(api, namespace):
    group = await get(api, namespace, "DaskWorkerGroup", "sim-default")
    return group if _resources(group) else None


async def _active(api, namespace):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    c = condition(wf, "Scaling")
    return wf if c and c["reason"] not in ("Paused",) and c["status"] == "True" else None
