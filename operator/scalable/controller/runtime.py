"""Everything one operator process shares between its handlers, built once at startup.

Handlers get this object from kopf's ``memo``; tests build one directly against a real API
server. Nothing in it is global, so two operators (say, before and after a simulated restart)
can live in one test process.
"""

from __future__ import annotations

import asyncio
import string
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from scalable.controller.kube import KubeClient
from scalable.controller.metrics import OperatorMetrics
from scalable.controller.observe import OperatorRecorder
from scalable.controller.prometheus import MetricsUnavailable, PrometheusClient, QueueMetrics, SchedulerMetrics
from scalable.controller.prometheus_policy import DEFAULT_ALLOWED_URLS, UrlNotAllowed, UrlPolicy
from scalable.controller.queue_batch import QueueBatcher, client_fetch
from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.storage import TelemetryRoot

__all__ = ["OperatorConfig", "Runtime", "DEFAULT_SCHEDULER_URL"]

#: dask-kubernetes names the scheduler Service ``<cluster>-scheduler``; its dashboard port is 8787
DEFAULT_SCHEDULER_URL = "http://$cluster-scheduler.$namespace.svc:8787"

#: how stale the shared DaskAutoscaler list of a namespace may be: a DaskAutoscaler created on a
#: cluster makes its workflow hold within this long (plus a poll)
AUTOSCALER_LIST_MAX_AGE_S = 5.0


@dataclass
class OperatorConfig:
    telemetry_path: str
    prometheus_url: str | None = None
    #: what spec.scaling.prometheus.url may name (:mod:`scalable.controller.prometheus_policy`)
    prometheus_allowed_urls: tuple[str, ...] = DEFAULT_ALLOWED_URLS
    scheduler_url_template: str | None = DEFAULT_SCHEDULER_URL
    sizing_interval_s: float = 300.0
    observe_interval_s: float = 60.0
    training_check_interval_s: float = 30.0
    training_workers: int = 1
    training_timeout_s: float = 3600.0
    min_free_bytes: int = 64 * 1024 * 1024
    #: default queue queries of all workflows due within this long share one grouped query per
    #: metric (:mod:`scalable.controller.queue_batch`); 0 asks per workflow
    prometheus_batch_age_s: float = 1.0


@dataclass
class Runtime:
    config: OperatorConfig
    kube: KubeClient
    session: aiohttp.ClientSession
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    root: TelemetryRoot = field(init=False)
    url_policy: UrlPolicy = field(init=False)
    recorder: OperatorRecorder = field(init=False)
    wakeups: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)
    advisors: Any = None
    trainer: Any = None
    _autoscalers: dict[str, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)
    queue_batcher: QueueBatcher | None = field(init=False)
    _autoscaler_lists: dict[str, asyncio.Future] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = TelemetryRoot(self.config.telemetry_path)
        self.recorder = OperatorRecorder(self.root)
        self.url_policy = UrlPolicy(self.config.prometheus_allowed_urls, self.config.prometheus_url)
        age = float(self.config.prometheus_batch_age_s)
        self.queue_batcher = QueueBatcher(client_fetch(self.session), max_age_s=age) if age > 0 else None

    async def autoscalers(self, namespace: str, max_age_s: float = AUTOSCALER_LIST_MAX_AGE_S) -> list[dict[str, Any]]:
        """DaskAutoscalers of a namespace, listed at most every ``max_age_s`` (shared by all
        workflows there, so 500 workflows do not list them 500 times per poll interval).

        The polls of many workflows come due together; those that find the list stale while
        one LIST is already on its way wait for that one instead of sending their own."""
        cached = self._autoscalers.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        pending = self._autoscaler_lists.get(namespace)
        if pending is None:
            pending = asyncio.ensure_future(self._list_autoscalers(namespace))
            self._autoscaler_lists[namespace] = pending
            pending.add_done_callback(lambda _: self._autoscaler_lists.pop(namespace, None))
        # shielded: one waiter cancelled (its daemon stopped) must not cancel the others' LIST
        return await asyncio.shield(pending)

    async def _list_autoscalers(self, namespace: str) -> list[dict[str, Any]]:
        items = await self.kube.list("DaskAutoscaler", namespace)
        self._autoscalers[namespace] = (time.monotonic(), items)
        return items

    def wakeup(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        key = (kind, namespace, name)
        event = self.wakeups.get(key)
        if event is None:
            event = self.wakeups[key] = asyncio.Event()
        return event

    def prometheus_for(self, spec: ScalableWorkflowSpec) -> PrometheusClient | None:
        """The workflow's Prometheus, None when there is none; :class:`MetricsUnavailable`
        (``URLNotAllowed``) when its URL is outside the admin's policy."""
        url = spec.scaling.prometheus.url or self.config.prometheus_url
        if not url:
            return None
        try:
            self.url_policy.check(url)
        except UrlNotAllowed as exc:
            raise MetricsUnavailable("URLNotAllowed", f"spec.scaling.prometheus.url is not queried: {exc}") from exc
        return PrometheusClient(url, self.session, spec.scaling.prometheus.timeoutSeconds)

    def scheduler_for(self, namespace: str, cluster: str) -> SchedulerMetrics | None:
        if not self.config.scheduler_url_template:
            return None
        url = string.Template(self.config.scheduler_url_template).safe_substitute(cluster=cluster, namespace=namespace)
        return SchedulerMetrics(url, self.session, timeout=5.0)

    async def close(self) -> None:
        self.recorder.close()
        if self.trainer is not None:
            self.trainer.shutdown()
        await self.session.close()


async def no_prometheus(namespace: str, cluster: str, spec: ScalableWorkflowSpec, group: str | None) -> QueueMetrics:
    from scalable.controller.prometheus import MetricsUnavailable

    raise MetricsUnavailable("NotConfigured", "no Prometheus URL: set spec.scaling.prometheus.url or --prometheus-url")
