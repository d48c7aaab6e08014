"""One scaling poll of one ScalableWorkflow: metrics -> snapshot -> AdaptiveScaler -> replicas.

Everything the poll touches is passed in (:class:`PollDeps`), so the same code runs under kopf,
in the benchmark and in tests against a real API server with a Prometheus we control.

Rules that make it safe to run again at any moment, including right after a restart:

* **Decide from what is observed.** The "from" count is the ``spec.worker.replicas`` read in
  this poll, and the target is absolute; a poll repeated after a crash between patch and
  status write re-reads the patched replicas and does not add workers twice.
* **The scaler's history is committed only for changes really applied.** The poll passes the
  workflow's :class:`ScalingHistory` in and returns the one to keep: a hold or a patch refused
  with a Conflict starts no cooldown. The cooldown rule is the library's, the same the session
  applies (:mod:`scalable.scaling.cooldown`).
* **Cooldown survives restarts.** The last change (time, from, to) is written in the same patch
  as the replicas (annotation ``scalable.dev/last-scale`` on the DaskCluster or
  DaskWorkerGroup) and then in ``status.groups[].lastScaleTime``; a fresh process rebuilds the
  history from the later of the two, so even a crash between the replica patch and the status
  write cannot shorten the cooldown.
* **A person can hold it.** ``scalable.dev/paused: "true"`` on the workflow makes the poll
  patch nothing (``Scaling=False, reason=Paused``) until the annotation is removed.
* **Never fight another scaler.** A DaskAutoscaler on the same cluster makes the poll hold with
  ``Scaling=False, reason=ConflictingAutoscaler``.
* **Degrade, never guess.** Prometheus unavailable -> the scheduler's own ``/metrics`` ->
  hold; each step says so in a condition. With ``spec.scaling.fallback`` (KEDA's), once
  ``failureThreshold`` polls in a row found no metrics, every group is set to the fallback
  replicas (within its bounds) until metrics return; the count is kept in
  ``status.metricsFailures``, so a restart does not start it again.
* **Writes are guarded** by the ``resourceVersion`` the decision was based on; a conflict
  means someone else changed replicas, and the next poll decides again from the new value.

Queue metrics are per cluster (the scheduler does not label tasks by worker group). With one
group that is exact; with several, unless the queries mention ``$group`` (then queried per
group), the queue is split across groups in proportion to their ``maxWorkers``, an
approximation the decision reason states.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scalable.controller.conditions import now_rfc3339
from scalable.controller.dask_objects import ANNOTATION_LAST_SCALE, GroupTarget, LastScale, paused, paused_message, resolve_targets
from scalable.controller.kube import Conflict, KubeClient
from scalable.controller.prometheus import MetricsUnavailable, QueueMetrics
from scalable.controller.resources import ScalableWorkflowSpec, WorkerGroup
from scalable.controller.timestamps import parse_time, precise_time
from scalable.scaling.decision import TagDecision
from scalable.scaling.history import ScalingHistory
from scalable.scaling.scaler import AdaptiveScaler

__all__ = ["PollDeps", "PollResult", "poll_once", "make_scaler", "restore_history"]

MetricsFn = Callable[[str, str, ScalableWorkflowSpec, "str | None"], Awaitable[QueueMetrics]]
SchedulerFn = Callable[[str, str], Awaitable[QueueMetrics]]
RecordFn = Callable[[str, str, list[Any], float], Awaitable[None]]
#: what :func:`resolve_targets` returns: the DaskCluster (or None), the groups' targets, the problems
Resolved = tuple["dict[str, Any] | None", list[GroupTarget], list[str]]


@dataclass
class PollDeps:
    kube: KubeClient
    prometheus: MetricsFn
    scheduler: SchedulerFn | None = None
    record: RecordFn | None = None
    autoscalers: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None

    async def list_autoscalers(self, namespace: str) -> list[dict[str, Any]]:
        if self.autoscalers is not None:
            return await self.autoscalers(namespace)
        return await self.kube.list("DaskAutoscaler", namespace)


@dataclass
class PollResult:
    """What one poll found and did; ``conditions`` are (type, status, reason, message).

    ``history`` is the scaler history to pass to the next poll (None: keep the one passed in).
    """

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    decisions: list[TagDecision] = field(default_factory=list)
    metrics: QueueMetrics | None = None
    history: ScalingHistory | None = None
    #: polls in a row without metrics, for ``status.metricsFailures`` (None: this poll did not ask)
    metrics_failures: int | None = None

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.conditions.append({"type": type_, "status": status, "reason": reason, "message": message})


def make_scaler(spec: ScalableWorkflowSpec, advisor: Any = None) -> AdaptiveScaler:
    """The AdaptiveScaler for a workflow's spec; ``advisor`` only in Predictive mode."""
    return AdaptiveScaler(advisor=advisor if spec.scaling.mode == "Predictive" else None, config=spec.scaler_config())


def restore_history(history: ScalingHistory, targets: list[GroupTarget], previous_status: Mapping[str, Mapping[str, Any]],
                    workflow_key: str) -> ScalingHistory:
    """The history with each group's last persisted change, where it is later than what is known.

    The annotation is written with the replicas and says which way they moved; the status's
    ``lastScaleTime`` comes after it and says only when (an unknown direction holds every
    change for a cooldown).
    """
    for target in targets:
        note = target.last_scale(workflow_key)
        if note is not None:
            history = history.with_persisted_change(target.tag, note.time, note.action)
        status_time = parse_time((previous_status.get(target.group.name) or {}).get("lastScaleTime"))
        if status_time is not None and (note is None or status_time > note.time + 1e-3):
            history = history.with_persisted_change(target.tag, status_time, None)
    return history


def _features(group: WorkerGroup) -> dict[str, Any]:
    """Input features are strings in the CRD (one schema type); numbers become numbers again."""
    out: dict[str, Any] = {}
    for key, value in group.inputFeatures.items():
        try:
            number = float(value)
            out[key] = int(number) if number.is_integer() and "." not in value else number
        except ValueError:
            out[key] = value
    return out


def _shares(targets: list[GroupTarget]) -> dict[str, float]:
    total = sum(max(1, t.group.maxWorkers) for t in targets)
    return {t.group.name: max(1, t.group.maxWorkers) / total for t in targets}


def _conflicting_autoscaler(autoscalers: list[dict[str, Any]], cluster: str) -> str | None:
    for autoscaler in autoscalers:
        if (autoscaler.get("spec") or {}).get("cluster") == cluster:
            return autoscaler["metadata"]["name"]
    return None


async def _read_metrics(deps: PollDeps, namespace: str, cluster: str, spec: ScalableWorkflowSpec,
                        group: str | None, result: PollResult) -> QueueMetrics | None:
    try:
        metrics = await deps.prometheus(namespace, cluster, spec, group)
        result.condition("PrometheusAvailable", True, "Queried", f"queue metrics of {cluster!r} from Prometheus")
        return metrics
    except MetricsUnavailable as exc:
        result.condition("PrometheusAvailable", False, exc.reason, exc.message)
    if deps.scheduler is not None:
        try:
            return await deps.scheduler(namespace, cluster)
        except MetricsUnavailable as exc:
            result.condition("Scaling", False, "NoMetrics", f"Prometheus and the scheduler are unavailable ({exc.message}); holding")
            return None
    result.condition("Scaling", False, "NoMetrics", "Prometheus is unavailable and there is no scheduler fallback; holding")
    return None


async def poll_once(deps: PollDeps, body: Mapping[str, Any], scaler: AdaptiveScaler, now: float,
                    history: ScalingHistory | None = None, resolved: Resolved | None = None) -> PollResult:
    """Read, decide and (if allowed) patch replicas once. Status is the caller's to write.

    ``history`` is the one the last poll returned (``result.history``); a new process passes
    None and the poll rebuilds it from the annotations and the status. ``resolved`` is what
    :func:`resolve_targets` returned to a caller that just read the Dask objects and wrote
    nothing to them since (their ``resourceVersion`` still guards the replica patch): the poll
    then does not GET them a second time.
    """
    namespace = body["metadata"]["namespace"]
    spec = ScalableWorkflowSpec.model_validate(body.get("spec") or {})
    status = body.get("status") or {}
    previous = {g.get("name"): g for g in status.get("groups") or []}
    result = PollResult()
    cluster_name = spec.clusterRef.name
    workflow_key = f"{namespace}/{body['metadata']['name']}"

    cluster, targets, problems = resolved if resolved is not None else await resolve_targets(deps.kube, namespace, spec)
    if cluster is None:
        result.condition("Scaling", False, "ClusterNotFound", problems[0])
        return result
    for target in targets:
        result.groups[target.group.name] = {"currentReplicas": target.replicas}
    if problems:
        result.condition("Scaling", False, "WorkerGroupNotFound", "; ".join(problems))
    if paused(body):
        result.condition("Scaling", False, "Paused", paused_message(body, "replicas are left alone"))
        return result
    if spec.scaling.mode == "Off":
        result.condition("Scaling", False, "ScalingOff", "spec.scaling.mode is Off: replicas are left alone")
        return result
    conflict = _conflicting_autoscaler(await deps.list_autoscalers(namespace), cluster_name)
    if conflict is not None:
        result.condition(
            "Scaling", False, "ConflictingAutoscaler",
            f"DaskAutoscaler {conflict!r} scales cluster {cluster_name!r}; two scalers would fight, so this workflow holds. "
            "Delete the DaskAutoscaler or set spec.scaling.mode: Off",
        )
        return result
    if not targets:
        return result

    per_group = any("$group" in q for q in spec.scaling.prometheus.queries.model_dump().values())
    metrics_by_group: dict[str, QueueMetrics] = {}
    failures = _int(status.get("metricsFailures"))
    if per_group:
        for target in targets:
            metrics = await _read_metrics(deps, namespace, cluster_name, spec, target.group.name, result)
            if metrics is None:
                return await _without_metrics(deps, spec, targets, workflow_key, now, failures + 1, result)
            metrics_by_group[target.group.name] = metrics
        result.metrics = next(iter(metrics_by_group.values()))
        shares = {t.group.name: 1.0 for t in targets}
    else:
        metrics = await _read_metrics(deps, namespace, cluster_name, spec, None, result)
        if metrics is None:
            return await _without_metrics(deps, spec, targets, workflow_key, now, failures + 1, result)
        result.metrics = metrics
        metrics_by_group = {t.group.name: metrics for t in targets}
        shares = _shares(targets) if len(targets) > 1 else {targets[0].group.name: 1.0}
    result.metrics_failures = 0

    snapshot = {}
    by_tag = {}
    for target in targets:
        g = target.group
        metrics = metrics_by_group[g.name]
        share = shares[g.name]
        tag = g.tag or g.name
        by_tag[tag] = target
        snapshot[tag] = {
            "queued": int(round(metrics.queued * share)),
            "processing": int(round(metrics.processing * share)),
            "workers": target.replicas,
            "threads_per_worker": target.threads_per_worker(),
            "task": g.task,
            "input_features": _features(g),
        }
    history = restore_history(history or ScalingHistory(), targets, previous, workflow_key)
    decision = scaler.evaluate(snapshot, now, history)
    applied: list[str] = []

    acted = False
    for tag, tag_decision in decision.tags.items():
        target = by_tag[tag]
        g = target.group
        if len(targets) > 1 and not per_group and tag_decision.action != "hold":
            tag_decision = _annotated(tag_decision, f" (cluster queue split by maxWorkers: {shares[g.name]:.0%} to group {g.name!r})")
        group_status = result.groups[g.name]
        group_status["desiredReplicas"] = tag_decision.to_workers
        if tag_decision.action != "hold":
            try:
                note = LastScale(workflow_key, now, tag_decision.from_workers, tag_decision.to_workers).encode()
                await deps.kube.set_replicas(target.kind, namespace, target.name, tag_decision.to_workers, target.resource_version,
                                             annotations={ANNOTATION_LAST_SCALE: note})
            except Conflict:
                result.condition("Scaling", True, "Conflict", f"{target.kind} {target.name!r} changed while deciding; deciding again next poll")
                group_status["desiredReplicas"] = target.replicas
                continue
            acted = True
            applied.append(tag)
            group_status["lastScaleTime"] = precise_time(now)
            group_status["currentReplicas"] = tag_decision.to_workers
            verb = "ScaledUp" if tag_decision.action == "scale_up" else "ScaledDown"
            result.events.append((verb, "Normal", f"group {g.name!r}: {tag_decision.from_workers} -> {tag_decision.to_workers} workers: {tag_decision.reason}"))
        group_status["lastDecision"] = {
            "time": now_rfc3339(now), "action": tag_decision.action, "from": tag_decision.from_workers,
            "to": tag_decision.to_workers, "reason": tag_decision.reason[:1000], "mode": tag_decision.mode,
            "predictedLoad": _finite(tag_decision.predicted_load), "confidence": _finite(tag_decision.confidence),
            "queued": float(tag_decision.queued), "processing": float(tag_decision.processing),
        }
        result.decisions.append(tag_decision)
    result.history = decision.commit(applied)
    if not problems and not any(c["type"] == "Scaling" and c["status"] is not True for c in result.conditions):
        source = result.metrics.source if result.metrics else "none"
        mode = next(iter(decision.tags.values())).mode if decision.tags else "hold"
        result.condition("Scaling", True, "Active", f"{mode} scaling from {source} metrics" + ("; replicas patched" if acted else ""))
    if deps.record is not None and result.decisions:
        await deps.record(namespace, body["metadata"]["name"], result.decisions, now)
    return result


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


async def _without_metrics(deps: PollDeps, spec: ScalableWorkflowSpec, targets: list[GroupTarget], workflow_key: str,
                           now: float, failures: int, result: PollResult) -> PollResult:
    """No metrics this poll: hold, or after ``fallback.failureThreshold`` such polls in a row set
    every group to the fallback replicas (KEDA's fallback). The patch is guarded like any other
    and writes the same last-scale note, so the cooldown that follows is the usual one."""
    result.metrics_failures = failures
    fallback = spec.scaling.fallback
    if fallback is None or failures < fallback.failureThreshold:
        return result
    namespace = workflow_key.split("/", 1)[0]
    changed = []
    for target in targets:
        g = target.group
        to = max(g.minWorkers, min(g.maxWorkers, fallback.replicas))
        group_status = result.groups[g.name]
        group_status["desiredReplicas"] = to
        if to == target.replicas:
            continue
        try:
            note = LastScale(workflow_key, now, target.replicas, to).encode()
            await deps.kube.set_replicas(target.kind, namespace, target.name, to, target.resource_version,
                                         annotations={ANNOTATION_LAST_SCALE: note})
        except Conflict:
            group_status["desiredReplicas"] = target.replicas
            continue
        group_status["currentReplicas"] = to
        group_status["lastScaleTime"] = precise_time(now)
        changed.append(f"group {g.name!r}: {target.replicas} -> {to}")
    message = (f"no queue metrics for {failures} polls in a row (fallback.failureThreshold {fallback.failureThreshold}): "
               f"every group held at the fallback of {fallback.replicas} replicas within its bounds until metrics return")
    result.conditions = [c for c in result.conditions if c["type"] != "Scaling"]
    result.condition("Scaling", False, "FallbackReplicas", message + ("; " + "; ".join(changed) if changed else ""))
    if changed:
        result.events.append(("FallbackReplicas", "Warning", message + ": " + "; ".join(changed)))
    return result


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _annotated(decision: TagDecision, suffix: str) -> TagDecision:
    return TagDecision(
        tag=decision.tag, action=decision.action, from_workers=decision.from_workers, to_workers=decision.to_workers,
        reason=decision.reason + suffix, mode=decision.mode, utilisation=decision.utilisation, queued=decision.queued,
        processing=decision.processing, predicted_load=decision.predicted_load, confidence=decision.confidence,
    )
