"""A worker pod sized below its task's peak is OOM-killed by the kernel (the container's memory
cgroup, not Dask's nanny), the task's observation says `oom_killed`, the operator's
recommendation rises above the limit that killed it, and the rerun on a worker created with
the new recommendation succeeds.

History says the task peaks near 400 MiB, so the operator sizes the workers for that; the
next input needs about 30 MiB more than that recommendation, measured on the running pod.
"""

from __future__ import annotations

import asyncio
import json
import time

import distributed

from scalable.telemetry.dask_plugin import (
    LOST_TOPIC,
    TASK_TOPIC,
    KernelOOMNannyPlugin,
    ProbedTask,
    TelemetryCollector,
    TelemetrySchedulerPlugin,
    flush_lost_workers,
    task_name,
)
from scalable.telemetry.store import RunStore
from scalable.units import parse_memory
from tests.integration.harness import create, get, merge_patch, operator_options, running_operator, scalable_workflow, wait_until, write_history
from tests.support.dask_kubernetes import dask_cluster, kubectl, scheduler_address, ship_workloads, worker_pods
from tests.support.workloads import allocate

MiB = 2**20


def _run_once(address: str, runs_dir, nbytes: int) -> tuple[str, list[dict]]:
    """Submit `allocate(nbytes)` the way a ScalableSession does (probed, registered, with the
    scheduler's and nannies' telemetry plugins) and return how it ended and what was recorded."""
    store = RunStore(runs_dir)
    with store.open_run(workflow="wf", source="e2e") as run, distributed.Client(address, timeout=30) as client:
        ship_workloads(client, runs_dir.parent.parent)  # the workers' image has no tests/
        collector = TelemetryCollector(run.run_id, run.append)
        client.subscribe_topic(TASK_TOPIC, collector.handle)
        client.subscribe_topic(LOST_TOPIC, collector.handle)
        client.register_plugin(TelemetrySchedulerPlugin())
        client.register_plugin(KernelOOMNannyPlugin())
        key = f"allocate-{time.time_ns()}"
        collector.register(key, task_name(allocate), "default", {"nbytes": nbytes}, time.time())
        future = client.submit(ProbedTask(allocate), nbytes, 1.0, 1.0, key=key, pure=False)
        try:
            future.result(timeout=240)
            outcome = "succeeded"
        except Exception as exc:  # noqa: BLE001 - KilledWorker after the retries is the expected failure
            outcome = type(exc).__name__
        # The verdict on the last lost worker waits (1 s) for its nanny's memory event.
        time.sleep(3)
        client.run_on_scheduler(flush_lost_workers)
        time.sleep(2)  # the last events reach the client
        run_id = run.run_id
    lines = (runs_dir / run_id / "tasks.jsonl").read_text().splitlines() if (runs_dir / run_id / "tasks.jsonl").exists() else []
    return outcome, [json.loads(line) for line in lines]


def _warm_up(address: str, directory) -> None:
    """One small task on the worker first, so the baseline measured next includes what running
    a task costs (the shipped module, the telemetry plugins, the task's thread)."""
    with distributed.Client(address, timeout=30) as client:
        ship_workloads(client, directory)
        client.register_plugin(TelemetrySchedulerPlugin())
        client.register_plugin(KernelOOMNannyPlugin())
        client.submit(ProbedTask(allocate), MiB, 0.0, 0.0, pure=False).result(timeout=120)


def _container_memory_bytes(kubeconfig, namespace, pod) -> int:
    out = kubectl(kubeconfig, "-n", namespace, "exec", pod, "--", "cat", "/sys/fs/cgroup/memory/memory.usage_in_bytes").stdout
    return int(out.strip())


def _oom_kills(kubeconfig, namespace, pod) -> int:
    out = kubectl(kubeconfig, "-n", namespace, "exec", pod, "--", "cat", "/sys/fs/cgroup/memory/memory.oom_control").stdout
    return int(dict(line.split() for line in out.splitlines())["oom_kill"])


async def _recommendation(api, namespace, *, above: float = 0.0):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    groups = ((wf or {}).get("status") or {}).get("groups") or []
    memory = (groups[0].get("recommendation") or {}).get("memory") if groups else None
    return memory if memory and parse_memory(memory) > above else None


async def _one_worker(kubeconfig, namespace, memory: str):
    def ready():
        pods = worker_pods(kubeconfig, namespace, "sim", running_only=True)
        pods = [p for p in pods if p["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("memory") == memory
                and all(c.get("ready") for c in p["status"].get("containerStatuses", []))]
        return pods[0] if len(pods) == 1 else None

    return await wait_until(lambda: asyncio.to_thread(ready), timeout=180, interval=1, what=f"one Ready worker pod with {memory}")


async def test_a_kernel_oom_kill_is_recorded_and_the_next_worker_gets_more_memory(
    kube_api, kube_cluster, namespace, tmp_path, dask_kubernetes_controller, node_images,
):
    kubeconfig = kube_cluster.kubeconfig
    runs = tmp_path / namespace / "runs"
    write_history(runs, task="allocate", peak_gib=0.4, n=20, spread=0.02)
    # Dask's own memory management off (--memory-limit 0): only the kernel enforces the limit.
    await create(kube_api, namespace, dask_cluster("sim", node_images["dask"].ref, replicas=0,
                                                   worker_args=["--memory-limit", "0"]))
    groups = [{"name": "default", "task": "allocate", "minWorkers": 0, "maxWorkers": 1,
               # Auto: the template follows the recommendation when it moves (after the OOM kill).
               "resourcePolicy": {"mode": "Auto", "maxAllowed": {"memory": "4Gi", "cpu": "250m"}}}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling={"mode": "Off"}))
    address = await asyncio.to_thread(scheduler_address, kubeconfig, namespace, "sim")

    async with running_operator(operator_options(namespace, tmp_path, sizing_interval=2.0)):
        first = await wait_until(lambda: _recommendation(kube_api, namespace), timeout=60, what="a first recommendation")
        limit = parse_memory(first)
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 1}}})
        pod = await _one_worker(kubeconfig, namespace, first)
        name = pod["metadata"]["name"]
        await asyncio.to_thread(_warm_up, address, tmp_path)
        baseline = await asyncio.to_thread(_container_memory_bytes, kubeconfig, namespace, name)
        # The next input needs ~30 MiB more than the recommendation: the kernel must kill it,
        # and the OOM bump (at least +100 MiB) must cover it.
        nbytes = int(limit + 30 * MiB - baseline)
        assert nbytes > 0, (first, baseline)
        outcome, records = await asyncio.to_thread(_run_once, address, runs, nbytes)
        assert outcome == "KilledWorker", (outcome, records)
        assert await asyncio.to_thread(_oom_kills, kubeconfig, namespace, name) >= 1, "the kernel OOM-killed the worker"
        # Every attempt (Dask retries on the nanny's new worker process) was killed and says so.
        states = [r["state"] for r in records]
        assert states and set(states) == {"oom_killed"}, records

        # The recommendation rises above the limit that killed it (VPA's OOM bump at least).
        second = await wait_until(lambda: _recommendation(kube_api, namespace, above=limit), timeout=60,
                                  what="a recommendation above the limit that was OOM-killed")
        assert parse_memory(second) >= min(limit + 100 * MiB, 1.2 * limit), (first, second)
        # New workers only get it: once the group's template has it, retire the worker and
        # start another (dask-kubernetes makes each worker a Deployment from the template of
        # the moment: a pod deleted by hand comes back as it was).
        async def template_has_it():
            group = await get(kube_api, namespace, "DaskWorkerGroup", "sim-default")
            limits = (group["spec"]["worker"]["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
            return limits.get("memory") == second

        await wait_until(template_has_it, timeout=60, what=f"the worker template at {second}")
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 0}}})

        async def no_workers():
            return not await asyncio.to_thread(worker_pods, kubeconfig, namespace, "sim")

        await wait_until(no_workers, timeout=120, interval=1, what="the OOM-killed worker retired")
        await merge_patch(kube_api, namespace, "DaskCluster", "sim", {"spec": {"worker": {"replicas": 1}}})
        await _one_worker(kubeconfig, namespace, second)
        outcome, records = await asyncio.to_thread(_run_once, address, runs, nbytes)
        assert outcome == "succeeded", (outcome, records)
        assert [r["state"] for r in records] == ["succeeded"]
        assert records[0]["peak_memory_bytes"] < parse_memory(second)
