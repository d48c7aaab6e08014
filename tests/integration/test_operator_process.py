"""`scalable operator run` as real processes: two replicas, one Lease, exactly one acts.

The leader is killed with SIGKILL (no chance to release the Lease); the standby takes over
once the Lease expires, becomes ready and reconciles. Readiness follows leadership, so a
Service only routes ingestion to the replica that acts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.error
import urllib.request

from tests.integration.harness import SCALABLE, create, create_dask_cluster, get, scalable_workflow, wait_until, write_history
from tests.support.testenv import free_ports, spawn, tail, terminate


def _ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def _lease_holder(api, namespace):
    async with api.call_api("GET", version="coordination.k8s.io/v1", namespace=namespace, url="leases/scalable-operator",
                            raise_for_status=False) as r:
        return (r.json().get("spec") or {}).get("holderIdentity") if r.status_code == 200 else None


async def test_two_replicas_one_leader_and_failover(kube_api, kubeconfig, namespace, tmp_path):
    write_history(tmp_path / "telemetry" / namespace / "runs")
    await create_dask_cluster(kube_api, namespace, "sim")
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    procs = {}
    ports = {}
    try:
        for name in ("a", "b"):
            metrics, ingest = free_ports(2)
            ports[name] = metrics
            argv = [sys.executable, "-m", "scalable.cli.main", "operator", "run", "--namespace", namespace,
                    "--telemetry-path", str(tmp_path / "telemetry"), "--metrics-port", str(metrics), "--ingest-port", str(ingest),
                    "--bind", "127.0.0.1", "--lease-namespace", namespace, "--lease-seconds", "6", "--identity", name,
                    "--scheduler-url", "", "--kubeconfig", kubeconfig]
            procs[name] = spawn(argv, tmp_path / f"operator-{name}.log", env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if name == "a":
                await wait_until(lambda: _lease_holder(kube_api, namespace), timeout=60, what="a leader")

        leader = await _lease_holder(kube_api, namespace)
        standby = "b" if leader == "a" else "a"
        await wait_until(lambda: asyncio.to_thread(lambda: _ready(ports[leader]) == 200), timeout=60, what="leader ready")
        await wait_until(lambda: asyncio.to_thread(lambda: _ready(ports[standby]) == 503), timeout=60, what="standby alive")
        await asyncio.sleep(3)
        assert _ready(ports[standby]) == 503 and await _lease_holder(kube_api, namespace) == leader

        async def reconciled_by_someone():
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            return wf if (wf.get("status") or {}).get("observedGeneration") else None

        await wait_until(reconciled_by_someone, timeout=60, what="the leader reconciles")

        os.killpg(procs[leader].pid, signal.SIGKILL)
        procs[leader].wait(10)
        await wait_until(lambda: _holder_is(kube_api, namespace, standby), timeout=40, what="standby takes the lease")
        await wait_until(lambda: asyncio.to_thread(lambda: _ready(ports[standby]) == 200), timeout=60, what="new leader ready")
        # the new leader acts: a spec change is reconciled by it
        async with kube_api.call_api("PATCH", version=SCALABLE, namespace=namespace, url="scalableworkflows/wf",
                                     content='{"spec":{"workerGroups":[{"name":"default","task":"simulate","maxWorkers":7}]}}',
                                     headers={"Content-Type": "application/merge-patch+json"}) as r:
            generation = r.json()["metadata"]["generation"]

        async def caught_up():
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            return (wf.get("status") or {}).get("observedGeneration") == generation

        await wait_until(caught_up, timeout=60, what="the new leader reconciles the change")
    except BaseException:
        for name, proc in procs.items():
            print(f"--- operator {name} ---\n{tail(tmp_path / f'operator-{name}.log', 60)}")
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                terminate(proc.pid, proc=proc)


async def _holder_is(api, namespace, name):
    return await _lease_holder(api, namespace) == name
