"""The API server crashes (SIGKILL) and restarts while the operator is reconciling and scaling.

The operator runs in this process against the session's control plane; the Dask scheduler's
queue comes from a QueueExporter (the scheduler fallback; Prometheus is pointed at a dead port).
While the queue grows, kube-apiserver is killed and started again with the same flags
(tests/support/faults.py). What must hold: the operator survives (its loop reports the errors and
retries), it finishes the scale-up once the API server is back, replicas never leave
[minWorkers, maxWorkers], the DaskCluster's pod template is intact (no half-patched object), and
status agrees with the object.

Rerun: ``pytest tests/integration/test_apiserver_restart.py -q``
"""

from __future__ import annotations

import asyncio

from tests.integration.harness import (QueueExporter, create_workflow_without_prometheus, get, operator_options,
                                       running_operator, wait_until)
from tests.support.faults import pause_etcd, restart_apiserver


async def _replicas(api, namespace):
    obj = await get(api, namespace, "DaskCluster", "sim")
    return obj["spec"]["worker"]["replicas"]


async def test_operator_finishes_scaling_across_an_apiserver_restart(kube_cluster, kube_api, namespace, tmp_path):
    assert kube_cluster.control_plane is not None, "needs the local control plane (it restarts the API server)"
    scheduler = await QueueExporter(queued=0, processing=2).start()  # 2 busy threads on 1 worker: 4 workers
    await create_workflow_without_prometheus(kube_api, namespace, max_workers=8)
    before = (await get(kube_api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["spec"]["containers"][0]
    seen: list[int] = []
    try:
        options = operator_options(namespace, tmp_path, scheduler_url=scheduler.url, lease_seconds=15)
        async with running_operator(options) as op:
            await wait_until(lambda: _replicas(kube_api, namespace), timeout=30, what="DaskCluster readable")
            first = await wait_until(lambda: _above(kube_api, namespace, 1), timeout=30, what="first scale-up")
            seen.append(first)
            assert first < 8
            restart = asyncio.create_task(asyncio.to_thread(restart_apiserver, kube_cluster.control_plane, 3.0))
            await asyncio.sleep(1.0)
            scheduler.queued = 200  # the queue grows while the API server is down: the operator wants the maximum
            down = await restart
            assert not op.task.done(), "the operator died with the API server"
            await wait_until(lambda: _equals(kube_api, namespace, 8, seen), timeout=60, what="scaled to the maximum after the restart")
            wf = await wait_until(lambda: _status_agrees(kube_api, namespace, 8), timeout=30, what="status reports the replicas")
            assert not op.task.done()
        assert all(1 <= r <= 8 for r in seen), seen
        after = (await get(kube_api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["spec"]["containers"][0]
        assert (after["name"], after["image"], after.get("args")) == (before["name"], before["image"], before.get("args"))
        print(f"API server unavailable for {down:.1f} s; replicas seen {seen}; status {wf['status']['groups'][0]}")
    finally:
        await scheduler.stop()


async def _above(api, namespace, n):
    r = await _replicas(api, namespace)
    return r if r > n else None


async def _equals(api, namespace, n, seen):
    try:
        r = await _replicas(api, namespace)
    except Exception:  # noqa: BLE001 - the API server may still be coming up
        return None
    seen.append(r)
    return r == n


async def _status_agrees(api, namespace, n):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    groups = ((wf or {}).get("status") or {}).get("groups") or []
    return wf if groups and groups[0].get("currentReplicas") == n else None


async def test_operator_finishes_scaling_across_an_etcd_outage(kube_cluster, kube_api, namespace, tmp_path):
    assert kube_cluster.control_plane is not None, "needs the local control plane (it pauses etcd)"
    scheduler = await QueueExporter(queued=0, processing=2).start()
    await create_workflow_without_prometheus(kube_api, namespace, max_workers=8)
    seen: list[int] = []
    try:
        options = operator_options(namespace, tmp_path, scheduler_url=scheduler.url, lease_seconds=15)
        async with running_operator(options) as op:
            first = await wait_until(lambda: _above(kube_api, namespace, 1), timeout=30, what="first scale-up")
            assert first < 8
            outage = asyncio.create_task(asyncio.to_thread(pause_etcd, kube_cluster.control_plane, 5.0))
            await asyncio.sleep(0.5)
            scheduler.queued = 200
            await outage
            assert not op.task.done(), "the operator died during the etcd outage"
            await wait_until(lambda: _equals(kube_api, namespace, 8, seen), timeout=60, what="scaled to the maximum after the outage")
            await wait_until(lambda: _status_agrees(kube_api, namespace, 8), timeout=30, what="status reports the replicas")
        assert all(1 <= r <= 8 for r in seen), seen
    finally:
        await scheduler.stop()
