"""Scaling against the real API server and a real Prometheus.

Prometheus (Debian's, started by the ``prometheus`` fixture) scrapes a queue exporter whose
figures the test sets, so every decision goes through real PromQL and HTTP: within bounds,
cooldown respected, restarts that do not double-scale, degradation to the scheduler's own
``/metrics`` when Prometheus is gone.
"""

from __future__ import annotations

import asyncio
import json
import time

from scalable.controller.kube import KubeClient
from scalable.controller.scrape_labels import scope_labels
from scalable.controller.timestamps import parse_time
from scalable.controller.workflow import WorkflowLoop
from tests.integration.harness import (
    QueueExporter,
    condition,
    create,
    create_dask_cluster,
    create_workflow_without_prometheus,
    get,
    job_queries,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
)


async def _replicas(api, namespace, name="sim"):
    return (await get(api, namespace, "DaskCluster", name))["spec"]["worker"]["replicas"]


async def _exporter_scraped(prometheus, exporter, namespace, job="q", cluster="sim"):
    prometheus.add_target(job, exporter.address, labels=scope_labels(namespace, cluster))
    await asyncio.to_thread(prometheus.wait_for, f'sum(dask_scheduler_tasks{{job="{job}"}})', lambda v: v is not None, 30)


def _scaling(cooldown, poll=1, **extra):
    return {"mode": "Reactive", "pollIntervalSeconds": poll, "cooldownSeconds": cooldown,
            "prometheus": {"queries": job_queries("q"), "timeoutSeconds": 2}, **extra}


class ReplicaRecorder:
    """Watches spec.worker.replicas by polling the API server and keeps (time, value) changes."""

    def __init__(self, api, namespace):
        self.api, self.namespace = api, namespace
        self.changes: list[tuple[float, int]] = []
        self.task = None

    async def _run(self):
        while True:
            value = await _replicas(self.api, self.namespace)
            if not self.changes or self.changes[-1][1] != value:
                self.changes.append((time.monotonic(), value))
            await asyncio.sleep(0.1)

    def __enter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def test_scaling_stays_in_bounds_and_respects_cooldown(kube_api, namespace, tmp_path, prometheus):
    exporter = await QueueExporter(queued=60, processing=1).start()
    await _exporter_scraped(prometheus, exporter, namespace)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}]
    cooldown = 4
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(cooldown)))
    try:
        recorder = ReplicaRecorder(kube_api, namespace)
        with recorder:  # watching before the operator starts, so its first decision is seen too
            await wait_until(lambda: asyncio.sleep(0, bool(recorder.changes)), what="first observation")
            async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)):
                await wait_until(lambda: _equals(kube_api, namespace, 4), timeout=30, what="scaled up to maxWorkers")
                exporter.queued, exporter.processing = 0, 0
                await wait_until(lambda: _equals(kube_api, namespace, 1), timeout=60, what="scaled down to minWorkers")
                await asyncio.sleep(2)
        values = [v for _, v in recorder.changes]
        assert max(values) <= 4 and min(values) >= 1, f"bounds left: {values}"
        assert values[:2] == [1, 4], f"the first decision jumps to the bound: {values}"
        assert values[1:] == [4, 3, 2, 1], f"scale-down is gradual: {values}"
        # the decisions' own clock (observing replicas through a loaded API server lags)
        changes = [json.loads(line) for path in (tmp_path / namespace / "runs").glob("operator-wf-*/decisions.jsonl")
                   for line in path.read_text().splitlines()]
        changes = sorted((d for d in changes if d["action"] != "hold"), key=lambda d: d["time"])
        assert [(d["from_workers"], d["to_workers"]) for d in changes] == [(1, 4), (4, 3), (3, 2), (2, 1)]
        assert all(abs(d["time"] - time.time()) < 600 for d in changes), "decision times are wall-clock epoch seconds"
        gaps = [b["time"] - a["time"] for a, b in zip(changes, changes[1:])]
        assert all(gap >= cooldown for gap in gaps), f"cooldown {cooldown}s not respected: gaps {gaps}"
        wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
        decision = wf["status"]["groups"][0]["lastDecision"]
        assert decision["action"] in ("hold", "scale_down") and decision["mode"] == "reactive"
        assert wf["status"]["groups"][0]["lastScaleTime"]
        assert condition(wf, "PrometheusAvailable")["status"] == "True"
        assert wf["status"]["currentWorkers"] == 1
        runs = list((tmp_path / namespace / "runs").glob("operator-wf-*/decisions.jsonl"))
        assert runs and "scale_up" in runs[0].read_text(), "decisions are recorded as telemetry"
    finally:
        await exporter.stop()


async def _equals(api, namespace, value):
    return await _replicas(api, namespace) == value


async def test_a_restart_keeps_the_cooldown_and_does_not_scale_again(kube_api, namespace, tmp_path, prometheus):
    exporter = await QueueExporter(queued=5, processing=0).start()
    await _exporter_scraped(prometheus, exporter, namespace)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 30}]
    cooldown = 25
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(cooldown)))
    try:
        options = operator_options(namespace, tmp_path, prometheus_url=prometheus.url, identity="first")
        async with running_operator(options):
            await wait_until(lambda: _above(kube_api, namespace, 1), timeout=30, what="first scale-up")
            scaled_to = await _replicas(kube_api, namespace)
            wf = await wait_until(lambda: _scaled_status(kube_api, namespace), what="lastScaleTime in status")
        # The queue grows while no operator runs; a fresh process (empty memory) must still wait.
        exporter.queued = 80
        options = operator_options(namespace, tmp_path, prometheus_url=prometheus.url, identity="second")
        async with running_operator(options):
            last_scale = parse_time(wf["status"]["groups"][0]["lastScaleTime"])
            held = await wait_until(lambda: _held_for_cooldown(kube_api, namespace), timeout=20, what="a hold for cooldown")
            assert "cooldown" in held["reason"]
            assert await _replicas(kube_api, namespace) == scaled_to, "scaled again inside the cooldown after a restart"
            await wait_until(lambda: _above(kube_api, namespace, scaled_to), timeout=cooldown + 20, what="scale-up after cooldown")
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert parse_time(wf["status"]["groups"][0]["lastScaleTime"]) - last_scale >= cooldown - 1
            assert await _replicas(kube_api, namespace) <= 30
    finally:
        await exporter.stop()


async def _above(api, namespace, value):
    return await _replicas(api, namespace) > value


async def _scaled_status(api, namespace):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    groups = (wf.get("status") or {}).get("groups") or []
    return wf if groups and groups[0].get("lastScaleTime") else None


async def _held_for_cooldown(api, namespace):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    decision = ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision") or {}
    return decision if decision.get("action") == "hold" and "cooldown" in decision.get("reason", "") else None


class CrashAfterReplicaPatch(KubeClient):
    """The real client, except that the first status write after a replica patch dies, as a
    process killed between the two writes would leave things."""

    armed = True

    async def set_replicas(self, *args, **kwargs):
        result = await super().set_replicas(*args, **kwargs)
        self.patched = True
        return result

    async def patch_status(self, *args, **kwargs):
        if self.armed and getattr(self, "patched", False):
            self.armed = False
            raise RuntimeError("killed between the replica patch and the status write")
        return await super().patch_status(*args, **kwargs)


async def test_a_crash_between_patch_and_status_does_not_double_scale(kube_api, kubeconfig, namespace, tmp_path, prometheus):
    exporter = await QueueExporter(queued=10, processing=0).start()
    await _exporter_scraped(prometheus, exporter, namespace)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 50}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(60)))
    try:
        import aiohttp

        from scalable.controller.runtime import Runtime
        from scalable.controller.training import AdvisorProvider

        options = operator_options(namespace, tmp_path, prometheus_url=prometheus.url)
        base = await KubeClient.connect(kubeconfig)
        crashing = CrashAfterReplicaPatch(base.api)
        async with aiohttp.ClientSession() as session:
            rt = Runtime(options.config, crashing, session)
            rt.advisors = AdvisorProvider(crashing, rt.root)
            first = WorkflowLoop(rt, namespace, "wf")
            await first.iterate()  # patches replicas, then "dies" before writing status
            after_crash = await _replicas(kube_api, namespace)
            assert after_crash > 1
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert not ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastScaleTime")
            # a new process: new loop, new scaler, same queue -> decides from the replicas it observes
            second = WorkflowLoop(rt, namespace, "wf")
            await second.iterate()
            await second.iterate()
            assert await _replicas(kube_api, namespace) == after_crash, "the restarted loop added workers again"
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert wf["status"]["groups"][0]["lastDecision"]["action"] == "hold"
            # the queue grows: the cooldown written with the replicas (not the lost status) holds it back
            exporter.queued = 200
            await asyncio.to_thread(prometheus.wait_for, 'sum(dask_scheduler_tasks{job="q"})', lambda v: v >= 200, 30)
            third = WorkflowLoop(rt, namespace, "wf")
            await third.iterate()
            assert await _replicas(kube_api, namespace) == after_crash, "a crash before the status write shortened the cooldown"
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            decision = wf["status"]["groups"][0]["lastDecision"]
            assert decision["action"] == "hold" and "cooldown" in decision["reason"], decision
    finally:
        await exporter.stop()


async def test_without_prometheus_the_scheduler_metrics_drive_scaling_else_hold(kube_api, namespace, tmp_path):
    scheduler = await QueueExporter(queued=20, processing=2).start()
    await create_workflow_without_prometheus(kube_api, namespace, max_workers=5)
    try:
        options = operator_options(namespace, tmp_path, scheduler_url=scheduler.url)
        async with running_operator(options):
            await wait_until(lambda: _equals(kube_api, namespace, 5), timeout=30, what="scaled from the scheduler's metrics")
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert condition(wf, "PrometheusAvailable")["status"] == "False"
            assert condition(wf, "PrometheusAvailable")["reason"] == "Unreachable"
            assert "scheduler metrics" in condition(wf, "Scaling")["message"]
            await scheduler.stop()  # now nothing answers: hold where we are
            wf = await wait_until(lambda: _scaling_reason(kube_api, namespace, "NoMetrics"), timeout=20, what="NoMetrics")
            await asyncio.sleep(2)
            assert await _replicas(kube_api, namespace) == 5
    finally:
        await scheduler.stop()


async def _scaling_reason(api, namespace, reason):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    c = condition(wf, "Scaling")
    return wf if c and c["reason"] == reason else None


class _FlakyScheduler(QueueExporter):
    """The scheduler's /metrics, answering 503 while ``down``."""

    down = False

    async def _metrics(self, request):
        from aiohttp import web

        if self.down:
            return web.Response(status=503, text="unavailable")
        return await super()._metrics(request)


async def test_after_n_polls_without_metrics_the_fallback_replicas_hold_until_metrics_return(kube_api, namespace, tmp_path):
    from tests.support.testenv import free_port

    scheduler = await _FlakyScheduler(queued=40, processing=2).start()
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 6}]
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0,
               "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeoutSeconds": 1},
               "fallback": {"failureThreshold": 3, "replicas": 2}}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling))
    try:
        async with running_operator(operator_options(namespace, tmp_path, scheduler_url=scheduler.url)):
            await wait_until(lambda: _equals(kube_api, namespace, 6), timeout=30, what="scaled from the scheduler's metrics")
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert wf["status"]["metricsFailures"] == 0
            scheduler.down = True  # neither Prometheus nor the scheduler answers now
            wf = await wait_until(lambda: _scaling_reason(kube_api, namespace, "FallbackReplicas"), timeout=30,
                                  what="the fallback")
            assert wf["status"]["metricsFailures"] >= 3
            assert "no queue metrics for 3 polls in a row" in condition(wf, "Scaling")["message"]
            assert await _replicas(kube_api, namespace) == 2
            events = await _events_of(kube_api, namespace, "wf")
            assert any(e["reason"] == "FallbackReplicas" and "6 -> 2" in e["message"] for e in events), events
            scheduler.down = False  # metrics return: the queue (40 queued) decides again
            await wait_until(lambda: _equals(kube_api, namespace, 6), timeout=30, what="scaling resumed from metrics")
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert wf["status"]["metricsFailures"] == 0 and condition(wf, "Scaling")["reason"] == "Active"
    finally:
        await scheduler.stop()


async def _events_of(api, namespace, involved_name):
    async with api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        return [e for e in response.json()["items"] if e["involvedObject"]["name"] == involved_name]
