"""A worker the kernel OOM-killed resizes the template for the retry, against the real API server.

The pod is created through the API server with dask-kubernetes' labels and the limit sizing
wrote, and its status says what the kubelet reports after a kernel OOM kill (the container
restarted, ``lastState.terminated.reason: OOMKilled``, as on the real node in
tests/e2e/test_oom_on_real_pods.py). The operator sees it in its pod read and asks the
advisor for the retry of a run killed at that limit: more memory for new workers, an Event,
and ``status.groups[].lastOOMKill`` that keeps the lesson after the pod is gone.

Rerun: ``pytest tests/integration/test_oom_kill_sizing.py -q``
"""

from __future__ import annotations

import asyncio
import json

from scalable.units import parse_memory
from tests.integration.harness import (
    create,
    create_dask_cluster,
    get,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
    write_history,
)


def _memory(obj):
    return (obj["spec"]["worker"]["spec"]["containers"][0].get("resources") or {}).get("limits", {}).get("memory")


async def _worker_pod(api, namespace, name, memory):
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"dask.org/cluster-name": "sim", "dask.org/component": "worker",
                                                 "dask.org/workergroup-name": "sim-default"}},
           # no scheduler by that name: the pod is never bound, so no kubelet (or kwok, which other
           # tests of this control plane start) writes a status over the one this test sets
           "spec": {"schedulerName": "scalable-test-no-scheduler",
                    "containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                                    "resources": {"limits": {"cpu": "1", "memory": memory},
                                                  "requests": {"cpu": "1", "memory": memory}}}]}}
    async with api.call_api("POST", version="v1", namespace=namespace, url="pods", content=json.dumps(pod),
                            headers={"Content-Type": "application/json"}):
        pass
    status = {"status": {"phase": "Running", "containerStatuses": [{
        "name": "worker", "ready": True, "restartCount": 1, "image": "ghcr.io/dask/dask:latest", "imageID": "",
        "state": {"running": {"startedAt": "2026-12-02T06:00:10Z"}},
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "startedAt": "2026-12-02T06:00:00Z",
                                     "finishedAt": "2026-12-02T06:00:09Z"}}}]}}
    async with api.call_api("PATCH", version="v1", namespace=namespace, url=f"pods/{name}/status",
                            content=json.dumps(status), headers={"Content-Type": "application/merge-patch+json"}):
        pass


async def _events(api, namespace, reason):
    async with api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        return [e for e in response.json()["items"] if e["reason"] == reason]


async def test_an_oom_killed_worker_gets_the_retry_memory_and_the_lesson_outlives_the_pod(kube_api, namespace, tmp_path):
    write_history(tmp_path / namespace / "runs", peak_gib=1.0, n=40)
    await create_dask_cluster(kube_api, namespace, "sim")
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4,
               "resourcePolicy": {"mode": "Auto"}}]
    # the loop iterates every poll interval, scaling or not: 1 s, so each check below sees a fresh sizing
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups,
                                                        scaling={"mode": "Off", "pollIntervalSeconds": 1}))
    async with running_operator(operator_options(namespace, tmp_path, sizing_interval=1.0)):
        async def sized():
            group = await get(kube_api, namespace, "DaskWorkerGroup", "sim-default")
            return _memory(group) if group else None

        first = await wait_until(sized, timeout=60, what="the worker template sized from history")
        await _worker_pod(kube_api, namespace, "sim-default-worker-abc", first)

        async def grown():
            memory = await sized()
            return memory if memory and parse_memory(memory) > parse_memory(first) else None

        retry = await wait_until(grown, timeout=60, what="the template resized after the OOM kill")
        assert parse_memory(retry) == 2 * parse_memory(first), (first, retry)
        wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
        kill = wf["status"]["groups"][0]["lastOOMKill"]
        assert parse_memory(kill["memory"]) == parse_memory(first) and kill["pod"] == "sim-default-worker-abc"
        assert "OOM-killed at" in wf["status"]["groups"][0]["recommendation"]["basis"]
        events = await wait_until(lambda: _events(kube_api, namespace, "WorkerOOMKilled"), timeout=60,
                                  what="a WorkerOOMKilled Event")
        assert "sim-default-worker-abc" in events[0]["message"] and events[0]["type"] == "Warning"

        async with kube_api.call_api("DELETE", version="v1", namespace=namespace, url="pods/sim-default-worker-abc",
                                     params={"gracePeriodSeconds": "0"}):
            pass

        async def gone():
            async with kube_api.call_api("GET", version="v1", namespace=namespace, url="pods",
                                         raise_for_status=False) as response:
                return not response.json()["items"]

        await wait_until(gone, what="the killed pod deleted")
        # sizing runs every second (Auto): without the recorded kill it would shrink back to `first`
        await asyncio.sleep(4)
        assert await sized() == retry, "the recorded kill keeps the retry memory while the model is the same"
        emitted = await _events(kube_api, namespace, "WorkerOOMKilled")
        assert sum(e.get("count") or 1 for e in emitted) == 1, "one Event per kill, not per sizing"
