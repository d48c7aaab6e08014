"""Queue metrics for one Dask cluster: from Prometheus, else from the scheduler itself.

A scaling decision is only as good as the numbers it reads, so every value is checked before
it can move replicas: Prometheus answers ``NaN``, ``+Inf``, empty vectors and, from a broken
exporter, negative or absurd counts. Any of those, a timeout, a refused connection or a
non-success answer raise :class:`MetricsUnavailable` with a short ``reason`` that the
caller turns into the ``PrometheusAvailable=False`` condition; the caller then asks the Dask
scheduler's own ``/metrics`` (:class:`SchedulerMetrics`) and, failing that, holds.
"""

from __future__ import annotations

import asyncio
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "MAX_PLAUSIBLE",
    "MetricsUnavailable",
    "PrometheusClient",
    "QueueMetrics",
    "SchedulerMetrics",
    "render_queries",
]

#: above this a task or worker count is a broken exporter, not a busy cluster
MAX_PLAUSIBLE = 1e8
QUEUED_STATES = frozenset({"queued", "no-worker", "waiting"})


class MetricsUnavailable(Exception):
    """No trustworthy metrics. ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class QueueMetrics:
    """The scheduler's queue as the scaler sees it."""

    queued: float
    processing: float
    workers: float | None
    source: str


def render_queries(queries: Mapping[str, str] | Any, cluster: str, namespace: str, group: str = "default") -> dict[str, str]:
    """Substitute ``$cluster`` and ``$namespace`` into the PromQL templates.

    ``safe_substitute`` is deliberate: PromQL itself may contain ``$`` (e.g. in regexes), which
    must pass through unchanged rather than fail the whole poll.
    """
    if not isinstance(queries, Mapping):
        queries = queries.model_dump()
    return {name: string.Template(text).safe_substitute(cluster=cluster, namespace=namespace, group=group) for name, text in queries.items()}


def check_value(raw: Any, what: str) -> float:
    """A sample value as a float, refused when it is not a plausible count."""
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise MetricsUnavailable("BadValue", f"{what}: {raw!r} is not a number") from exc
    if math.isnan(value) or math.isinf(value):
        raise MetricsUnavailable("BadValue", f"{what}: value is {raw}")
    if value < 0:
        raise MetricsUnavailable("BadValue", f"{what}: negative value {raw}")
    if value > MAX_PLAUSIBLE:
        raise MetricsUnavailable("BadValue", f"{what}: implausible value {raw}")
    return value


class PrometheusClient:
    """Instant queries against the Prometheus HTTP API (``/api/v1/query``)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = timeout

    async def query(self, promql: str, what: str = "query") -> float | None:
        """The single value of an instant vector or scalar; None when the vector is empty."""
        try:
            async with self.session.get(
                f"{self.url}/api/v1/query",
                params={"query": promql},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if response.status != 200:
                    body = (await response.text())[:200]
                    raise MetricsUnavailable("BadResponse", f"{what}: Prometheus answered HTTP {response.status}: {body}")
                payload = await response.json(content_type=None)
        except asyncio.TimeoutError as exc:
            raise MetricsUnavailable("Timeout", f"{what}: no answer from {self.url} within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise MetricsUnavailable("Unreachable", f"{what}: {self.url}: {exc}") from exc
        except ValueError as exc:
            raise MetricsUnavailable("BadResponse", f"{what}: answer is not JSON") from exc
        if not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error") if isinstance(payload, dict) else None
            raise MetricsUnavailable("QueryFailed", f"{what}: {error or 'Prometheus reported a failure'}")
        data = payload.get("data") or {}
        result_type, result = data.get("resultType"), data.get("result")
        if result_type == "scalar":
            return check_value(result[1], what)
        if result_type != "vector" or not isinstance(result, list):
            raise MetricsUnavailable("BadResponse", f"{what}: expected a vector, got {result_type!r}")
        if not result:
            return None
        if len(result) > 1:
            raise MetricsUnavailable(
                "AmbiguousQuery", f"{what}: {len(result)} series; the query must aggregate to one (wrap it in sum())"
            )
        return check_value(result[0].get("value", [None, None])[1], what)

    async def query_series(self, promql: str, what: str = "query") -> dict[str, float]:
        """Every series of an instant vector, keyed by its ``instance`` (or all labels); checked."""
        try:
            async with self.session.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                if response.status != 200:
                    raise MetricsUnavailable("BadResponse", f"{what}: Prometheus answered HTTP {response.status}")
                payload = await response.json(content_type=None)
        except asyncio.TimeoutError as exc:
            raise MetricsUnavailable("Timeout", f"{what}: no answer from {self.url} within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise MetricsUnavailable("Unreachable", f"{what}: {self.url}: {exc}") from exc
        data = (payload or {}).get("data") or {}
        if payload.get("status") != "success" or data.get("resultType") != "vector":
            raise MetricsUnavailable("BadResponse", f"{what}: expected a vector")
        out = {}
        for series in data.get("result") or []:
            labels = series.get("metric") or {}
            key = labels.get("instance") or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            out[key] = check_value(series.get("value", [None, None])[1], what)
        return out

    async def queue_metrics(self, queries: Mapping[str, str] | Any, cluster: str, namespace: str,
                            group: str = "default") -> QueueMetrics:
        """Queued, processing and worker counts of one cluster; empty queue series are no data."""
        rendered = render_queries(queries, cluster, namespace, group)
        queued, processing, workers = await asyncio.gather(
            self.query(rendered["queued"], "queued"),
            self.query(rendered["processing"], "processing"),
            self.query(rendered["workers"], "workers"),
        )
        if queued is None or processing is None:
            raise MetricsUnavailable(
                "NoData", f"Prometheus has no dask_scheduler_tasks series for cluster {cluster!r} in {namespace!r}"
            )
        return QueueMetrics(queued=queued, processing=processing, workers=workers, source="prometheus")


class SchedulerMetrics:
    """The fallback: the Dask scheduler's own Prometheus exposition at ``<dashboard>/metrics``."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = timeout

    async def queue_metrics(self) -> QueueMetrics:
        try:
            async with self.session.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                if response.status != 200:
                    raise MetricsUnavailable("SchedulerUnavailable", f"scheduler {self.url} answered HTTP {response.status}")
                text = await response.text()
        except asyncio.TimeoutError as exc:
            raise MetricsUnavailable("SchedulerUnavailable", f"scheduler {self.url}: no answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise MetricsUnavailable("SchedulerUnavailable", f"scheduler {self.url}: {exc}") from exc
        return parse_scheduler_metrics(text)


def parse_scheduler_metrics(text: str) -> QueueMetrics:
    """Queue figures from a scheduler's exposition text."""
    queued = processing = 0.0
    workers: float | None = None
    seen_tasks = False
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MetricsUnavailable("SchedulerUnavailable", f"scheduler metrics cannot be parsed: {exc}") from exc
    for family in families:
        if family.name == "dask_scheduler_tasks":
            for sample in family.samples:
                state = sample.labels.get("state")
                value = check_value(sample.value, f"dask_scheduler_tasks{{state={state!r}}}")
                seen_tasks = True
                if state in QUEUED_STATES:
                    queued += value
                elif state == "processing":
                    processing += value
        elif family.name == "dask_scheduler_workers":
            workers = sum(
                check_value(s.value, "dask_scheduler_workers") for s in family.samples if s.labels.get("state") != "closed"
            )
    if not seen_tasks:
        raise MetricsUnavailable("SchedulerUnavailable", "the scheduler exports no dask_scheduler_tasks (is prometheus_client installed there?)")
    return QueueMetrics(queued=queued, processing=processing, workers=workers, source="scheduler")
