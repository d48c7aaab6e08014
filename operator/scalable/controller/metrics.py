"""The operator's own metrics (prometheus-client) and its health endpoints.

A private registry, not the process-global one, so several operators can run in one test
process and each ``/metrics`` shows only its own figures. Label sets are bounded by what
exists in the cluster (namespace, workflow, group), never by free text.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["OperatorMetrics", "health_app"]


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter("scalable_reconcile", "Reconcile iterations", ["kind"], registry=r)
        self.reconcile_errors = Counter("scalable_reconcile_errors", "Reconcile iterations that failed", ["kind", "reason"], registry=r)
        self.status_writes = Counter(
            "scalable_status_writes", "Status writes of ScalableWorkflow polls: written, or unchanged (nothing new to say, "
            "so no PATCH)", ["result"], registry=r,
        )
        self.decisions = Counter("scalable_scaling_decisions", "Scaling decisions", ["namespace", "workflow", "group", "action"], registry=r)
        self.recommended_cpu = Gauge("scalable_recommended_cpu", "Recommended worker CPUs (after bounds)", ["namespace", "workflow", "group"], registry=r)
        self.recommended_memory = Gauge("scalable_recommended_memory_bytes", "Recommended worker memory (after bounds)", ["namespace", "workflow", "group"], registry=r)
        self.confidence = Gauge("scalable_recommendation_confidence", "Confidence of the recommendation", ["namespace", "workflow", "group"], registry=r)
        self.desired_workers = Gauge("scalable_desired_workers", "Workers the last decision asked for", ["namespace", "workflow", "group"], registry=r)
        self.poll_seconds = Histogram(
            "scalable_poll_duration_seconds", "One scaling poll: metrics read to replicas patched",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.training_seconds = Histogram(
            "scalable_training_duration_seconds", "Training of one AdvisorModel", ["namespace"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r,
        )
        self.trainings = Counter("scalable_trainings", "Trainings by outcome", ["namespace", "outcome"], registry=r)
        self.records = Counter("scalable_telemetry_records", "Telemetry records pushed to the ingestion endpoint", ["namespace", "result"], registry=r)
        self.leader = Gauge("scalable_leader", "1 while this replica holds the leader Lease", registry=r)
        # For the chart's alerts (ScalableScalingHeld, ScalableModelStale): a condition or a
        # status field is not something Prometheus can alert on.
        self.scaling_held = Gauge(
            "scalable_scaling_held", "1 while the last poll of a workflow left its replicas alone, by the reason of its "
            "Scaling condition (NoMetrics, FallbackReplicas, ConflictingAutoscaler, ClusterNotFound, Paused, ScalingOff, ...)",
            ["namespace", "workflow", "reason"], registry=r,
        )
        self.model_trained = Gauge(
            "scalable_model_trained_timestamp_seconds", "Unix time of the last training of an AdvisorModel that left a "
            "model serving (promoted or kept); the serving model's own time while training fails", ["namespace", "model"],
            registry=r,
        )
        self._held: dict[tuple[str, str], str] = {}

    def forget_workflow(self, namespace: str, workflow: str, groups: list[str]) -> None:
        """Drop the series of a deleted workflow so /metrics does not grow without bound."""
        for gauge in (self.recommended_cpu, self.recommended_memory, self.confidence, self.desired_workers):
            for group in groups:
                self._remove(gauge, namespace, workflow, group)
        self.scaling_state(namespace, workflow, None)

    def scaling_state(self, namespace: str, workflow: str, held_reason: str | None) -> None:
        """One series per workflow at most: the reason it is held now, or none while it scales."""
        before = self._held.pop((namespace, workflow), None)
        if before is not None and before != held_reason:
            self._remove(self.scaling_held, namespace, workflow, before)
        if held_reason is not None:
            self._held[(namespace, workflow)] = held_reason
            self.scaling_held.labels(namespace, workflow, held_reason).set(1)

    def model_trained_at(self, namespace: str, model: str, when: float | None) -> None:
        if when is None:
            self._remove(self.model_trained, namespace, model)
        else:
            self.model_trained.labels(namespace, model).set(when)

    def forget_model(self, namespace: str, model: str) -> None:
        self._remove(self.model_trained, namespace, model)

    @staticmethod
    def _remove(gauge: Gauge, *labels: str) -> None:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def health_app(metrics: OperatorMetrics, ready: Callable[[], bool]) -> web.Application:
    """``/metrics``, ``/healthz`` (the event loop answers) and ``/readyz`` (started, leading or standby)."""

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ready") if ready() else web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
