"""A worker sized above the node's memory on the real node: reported, then capped by maxAllowed.

History from a larger machine says the task peaks near 40 GiB; the node has 24 GiB. The
operator writes that recommendation (requests = limits) into the worker template, the API
server stores it, dask-kubernetes makes a worker Deployment from it, and kube-scheduler leaves
the pod Pending ("Insufficient memory"). The workflow's status must say so (WorkersScheduled
False, naming the pod, the scheduler's message and the limit sizing wrote; a Warning Event)
while the operator keeps reconciling: no reconcile error, the other conditions follow a spec
change. Then ``resourcePolicy.maxAllowed`` below the node's memory caps the template, a new
worker runs, and WorkersScheduled turns True.

Rerun: ``python -m pytest tests/e2e/test_unschedulable_workers.py -q -x``
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from scalable.units import parse_memory
from tests.integration.harness import (
    condition,
    create,
    get,
    merge_patch,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
    write_history,
)
from tests.support.dask_kubernetes import dask_cluster, kubectl, worker_pods

CAPPED = "1Gi"


def _node_allocatable_memory(kubeconfig) -> int:
    (node,) = json.loads(kubectl(kubeconfig, "get", "nodes", "-o", "json").stdout)["items"]
    return parse_memory(node["status"]["allocatable"]["memory"])


async def _template_memory(api, namespace) -> str | None:
    group = await get(api, namespace, "DaskWorkerGroup", "sim-default")
    container = group["spec"]["worker"]["spec"]["containers"][0]
    return ((container.get("resources") or {}).get("limits") or {}).get("memory")


async def _workers_scheduled(api, namespace, status: str, reason: str | None = None):
    c = condition(await get(api, namespace, "ScalableWorkflow", "wf"), "WorkersScheduled")
    return c if c and c["status"] == status and reason in (None, c["reason"]) else None


async def _reconcile_errors(metrics_url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{metrics_url}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("scalable_reconcile_errors_total{") and 'kind="ScalableWorkflow"' in line)


async def test_a_worker_above_the_node_memory_is_reported_and_maxallowed_makes_it_run(
    kube_api, kube_cluster, namespace, tmp_path, dask_kubernetes_controller, node_images,
):
    kubeconfig = kube_cluster.kubeconfig
    allocatable = await asyncio.to_thread(_node_allocatable_memory, kubeconfig)
    write_history(tmp_path / namespace / "runs", task="simulate", peak_gib=40, n=20, spread=0.02)
    await create(kube_api, namespace, dask_cluster("sim", node_images["dask"].ref, replicas=0))
    groups = [{"name": "default", "task": "simulate", "minWorkers": 0, "maxWorkers": 1,
               "resourcePolicy": {"mode": "Initial", "maxAllowed": {"cpu": "250m"}}}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling={"mode": "Off", "pollIntervalSeconds": 2}))

    # Sizing writes the default group's DaskWorkerGroup too, once per generation: it must exist
    # before the operator's first sizing (a later one is five minutes away).
    await wait_until(lambda: get(kube_api, namespace, "DaskWorkerGroup", "sim-default"), timeout=60,
                     what="dask-kubernetes made the default DaskWorkerGroup")
    async with running_operator(operator_options(namespace, tmp_path)) as operator:
        too_big = await wait_until(lambda: _template_memory(kube_api, namespace), timeout=60, what="the worker template sized")
        assert parse_memory(too_big) > allocatable, (too_big, allocatable)
        await wait_until(lambda: _workers_scheduled(kube_api, namespace, "True", "NoWorkerPods"), timeout=30,
                         what="WorkersScheduled=True with no workers")

        started = time.monotonic()
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 1}}})

        def unschedulable_pod():
            for pod in worker_pods(kubeconfig, namespace, "sim"):
                scheduled = next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})
                if scheduled.get("reason") == "Unschedulable":
                    return pod
            return None

        pod = await wait_until(lambda: asyncio.to_thread(unschedulable_pod), timeout=120, interval=0.5,
                               what="the worker pod refused by kube-scheduler")
        pod_refused = time.monotonic()
        name = pod["metadata"]["name"]
        reported = await wait_until(lambda: _workers_scheduled(kube_api, namespace, "False"), timeout=60, interval=0.5,
                                    what="WorkersScheduled=False")
        condition_seen = time.monotonic()
        print(f"\n[unschedulable] template {too_big} on a node of {allocatable / 2**30:.1f} GiB allocatable; pod refused "
              f"{pod_refused - started:.1f} s after the replica patch, WorkersScheduled=False {condition_seen - started:.1f} s "
              f"after it ({condition_seen - pod_refused:.1f} s after the pod was refused)\n  {reported['message']}")
        assert reported["reason"] == "Unschedulable"
        assert name in reported["message"] and "Insufficient memory" in reported["message"], reported
        assert f"memory {too_big}" in reported["message"] and "maxAllowed" in reported["message"], reported
        assert "Deployment is deleted" in reported["message"], "says how to get rid of the Pending worker"

        async def warned():
            async with kube_api.call_api("GET", version="v1", namespace=namespace, url="events") as r:
                return [e for e in r.json()["items"] if e["reason"] == "WorkersNotScheduled" and e["type"] == "Warning"]

        (event,) = await wait_until(warned, timeout=10, what="a Warning Event WorkersNotScheduled")
        assert event["involvedObject"]["name"] == "wf" and name in event["message"]

        # The operator holds: the pod stays Pending, no reconcile fails, and a spec change
        # reaches the other conditions. maxAllowed below the node's memory caps the template.
        await asyncio.sleep(10)
        assert not operator.task.done()
        assert (await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim"))[0]["status"]["phase"] == "Pending"
        assert (await _workers_scheduled(kube_api, namespace, "False")) is not None
        assert len(await warned()) == 1, "one Warning when it turned False, not one per reconcile"
        wf = await merge_patch(kube_api, namespace, "ScalableWorkflow", "wf", {"spec": {"workerGroups": [
            {**groups[0], "resourcePolicy": {"mode": "Initial", "maxAllowed": {"cpu": "250m", "memory": CAPPED}}}]}})
        generation = wf["metadata"]["generation"]

        async def capped():
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            recommendation = wf["status"]["groups"][0].get("recommendation") or {}
            current = wf["status"].get("observedGeneration") == generation and condition(wf, "Ready")["status"] == "True"
            return wf if (current and await _template_memory(kube_api, namespace) == CAPPED and recommendation.get("memory") == CAPPED
                          and f"capped at maxAllowed {CAPPED}" in recommendation.get("basis", "")) else None

        await wait_until(capped, timeout=60, what=f"the template and the recommendation capped at {CAPPED}, status current")
        assert await _reconcile_errors(operator.metrics_url) == 0

        # The Pending worker keeps the resources it was made with, and replicas 0 does not remove
        # it: dask-kubernetes retires workers through the scheduler, which never saw this one (the
        # condition's message says so). Its Deployment is deleted by hand; a new worker is made
        # from the capped template.
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 0}}})
        await asyncio.sleep(10)
        assert [p["metadata"]["name"] for p in await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim")] == [name]
        await asyncio.to_thread(kubectl, kubeconfig, "-n", namespace, "delete", "deployment",
                                "-l", "dask.org/cluster-name=sim,dask.org/component=worker", "--wait=true")
        await wait_until(lambda: asyncio.to_thread(lambda: not worker_pods(kubeconfig, namespace, "sim")), timeout=120,
                         interval=1, what="the refused worker gone")
        restarted = time.monotonic()
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 1}}})

        def running_worker():
            pods = worker_pods(kubeconfig, namespace, "sim", running_only=True)
            return pods[0] if pods else None

        pod = await wait_until(lambda: asyncio.to_thread(running_worker), timeout=180, interval=0.5, what="a worker pod Running")
        running = time.monotonic()
        assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == CAPPED
        fine = await wait_until(lambda: _workers_scheduled(kube_api, namespace, "True", "Scheduled"), timeout=30, interval=0.5,
                                what="WorkersScheduled=True naming the running worker")
        print(f"[unschedulable] capped at {CAPPED}: after the replica patch the new worker Running in {running - restarted:.1f} s, "
              f"WorkersScheduled=True seen at {time.monotonic() - restarted:.1f} s ({fine['message']})")
        assert fine["message"] == "1 of 1 worker pods scheduled"
        assert await _reconcile_errors(operator.metrics_url) == 0
        assert not operator.task.done()
