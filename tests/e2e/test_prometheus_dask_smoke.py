"""Smoke test of the e2e tier's real parts: Prometheus (Debian's) scrapes a real Dask
scheduler and workers (local processes) and answers PromQL over its HTTP API."""

from __future__ import annotations

import operator

import distributed

from tests.support.workloads import slow_square


def test_prometheus_returns_dask_scheduler_metrics(prometheus, dask_cluster):
    prometheus.add_target("dask-scheduler", dask_cluster.scheduler_metrics)
    prometheus.add_target("dask-workers", *dask_cluster.worker_metrics)

    # Two workers connected, as the scheduler reports them through Prometheus.
    assert prometheus.wait_for('sum(dask_scheduler_workers{job="dask-scheduler"})', lambda v: v == 2) == 2
    assert prometheus.wait_for('count(dask_worker_threads{job="dask-workers"})', lambda v: v == 2) == 2

    # Run a real workload and see it in the scheduler's task metrics.
    with distributed.Client(dask_cluster.scheduler_address, timeout=30) as client:
        futures = client.map(slow_square, range(20))
        assert sum(client.gather(futures)) == sum(x * x for x in range(20))
        held = prometheus.wait_for('dask_scheduler_tasks{state="memory"}', lambda v: v >= 20, timeout=30)
        assert held >= 20
        del futures
    compute = prometheus.wait_for(
        'sum(dask_scheduler_tasks_compute_seconds_total{task_prefix_name="slow_square"})', lambda v: v > 0
    )
    assert compute > 0

    # Query results carry the target labels Prometheus attached.
    series = prometheus.query('dask_scheduler_workers{state="idle"}')
    assert series and series[0]["metric"]["instance"] == dask_cluster.scheduler_metrics


def test_prometheus_follows_a_worker_being_added(prometheus, dask_cluster):
    prometheus.add_target("dask-scheduler", dask_cluster.scheduler_metrics)
    prometheus.wait_for("sum(dask_scheduler_workers)", lambda v: v == 2)
    dask_cluster.add_worker()
    assert prometheus.wait_for("sum(dask_scheduler_workers)", operator.methodcaller("__ge__", 3)) == 3
