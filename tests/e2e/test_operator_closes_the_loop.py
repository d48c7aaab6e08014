"""End to end on the real node: queue metrics from a real Dask scheduler pod, through a real
Prometheus that finds the pods through the API server (kubernetes_sd_configs), to the
operator's replica patches, to dask-kubernetes' own controller creating and retiring real
worker pods, back to the queue.

The workers are sized from telemetry: the recommendation reaches the worker pods' resources
(requests = limits), and only workers created after it get it.
"""

from __future__ import annotations

import asyncio
import json
import time

import distributed

from tests.integration.harness import create, get, operator_options, running_operator, scalable_workflow, wait_until, write_history
from tests.support.dask_kubernetes import dask_cluster, scheduler_address, ship_workloads, worker_pods
from tests.support.workloads import processing_counts, sleep_task


class PodTimeline:
    """Samples the DaskCluster's replicas and its worker pods while the test runs."""

    def __init__(self, api, kubeconfig, namespace, cluster):
        self.api, self.kubeconfig, self.namespace, self.cluster = api, kubeconfig, namespace, cluster
        self.history: list[tuple[float, int, int]] = []  # (time, replicas, running worker pods)
        self.resources: dict[str, dict] = {}  # pod name -> the worker container's resources
        self.task = None

    async def _run(self):
        while True:
            obj = await get(self.api, self.namespace, "DaskCluster", self.cluster)
            found = await asyncio.to_thread(worker_pods, self.kubeconfig, self.namespace, self.cluster)
            running = [p for p in found if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
            for p in found:
                self.resources[p["metadata"]["name"]] = p["spec"]["containers"][0].get("resources") or {}
            self.history.append((time.monotonic(), obj["spec"]["worker"]["replicas"], len(running)))
            await asyncio.sleep(0.5)

    def __enter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def test_real_worker_pods_follow_the_queue_and_carry_the_recommendation(
    kube_api, kube_cluster, namespace, tmp_path, pod_prometheus, dask_kubernetes_controller, node_images,
):
    kubeconfig = kube_cluster.kubeconfig
    prometheus = pod_prometheus
    write_history(tmp_path / namespace / "runs", task="sleep_task", peak_gib=0.25, n=40)
    await create(kube_api, namespace, dask_cluster("sim", node_images["dask"].ref, replicas=1))
    groups = [{"name": "default", "task": "sleep_task", "minWorkers": 1, "maxWorkers": 4,
               # The node has 2 CPUs: four workers fit only with a fraction of one each.
               "resourcePolicy": {"mode": "Initial", "maxAllowed": {"memory": "1Gi", "cpu": "250m"}}}]
    # The operator's default PromQL: the labels come from the scrape config, as in a cluster.
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 5, "prometheus": {"timeoutSeconds": 2}}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling))
    address = await asyncio.to_thread(scheduler_address, kubeconfig, namespace, "sim")

    async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)):
        wf = await wait_until(lambda: _recommended(kube_api, namespace), timeout=60, what="a recommendation in status")
        memory = wf["status"]["groups"][0]["recommendation"]["memory"]
        await asyncio.to_thread(prometheus.wait_for, f'sum(dask_scheduler_workers{{namespace="{namespace}",dask_org_cluster_name="sim"}})',
                                lambda v: v >= 1, 120)
        with PodTimeline(kube_api, kubeconfig, namespace, "sim") as timeline:
            def workload():
                with distributed.Client(address, timeout=30) as client:
                    ship_workloads(client, tmp_path)  # the workers' image has no tests/
                    futures = client.map(sleep_task, [0.5] * 160, pure=False)
                    total = sum(client.gather(futures))
                    return total, client.run_on_scheduler(processing_counts), [f.key for f in futures]

            started = time.monotonic()
            total, counts, keys = await asyncio.wait_for(asyncio.to_thread(workload), timeout=300)
            drained_after = time.monotonic() - started
            assert total == 80.0
            # Every task ran exactly once: no worker was retired (or lost) while busy.
            assert {counts.get(str(k), 0) for k in keys} == {1}, {k: v for k, v in counts.items() if v != 1}

            peak_replicas = max(r for _, r, _ in timeline.history)
            peak_pods = max(p for _, _, p in timeline.history)
            assert peak_replicas == 4, f"160 queued tasks take the group to maxWorkers: {timeline.history[-8:]}"
            assert peak_pods >= 3, f"dask-kubernetes made real pods for the replicas: {timeline.history}"
            assert max(p for _, _, p in timeline.history) <= 4
            assert drained_after < 75, f"one worker alone needs 80 s; the scaled group took {drained_after:.0f}s"

            async def back_to_min():
                obj = await get(kube_api, namespace, "DaskCluster", "sim")
                pods = await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim", running_only=True)
                return obj["spec"]["worker"]["replicas"] == 1 and len(pods) == 1

            await wait_until(back_to_min, timeout=120, interval=1, what="one worker pod left after the queue drained")

        # Worker pods created after the recommendation carry it as requests = limits.
        sized = [r for r in timeline.resources.values() if r.get("limits", {}).get("memory") == memory]
        assert sized, f"no worker pod has the recommended {memory}: {timeline.resources}"
        assert all(r["requests"]["memory"] == r["limits"]["memory"] for r in sized)

    wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
    decisions = [json.loads(line) for path in (tmp_path / namespace / "runs").glob("operator-wf-*/decisions.jsonl")
                 for line in path.read_text().splitlines()]
    actions = [d["action"] for d in decisions]
    assert "scale_up" in actions and "scale_down" in actions
    async with kube_api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        reasons = {e["reason"] for e in response.json()["items"] if e["involvedObject"]["name"] == "wf"}
    assert {"ScaledUp", "ScaledDown"} <= reasons
    assert wf["status"]["groups"][0]["currentReplicas"] == 1


async def _recommended(api, namespace):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    groups = ((wf or {}).get("status") or {}).get("groups") or []
    return wf if groups and (groups[0].get("recommendation") or {}).get("memory") else None
