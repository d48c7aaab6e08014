"""Batched queue queries against a real Prometheus: every workflow with the default queries is
answered from one grouped query per metric, each from its own cluster's series, with fewer
queries than one per workflow; a workflow with its own queries is still asked on its own.

Rerun: ``pytest tests/integration/test_queue_batch.py -q``
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scalable.controller.scrape_labels import SCOPE_MATCHERS, scope_labels
from tests.integration.harness import (
    QueueExporter,
    create,
    create_dask_cluster,
    get,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
)

#: cluster -> queued tasks (processing 0): with 1 thread per worker and maxWorkers 6
QUEUES = {"a": 0, "b": 20, "c": 3}


def _scaling(queries: dict[str, str] | None = None) -> dict:
    return {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0,
            "prometheus": {"timeoutSeconds": 2, **({"queries": queries} if queries else {})}}


async def _queries_answered(url: str) -> float:
    """Instant queries Prometheus has served, from its own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "prometheus_http_requests":
            total += sum(s.value for s in family.samples
                         if s.name.endswith("_total") and s.labels.get("handler") == "/api/v1/query")
    return total


async def _replicas(api, namespace, name):
    return (await get(api, namespace, "DaskCluster", name))["spec"]["worker"]["replicas"]


async def _all_decided(api, namespace):
    for name in QUEUES:
        wf = await get(api, namespace, "ScalableWorkflow", f"wf-{name}")
        if not ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision"):
            return False
    return True


async def _query_rate(kube_api, namespace, tmp_path, prometheus, batch_age_s: float, seconds: float = 8.0) -> float:
    options = operator_options(namespace, tmp_path, prometheus_url=prometheus.url)
    options.config.prometheus_batch_age_s = batch_age_s
    async with running_operator(options):
        await wait_until(lambda: _all_decided(kube_api, namespace), timeout=40, what="every workflow decided")
        before, t0 = await _queries_answered(prometheus.url), time.monotonic()
        await asyncio.sleep(seconds)
        return (await _queries_answered(prometheus.url) - before) / (time.monotonic() - t0)


async def test_default_queries_share_grouped_queries_and_each_workflow_gets_its_own_cluster(kube_api, namespace, tmp_path,
                                                                                            prometheus):
    exporters = {}
    for name, queued in {**QUEUES, "theirs": 500}.items():
        exporters[name] = await QueueExporter(queued=queued, processing=0).start()
        owner = "other-team" if name == "theirs" else namespace
        prometheus.add_target(f"q-{name}", exporters[name].address, labels=scope_labels(owner, "b" if name == "theirs" else name))
    await asyncio.to_thread(prometheus.wait_for, "count(dask_scheduler_workers)", lambda v: v == 4, 30)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 6}]
    for name in QUEUES:
        await create_dask_cluster(kube_api, namespace, name, replicas=1)
        await create(kube_api, namespace, scalable_workflow(f"wf-{name}", name, groups=groups, scaling=_scaling()))
    try:
        batched = await _query_rate(kube_api, namespace, tmp_path, prometheus, batch_age_s=1.0)
        # each workflow decided on its own cluster's queue: b's 20 (not the other team's 500 on
        # a cluster of the same name), c's 3, a's none (it stays at one worker)
        replicas = [await _replicas(kube_api, namespace, n) for n in QUEUES]
        assert replicas[0] == 1 and replicas[1] == 6 and replicas[2] > 1, replicas
        for name in QUEUES:
            wf = await get(kube_api, namespace, "ScalableWorkflow", f"wf-{name}")
            assert wf["status"]["groups"][0]["lastDecision"]["queued"] == QUEUES[name]
        per_workflow = await _query_rate(kube_api, namespace, tmp_path, prometheus, batch_age_s=0.0)
        # 3 workflows x 3 queries a second asked one by one; grouped, 3 queries per batch age
        print(f"Prometheus instant queries per second: grouped {batched:.2f}, per workflow {per_workflow:.2f}")
        assert per_workflow >= 6.0, per_workflow
        assert batched <= 0.6 * per_workflow, (batched, per_workflow)
    finally:
        for exporter in exporters.values():
            await exporter.stop()


async def test_a_workflow_with_its_own_queries_is_asked_on_its_own(kube_api, namespace, tmp_path, prometheus):
    ours = await QueueExporter(queued=12, processing=0).start()
    prometheus.add_target("ours", ours.address, labels=scope_labels(namespace, "sim"))
    await asyncio.to_thread(prometheus.wait_for, "count(dask_scheduler_workers)", lambda v: v is not None and v >= 1, 30)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 6}]
    mine = {"queued": f'sum(dask_scheduler_tasks{{state=~"queued|waiting",{SCOPE_MATCHERS}}}) / 3'}
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(mine)))
    try:
        async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)) as handle:
            await wait_until(lambda: _decided_on(kube_api, namespace, 4.0), timeout=30, what="decided on its own query (12 / 3)")
            assert await _replicas(kube_api, namespace, "sim") > 1
            assert handle.runtime.queue_batcher.requests["queue"] == 0, "custom queue queries never go through the batch"
    finally:
        await ours.stop()


async def _decided_on(api, namespace, queued):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    decision = ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision") or {}
    return decision.get("queued") == queued


class _WorkerExporter(QueueExporter):
    """A worker's /metrics: its managed memory (the scrape's ``instance`` names the worker)."""

    memory = 3 * 2**30

    async def _metrics(self, request):
        from aiohttp import web

        text = ("# TYPE dask_worker_memory_bytes gauge\n"
                f'dask_worker_memory_bytes{{type="managed"}} {float(self.memory)}\n'
                'dask_worker_memory_bytes{type="spilled"} 1e12\n')
        return web.Response(text=text, content_type="text/plain")


@pytest.mark.parametrize("batch_age_s", [1.0, 0.0], ids=["grouped", "per-workflow"])
async def test_worker_memory_is_recorded_from_one_grouped_query(kube_api, namespace, tmp_path, prometheus, batch_age_s):
    """Memory in use is bytes, gigabytes of them: checked against the telemetry's bound, not the
    1e8 that bounds a task count (which refused every real worker's memory, on both paths)."""
    import json

    scheduler = await QueueExporter(queued=0, processing=0).start()
    worker = await _WorkerExporter().start()
    other = await _WorkerExporter().start()  # the same cluster name in another namespace
    prometheus.add_target("sched", scheduler.address, labels=scope_labels(namespace, "sim"))
    prometheus.add_target("w", worker.address, labels=scope_labels(namespace, "sim"))
    prometheus.add_target("w-other", other.address, labels=scope_labels("other-team", "sim"))
    await asyncio.to_thread(prometheus.wait_for, "count(dask_worker_memory_bytes)", lambda v: v == 4, 30)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 2}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling()))
    runs = tmp_path / namespace / "runs"

    def recorded():
        lines = [json.loads(line) for path in runs.glob("*/workers.jsonl") for line in path.read_text().splitlines()]
        return lines or None

    try:
        options = operator_options(namespace, tmp_path, prometheus_url=prometheus.url)
        options.config.prometheus_batch_age_s = batch_age_s
        async with running_operator(options) as handle:
            lines = await wait_until(lambda: asyncio.to_thread(recorded), timeout=40, what="worker memory recorded")
            assert {line["worker"] for line in lines} == {worker.address}, "only this namespace's worker"
            assert {line["memory_bytes"] for line in lines} == {3 * 2**30}, "spilled bytes are not memory in use"
            assert (handle.runtime.queue_batcher is None) == (batch_age_s == 0)
    finally:
        for exporter in (scheduler, worker, other):
            await exporter.stop()
