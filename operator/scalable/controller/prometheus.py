"""Queue metrics for one Dask cluster: from Prometheus, else from the scheduler itself.

A scaling decision is only as good as the numbers it reads, so every value is checked before
it can move replicas: Prometheus answers ``NaN``, ``+Inf``, empty vectors and, from a broken
exporter, negative or absurd counts. Any of those, a timeout, a refused connection, a
non-success answer or a query that could read another cluster's series
(:mod:`scalable.controller.promql_scope`) raise :class:`MetricsUnavailable` with a fixed
``reason`` that the caller turns into the ``PrometheusAvailable=False`` condition; the caller
then asks the Dask scheduler's own ``/metrics`` (:class:`SchedulerMetrics`) and, failing
that, holds. What a URL answered never reaches a message: only the class of an HTTP status,
"not JSON", "refused the query" and the like.
"""

from __future__ import annotations

import asyncio
import json
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from scalable.controller.prometheus_policy import AddressNotAllowed
from scalable.telemetry.schema import MAX_BYTES
from scalable.controller.promql_scope import QueryNotAllowed, check_scoped

__all__ = [
    "MAX_PLAUSIBLE",
    "MetricsUnavailable",
    "PrometheusClient",
    "QueueMetrics",
    "SchedulerMetrics",
    "render_queries",
    "scoped_query",
]

#: above this a task or worker count is a broken exporter, not a busy cluster
MAX_PLAUSIBLE = 1e8
#: memory in bytes is checked against the telemetry's own bound instead (1 PiB)
MAX_MEMORY_BYTES = float(MAX_BYTES)
QUEUED_STATES = frozenset({"queued", "no-worker", "waiting"})
#: a query answer or a scheduler's exposition larger than this is not read further
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Prometheus' own ``errorType`` values: safe to name, being from a fixed set
ERROR_TYPES = frozenset({"timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found"})


class MetricsUnavailable(Exception):
    """No trustworthy metrics. ``reason`` is a CamelCase condition reason.

    ``message`` is written into the workflow's status, so it is built from fixed text and
    what the operator knows (which query, which rule), never from what the URL answered: a
    tenant who names a URL must not read its answer back (issue 15).
    """

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


def scoped_query(queries: Mapping[str, str] | Any, name: str, cluster: str, namespace: str, group: str = "default") -> str:
    """One rendered query, refused unless it reads only ``cluster``'s series in ``namespace``."""
    promql = render_queries(queries, cluster, namespace, group)[name]
    try:
        check_scoped(promql, namespace, cluster)
    except QueryNotAllowed as exc:
        raise MetricsUnavailable("QueryNotAllowed", f"{name}: {exc}") from exc
    return promql


def check_value(raw: Any, what: str, maximum: float = MAX_PLAUSIBLE) -> float:
    """A sample value as a float, refused when it is not a plausible count (the value is not
    repeated in the message: it came from the URL)."""
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise MetricsUnavailable("BadValue", f"{what}: the sample is not a number") from exc
    if math.isnan(value) or math.isinf(value):
        raise MetricsUnavailable("BadValue", f"{what}: the sample is NaN or infinite")
    if value < 0:
        raise MetricsUnavailable("BadValue", f"{what}: the sample is negative")
    if value > maximum:
        raise MetricsUnavailable("BadValue", f"{what}: the sample is implausibly large (above {maximum:g})")
    return value


def _status_class(status: int) -> tuple[str, str]:
    """(reason, wording) for a non-200 answer: the class of the code, not the code or the body."""
    if 300 <= status < 400:
        return "HTTPRedirect", "answered with a redirect, which is not followed"
    if 400 <= status < 500:
        return "HTTPClientError", "answered with an HTTP client error (4xx)"
    if 500 <= status < 600:
        return "HTTPServerError", "answered with an HTTP server error (5xx)"
    return "BadResponse", "answered with an unexpected HTTP status"


async def _fetch(session: aiohttp.ClientSession, url: str, params: Mapping[str, str] | None, timeout: float,
                 who: str, what: str, unavailable: str | None = None) -> bytes:
    """The body of a 200 answer, at most :data:`MAX_ANSWER_BYTES`; every failure a fixed reason.

    Redirects are not followed (a redirect is how an allowed URL would lead elsewhere), and no
    exception text is passed on: aiohttp's name resolved addresses and ports.
    ``unavailable`` replaces every reason (the scheduler fallback has one).
    """
    def failed(reason: str, wording: str) -> MetricsUnavailable:
        return MetricsUnavailable(unavailable or reason, f"{what}: {who} {wording}")

    try:
        async with session.get(url, params=params, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise failed(*_status_class(response.status))
            body = await response.content.read(MAX_ANSWER_BYTES + 1)
    except asyncio.TimeoutError as exc:
        raise failed("Timeout", f"did not answer within {timeout:g}s") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressNotAllowed):
            raise failed("URLNotAllowed", f"is not queried: {exc.os_error}") from exc
        raise failed("Unreachable", "cannot be reached") from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise failed("Unreachable", "cannot be reached") from exc
    if len(body) > MAX_ANSWER_BYTES:
        raise failed("BadResponse", f"answered with more than {MAX_ANSWER_BYTES // 1024} KiB")
    return body


class PrometheusClient:
    """Instant queries against the Prometheus HTTP API (``/api/v1/query``)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = timeout

    async def _data(self, promql: str, what: str) -> Mapping[str, Any]:
        """The ``data`` of a successful answer."""
        body = await _fetch(self.session, f"{self.url}/api/v1/query", {"query": promql}, self.timeout, "Prometheus", what)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise MetricsUnavailable("BadResponse", f"{what}: Prometheus answered with something that is not JSON") from exc
        if not isinstance(payload, dict):
            raise MetricsUnavailable("BadResponse", f"{what}: Prometheus answered with JSON of the wrong shape")
        if payload.get("status") != "success":
            kind = payload.get("errorType")
            known = f" ({kind})" if kind in ERROR_TYPES else ""
            raise MetricsUnavailable("QueryFailed", f"{what}: Prometheus refused the query{known}")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise MetricsUnavailable("BadResponse", f"{what}: Prometheus answered with JSON of the wrong shape")
        return data

    async def query(self, promql: str, what: str = "query") -> float | None:
        """The single value of an instant vector or scalar; None when the vector is empty."""
        data = await self._data(promql, what)
        result_type, result = data.get("resultType"), data.get("result")
        if result_type == "scalar" and isinstance(result, list) and len(result) == 2:
            return check_value(result[1], what)
        if result_type != "vector" or not isinstance(result, list):
            raise MetricsUnavailable("BadResponse", f"{what}: expected an instant vector or a scalar")
        if not result:
            return None
        if len(result) > 1:
            raise MetricsUnavailable("AmbiguousQuery", f"{what}: more than one series; the query must aggregate to one (wrap it in sum())")
        return check_value(_sample(result[0]), what)

    async def query_series(self, promql: str, what: str = "query", maximum: float = MAX_PLAUSIBLE) -> dict[str, float]:
        """Every series of an instant vector, keyed by its ``instance`` (or all labels); checked."""
        data = await self._data(promql, what)
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise MetricsUnavailable("BadResponse", f"{what}: expected an instant vector")
        out = {}
        for series in result:
            labels = series.get("metric") if isinstance(series, dict) else None
            labels = labels if isinstance(labels, dict) else {}
            key = labels.get("instance") or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            out[str(key)] = check_value(_sample(series), what, maximum)
        return out

    async def grouped(self, promql: str, labels: tuple[str, ...], what: str = "query",
                      maximum: float = MAX_PLAUSIBLE) -> dict[tuple[str, ...], float]:
        """Every series of an instant vector keyed by the values of ``labels`` (an aggregation
        ``by`` them; a series lacking one is skipped), each value checked."""
        data = await self._data(promql, what)
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise MetricsUnavailable("BadResponse", f"{what}: expected an instant vector")
        out: dict[tuple[str, ...], float] = {}
        for series in result:
            metric = series.get("metric") if isinstance(series, dict) else None
            metric = metric if isinstance(metric, dict) else {}
            key = tuple(metric.get(label) for label in labels)
            if all(isinstance(v, str) for v in key):
                out[key] = check_value(_sample(series), what, maximum)
        return out

    async def queue_metrics(self, queries: Mapping[str, str] | Any, cluster: str, namespace: str,
                            group: str = "default") -> QueueMetrics:
        """Queued, processing and worker counts of one cluster; empty queue series are no data."""
        rendered = {name: scoped_query(queries, name, cluster, namespace, group) for name in ("queued", "processing", "workers")}
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

    async def worker_memory(self, queries: Mapping[str, str] | Any, cluster: str, namespace: str,
                            group: str = "default") -> dict[str, float]:
        """Memory in use per worker of one group (the ``workerMemory`` query), scoped like the rest."""
        return await self.query_series(scoped_query(queries, "workerMemory", cluster, namespace, group), "workerMemory",
                                       MAX_MEMORY_BYTES)


def _sample(series: Any) -> Any:
    value = series.get("value") if isinstance(series, dict) else None
    return value[1] if isinstance(value, list) and len(value) == 2 else None


class SchedulerMetrics:
    """The fallback: the Dask scheduler's own Prometheus exposition at ``<dashboard>/metrics``."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = timeout

    async def queue_metrics(self) -> QueueMetrics:
        # the Service behind the template is the tenant's: the same rules as for Prometheus
        body = await _fetch(self.session, f"{self.url}/metrics", None, self.timeout, "the scheduler", "scheduler metrics",
                            unavailable="SchedulerUnavailable")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MetricsUnavailable("SchedulerUnavailable", "scheduler metrics: the answer is not text") from exc
        return parse_scheduler_metrics(text)


def parse_scheduler_metrics(text: str) -> QueueMetrics:
    """Queue figures from a scheduler's exposition text."""
    queued = processing = 0.0
    workers: float | None = None
    seen_tasks = False
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        # the parser's message quotes the offending line: not repeated
        raise MetricsUnavailable("SchedulerUnavailable", "scheduler metrics: not Prometheus exposition text") from exc
    for family in families:
        if family.name == "dask_scheduler_tasks":
            for sample in family.samples:
                state = sample.labels.get("state")
                value = check_value(sample.value, "dask_scheduler_tasks")
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
