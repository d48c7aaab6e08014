"""End to end: queue metrics from a real Dask scheduler, through a real Prometheus, to the
operator's replica patches, to real workers, back to the queue.

There is no kubelet on the test control plane, so a small harness plays dask-kubernetes'
part: it runs one local ``dask worker`` process per replica the operator sets on the
DaskCluster (adding or stopping processes as ``spec.worker.replicas`` moves). A real workload
fills the queue; the operator scales up within bounds, the queue drains, the operator scales
back down, and every decision is in status, in Events and in the telemetry volume.
"""

from __future__ import annotations

import asyncio
import json
import time

import distributed

from tests.integration.harness import create, create_dask_cluster, get, operator_options, running_operator, scalable_workflow, wait_until
from tests.support.workloads import sleep_task


class WorkerHarness:
    """One local Dask worker per replica of the DaskCluster's default group."""

    def __init__(self, api, namespace, dask):
        self.api, self.namespace, self.dask = api, namespace, dask
        self.history: list[tuple[float, int, int]] = []  # (time, replicas, workers running)
        self.task = None

    async def _run(self):
        while True:
            cluster = await get(self.api, self.namespace, "DaskCluster", "sim")
            replicas = cluster["spec"]["worker"]["replicas"]
            running = list(self.dask.workers)
            if len(running) < replicas:
                for _ in range(replicas - len(running)):
                    await asyncio.to_thread(self.dask.add_worker, wait=False)
            elif len(running) > replicas:
                for name in running[replicas:]:
                    await asyncio.to_thread(self.dask.stop_worker, name)
            self.history.append((time.monotonic(), replicas, len(self.dask.workers)))
            await asyncio.sleep(0.5)

    def __enter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


def _queries(job):
    return {
        "queued": f'sum(dask_scheduler_tasks{{job="{job}",state=~"queued|no-worker|waiting"}})',
        "processing": f'sum(dask_scheduler_tasks{{job="{job}",state="processing"}})',
        "workers": f'sum(dask_scheduler_workers{{job="{job}"}})',
        "workerMemory": f'sum by (instance) (dask_worker_memory_bytes{{job="{job}-workers"}})',
    }


async def test_queue_drains_and_replicas_follow(kube_api, namespace, tmp_path, prometheus, dask_cluster_factory):
    dask = dask_cluster_factory(n_workers=1, nthreads=1)
    prometheus.add_target("dask", dask.scheduler_metrics)
    prometheus.add_target("dask-workers", *dask.worker_metrics)  # the first worker's memory, observed by the operator
    await asyncio.to_thread(prometheus.wait_for, 'sum(dask_scheduler_workers{job="dask"})', lambda v: v == 1, 30)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "sleep_task", "minWorkers": 1, "maxWorkers": 4}]
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 3,
               "prometheus": {"queries": _queries("dask"), "timeoutSeconds": 2}}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling))

    async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)):
        with WorkerHarness(kube_api, namespace, dask) as harness:
            def workload():
                with distributed.Client(dask.scheduler_address, timeout=30) as client:
                    futures = client.map(sleep_task, [0.5] * 100, pure=False)
                    return sum(client.gather(futures))

            started = time.monotonic()
            total = await asyncio.wait_for(asyncio.to_thread(workload), timeout=240)
            drained_after = time.monotonic() - started
            assert total == 50.0

            peak = max(replicas for _, replicas, _ in harness.history)
            assert peak == 4, f"the queue of 100 tasks should take the group to maxWorkers: {harness.history[-5:]}"
            assert max(workers for _, _, workers in harness.history) <= 4
            # one worker alone would need 50 s; the scaled group must be clearly faster
            assert drained_after < 45, f"took {drained_after:.0f}s"

            async def back_to_min():
                cluster = await get(kube_api, namespace, "DaskCluster", "sim")
                return cluster["spec"]["worker"]["replicas"] == 1

            await wait_until(back_to_min, timeout=60, what="scaled back to minWorkers after the queue drained")

    wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
    group = wf["status"]["groups"][0]
    assert group["currentReplicas"] == 1 and group["lastScaleTime"]
    assert group["lastDecision"]["action"] in ("scale_down", "hold")
    decisions = [json.loads(line) for path in (tmp_path / namespace / "runs").glob("operator-wf-*/decisions.jsonl")
                 for line in path.read_text().splitlines()]
    actions = [d["action"] for d in decisions]
    assert "scale_up" in actions and "scale_down" in actions
    up = next(d for d in decisions if d["action"] == "scale_up")
    assert up["from_workers"] == 1 and up["to_workers"] == 4 and up["queued"] > 0 and "utilisation" in up["reason"]
    samples = [json.loads(line) for path in (tmp_path / namespace / "runs").glob("operator-wf-*/workers.jsonl")
               for line in path.read_text().splitlines()]
    assert samples and all(s["memory_bytes"] > 0 and s["tag"] == "default" for s in samples), "worker memory is recorded"
    async with kube_api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        reasons = {e["reason"] for e in response.json()["items"] if e["involvedObject"]["name"] == "wf"}
    assert {"ScaledUp", "ScaledDown"} <= reasons
