"""Queue metrics of every Dask cluster in one query per metric, shared by all workflows due.

Asked per workflow, the cost grows with workflows x polls: 500 workflows at 15 s polls send
Prometheus 100 queries a second, 5,000 send 1,000, and the answers all come from the same few
series. The default queries differ between workflows only in their ``namespace`` and
``dask_org_cluster_name`` matchers (:mod:`scalable.controller.scrape_labels`), so one query
without them, aggregated ``by`` those two labels, answers every workflow at once.

:class:`QueueBatcher` does that and no more:

* a workflow asks for its cluster's figures (:meth:`QueueBatcher.get`); the first request of a
  batch waits ``window_s`` for others, then one query per metric goes out and every waiting
  request gets its own cluster's series;
* an answer is shared for ``max_age_s`` after it arrived: Prometheus' figures change once per
  scrape, so a request that arrives within that time is answered from it without a query (the
  staleness this adds is at most ``max_age_s``, and the benchmark measures it);
* one batch per Prometheus URL and timeout; a failed batch fails every request in it with the
  same :class:`~scalable.controller.prometheus.MetricsUnavailable`, which each workflow turns
  into its own condition and the scheduler fallback as before;
* a cluster absent from the answer gets ``NoData``, as the per-workflow query would.

Only workflows with the default queries come here (:func:`batchable`); a workflow that names
its own queries, or per-group ones (``$group``), is asked on its own, scoped as before. The
worker memory the operator records as telemetry (every minute per workflow) is grouped the same
way, ``by`` the two labels and ``instance``, and shared for longer (``memory_max_age_s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scalable.controller.prometheus import MetricsUnavailable, QueueMetrics
from scalable.controller.scrape_labels import CLUSTER_LABEL, NAMESPACE_LABEL

__all__ = ["GROUPED_QUERIES", "GROUPED_WORKER_MEMORY", "QueueBatcher", "batchable", "client_fetch"]

_BY = f"sum by ({NAMESPACE_LABEL}, {CLUSTER_LABEL})"
#: the default queries without their per-cluster matchers, one series per (namespace, cluster)
GROUPED_QUERIES = {
    "queued": f'{_BY} (dask_scheduler_tasks{{state=~"queued|no-worker|waiting"}})',
    "processing": f'{_BY} (dask_scheduler_tasks{{state="processing"}})',
    "workers": f'{_BY} (dask_scheduler_workers{{state!="closed"}})',
}

#: (namespace, cluster[, instance]) -> value, for one metric
Vector = dict[tuple[str, ...], float]
#: fetches one grouped query from the Prometheus at ``url`` within ``timeout``, keyed by ``labels``
FetchFn = Callable[[str, float, str, str, tuple[str, ...]], Awaitable[Vector]]

_SCOPE = (NAMESPACE_LABEL, CLUSTER_LABEL)
#: the default worker-memory query without its matchers: one series per (namespace, cluster, worker)
GROUPED_WORKER_MEMORY = (f"sum by ({NAMESPACE_LABEL}, {CLUSTER_LABEL}, instance) "
                         f'(dask_worker_memory_bytes{{type!="spilled"}})')


def client_fetch(session: Any) -> FetchFn:
    """The fetch of a :class:`QueueBatcher` for real: one grouped instant query through
    :class:`~scalable.controller.prometheus.PrometheusClient` (same redirects, size and value
    rules, same fixed failure reasons)."""
    from scalable.controller.prometheus import MAX_MEMORY_BYTES, MAX_PLAUSIBLE, PrometheusClient

    async def fetch(url: str, timeout: float, promql: str, what: str, labels: tuple[str, ...]) -> Vector:
        maximum = MAX_MEMORY_BYTES if what == "workerMemory" else MAX_PLAUSIBLE
        return await PrometheusClient(url, session, timeout).grouped(promql, labels, what, maximum)

    return fetch


def batchable(queries: Any, default_queries: Any, names: Any = GROUPED_QUERIES) -> bool:
    """Whether a workflow's queries ``names`` are the defaults (then one grouped query answers it)."""
    mine = queries.model_dump() if hasattr(queries, "model_dump") else dict(queries)
    defaults = default_queries.model_dump() if hasattr(default_queries, "model_dump") else dict(default_queries)
    return all(mine.get(name) == defaults.get(name) for name in names)


@dataclass
class _Batch:
    """One round of grouped queries and the requests waiting for it."""

    future: asyncio.Future
    fetched_at: float | None = None
    vectors: dict[str, Vector] = field(default_factory=dict)


class QueueBatcher:
    """See the module docstring. ``fetch(url, timeout, promql, what, labels)`` runs one grouped
    query. Worker memory (telemetry, not a decision) is shared for ``memory_max_age_s``."""

    def __init__(self, fetch: FetchFn, window_s: float = 0.05, max_age_s: float = 1.0, memory_max_age_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.window_s = window_s
        self.max_age_s = max_age_s
        self.memory_max_age_s = memory_max_age_s
        self.clock = clock
        self._batches: dict[tuple[str, float, str], _Batch] = {}
        #: grouped queries sent and requests answered (for tests and the benchmark)
        self.queries_sent = 0
        self.requests = {"queue": 0, "memory": 0}

    async def get(self, url: str, timeout: float, namespace: str, cluster: str) -> QueueMetrics:
        """This cluster's queue figures from the current batch for ``url``."""
        vectors = await self._vectors(url, timeout, "queue", self.max_age_s)
        return _metrics_of(vectors, namespace, cluster)

    async def worker_memory(self, url: str, timeout: float, namespace: str, cluster: str) -> dict[str, float]:
        """Memory in use per worker (by ``instance``) of this cluster, from the shared answer."""
        vectors = await self._vectors(url, timeout, "memory", self.memory_max_age_s)
        return {key[2]: value for key, value in vectors["workerMemory"].items() if key[:2] == (namespace, cluster)}

    async def _vectors(self, url: str, timeout: float, kind: str, max_age: float) -> dict[str, Vector]:
        self.requests[kind] += 1
        key = (url, float(timeout), kind)
        batch = self._batches.get(key)
        fresh = batch is not None and (batch.fetched_at is None or self.clock() - batch.fetched_at <= max_age)
        if not fresh:
            batch = _Batch(asyncio.get_running_loop().create_future())
            self._batches[key] = batch
            asyncio.get_running_loop().create_task(self._run(key, batch))
        return await asyncio.shield(batch.future)

    async def _run(self, key: tuple[str, float, str], batch: _Batch) -> None:
        url, timeout, kind = key
        queries = ({name: (promql, _SCOPE) for name, promql in GROUPED_QUERIES.items()} if kind == "queue"
                   else {"workerMemory": (GROUPED_WORKER_MEMORY, (*_SCOPE, "instance"))})
        try:
            await asyncio.sleep(self.window_s)
            self.queries_sent += len(queries)
            values = await asyncio.gather(*(self.fetch(url, timeout, promql, name, labels)
                                            for name, (promql, labels) in queries.items()))
            batch.vectors = dict(zip(queries, values))
            batch.fetched_at = self.clock()
            batch.future.set_result(batch.vectors)
        except MetricsUnavailable as exc:
            # a failure is not shared beyond the requests that waited for it: the next asks again
            if self._batches.get(key) is batch:
                del self._batches[key]
            batch.future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every waiter must wake, whatever happened
            if self._batches.get(key) is batch:
                del self._batches[key]
            batch.future.set_exception(MetricsUnavailable("QueryFailed", f"queue metrics: the grouped query failed ({type(exc).__name__})"))


def _metrics_of(vectors: Mapping[str, Vector], namespace: str, cluster: str) -> QueueMetrics:
    key = (namespace, cluster)
    queued, processing = vectors["queued"].get(key), vectors["processing"].get(key)
    if queued is None or processing is None:
        raise MetricsUnavailable("NoData", f"Prometheus has no dask_scheduler_tasks series for cluster {cluster!r} in {namespace!r}")
    return QueueMetrics(queued=queued, processing=processing, workers=vectors["workers"].get(key), source="prometheus")
