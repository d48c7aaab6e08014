"""Faults of the real node while the operator scales a real DaskCluster:

- containerd and the kubelet restarted while the queue is full: running containers carry on,
  the operator keeps deciding within bounds, and the pods converge to its replicas;
- a worker pod deleted by hand: dask-kubernetes replaces it, the operator's replicas stay
  within [minWorkers, maxWorkers] and no task is lost.
"""

from __future__ import annotations

import asyncio
import time

import distributed

from tests.integration.harness import create, get, operator_options, running_operator, scalable_workflow, wait_until
from tests.support.dask_kubernetes import dask_cluster, kubectl, scheduler_address, ship_workloads, worker_pods
from tests.support.workloads import sleep_task

MIN, MAX = 1, 3


async def _replicas(api, namespace) -> int:
    return (await get(api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["replicas"]


async def test_node_restarts_and_a_deleted_worker_pod_leave_the_loop_within_bounds(
    kube_api, kube_cluster, namespace, tmp_path, pod_prometheus, dask_kubernetes_controller, node_images,
):
    kubeconfig, node = kube_cluster.kubeconfig, kube_cluster.node
    await create(kube_api, namespace, dask_cluster("sim", node_images["dask"].ref, replicas=MIN))
    groups = [{"name": "default", "task": "sleep_task", "minWorkers": MIN, "maxWorkers": MAX}]
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 3, "prometheus": {"timeoutSeconds": 2}}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling))
    address = await asyncio.to_thread(scheduler_address, kubeconfig, namespace, "sim")
    seen: list[int] = []

    async def watch():
        while True:
            seen.append(await _replicas(kube_api, namespace))
            await asyncio.sleep(0.5)

    async with running_operator(operator_options(namespace, tmp_path, prometheus_url=pod_prometheus.url)):
        watcher = asyncio.ensure_future(watch())
        try:
            def workload(n: int) -> float:
                with distributed.Client(address, timeout=30) as client:
                    ship_workloads(client, tmp_path)
                    return sum(client.gather(client.map(sleep_task, [0.5] * n, pure=False)))

            running = asyncio.ensure_future(asyncio.to_thread(workload, 120))
            await wait_until(lambda: _above_min(kube_api, namespace), timeout=60, what="a scale-up from the queue")
            # containerd and the kubelet go away for a few seconds each, mid-scale.
            await asyncio.to_thread(node.restart, "containerd", down_seconds=3)
            await asyncio.to_thread(node.restart, "kubelet", down_seconds=3)
            assert await asyncio.wait_for(running, timeout=300) == 60.0

            async def settled():
                replicas = await _replicas(kube_api, namespace)
                pods = await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim", running_only=True)
                return replicas == MIN and len(pods) == MIN

            await wait_until(settled, timeout=120, interval=1, what="back to one worker pod after the restarts")

            # A worker pod deleted by hand: dask-kubernetes makes a new one; bounds hold.
            (victim,) = await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim", running_only=True)
            await asyncio.to_thread(kubectl, kubeconfig, "-n", namespace, "delete", "pod", victim["metadata"]["name"], "--wait=false")

            async def replaced():
                pods = await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim", running_only=True)
                return [p for p in pods if p["metadata"]["name"] != victim["metadata"]["name"]]

            await wait_until(replaced, timeout=120, interval=1, what="dask-kubernetes replaced the deleted worker pod")
            assert await asyncio.wait_for(asyncio.to_thread(workload, 10), timeout=120) == 5.0
        finally:
            watcher.cancel()
    assert seen and min(seen) >= MIN and max(seen) <= MAX, seen
    assert max(seen) > MIN, "the queue scaled the group up"


async def _above_min(api, namespace):
    return await _replicas(api, namespace) > MIN
