"""QueueBatcher: one grouped query per metric for every workflow due, each its own cluster's series.

The fetch is a stand-in for one Prometheus query here (a unit test of the batching rule);
tests/integration/test_operator_scaling.py runs the batched path against a real Prometheus.
"""

from __future__ import annotations

import asyncio

import pytest

from scalable.controller.prometheus import MetricsUnavailable
from scalable.controller.queue_batch import GROUPED_QUERIES, QueueBatcher, batchable
from scalable.controller.resources import PrometheusQueries


class Prometheus:
    def __init__(self, clusters: int = 50) -> None:
        self.calls: list[str] = []
        self.fail: MetricsUnavailable | None = None
        self.clusters = clusters

    async def fetch(self, url, timeout, promql, what, labels):
        self.calls.append(what)
        await asyncio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        if what == "workerMemory":
            assert labels == ("namespace", "dask_org_cluster_name", "instance")
            return {("team", f"c{i}", f"10.0.0.{w}:8788"): 1e9 * (i + w) for i in range(self.clusters) for w in range(2)}
        base = {"queued": 100.0, "processing": 10.0, "workers": 1.0}[what]
        return {("team", f"c{i}"): base + i for i in range(self.clusters)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_many_workflows_share_one_query_per_metric_and_get_their_own_series():
    prom = Prometheus()
    batcher = QueueBatcher(prom.fetch, window_s=0.02)
    answers = await asyncio.gather(*(batcher.get("http://p", 5, "team", f"c{i}") for i in range(50)))
    assert sorted(prom.calls) == sorted(GROUPED_QUERIES), "three queries for fifty workflows"
    assert [(a.queued, a.processing, a.workers) for a in answers] == [(100.0 + i, 10.0 + i, 1.0 + i) for i in range(50)]


async def test_an_answer_is_shared_for_max_age_then_asked_again():
    prom, clock = Prometheus(), Clock()
    batcher = QueueBatcher(prom.fetch, window_s=0.0, max_age_s=1.0, clock=clock)
    await batcher.get("http://p", 5, "team", "c1")
    clock.now = 0.9
    await batcher.get("http://p", 5, "team", "c2")
    assert len(prom.calls) == 3
    clock.now = 2.0
    await batcher.get("http://p", 5, "team", "c3")
    assert len(prom.calls) == 6
    await batcher.get("http://other", 5, "team", "c3")
    assert len(prom.calls) == 9, "each Prometheus is asked on its own"


async def test_a_failed_batch_fails_its_waiters_and_the_next_request_asks_again():
    prom = Prometheus()
    prom.fail = MetricsUnavailable("Unreachable", "queued: Prometheus cannot be reached")
    batcher = QueueBatcher(prom.fetch, window_s=0.01)
    results = await asyncio.gather(*(batcher.get("http://p", 5, "team", f"c{i}") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, MetricsUnavailable) and r.reason == "Unreachable" for r in results)
    prom.fail = None
    assert (await batcher.get("http://p", 5, "team", "c1")).queued == 101.0


async def test_a_cluster_missing_from_the_answer_has_no_data():
    batcher = QueueBatcher(Prometheus(clusters=2).fetch, window_s=0.0)
    with pytest.raises(MetricsUnavailable) as missing:
        await batcher.get("http://p", 5, "team", "c9")
    assert missing.value.reason == "NoData" and "'c9'" in missing.value.message


def test_only_the_default_queries_are_batched():
    defaults = PrometheusQueries()
    assert batchable(defaults, PrometheusQueries())
    custom = PrometheusQueries(queued='sum(dask_scheduler_tasks{state="queued",namespace="$namespace",dask_org_cluster_name="$cluster"})')
    assert not batchable(custom, PrometheusQueries())


async def test_worker_memory_is_one_grouped_query_shared_for_longer():
    prom, clock = Prometheus(clusters=3), Clock()
    batcher = QueueBatcher(prom.fetch, window_s=0.0, max_age_s=1.0, memory_max_age_s=15.0, clock=clock)
    first = await batcher.worker_memory("http://p", 5, "team", "c1")
    assert first == {"10.0.0.0:8788": 1e9, "10.0.0.1:8788": 2e9}
    clock.now = 10.0
    assert await batcher.worker_memory("http://p", 5, "team", "c2") == {"10.0.0.0:8788": 2e9, "10.0.0.1:8788": 3e9}
    assert prom.calls == ["workerMemory"], "shared for 15 s"
    assert await batcher.worker_memory("http://p", 5, "other", "c1") == {}
