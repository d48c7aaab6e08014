"""The reconcile loop of one ScalableWorkflow: size the worker templates, then scale, then report.

One loop per object (a kopf daemon) is the only writer of that object's status, so sizing and
scaling never overwrite each other's fields. Each iteration re-reads the workflow and the Dask
objects from the API server and decides from what it sees, which is what makes a restart at any
point harmless. Errors become conditions and a back-off, never a crashed loop.

Sizing runs when the loop starts, when the spec's generation or the model version changes, and
every ``sizing_interval_s`` (so ``Auto`` follows a retrained model); scaling runs every
``spec.scaling.pollIntervalSeconds``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from scalable.controller import sizing, worker_pods
from scalable.controller.conditions import get_condition, merge_conditions, set_condition
from scalable.controller.kube import Conflict, KubeError
from scalable.controller.prometheus import MetricsUnavailable, QueueMetrics
from scalable.controller.queue_batch import batchable
from scalable.controller.resources import PrometheusQueries, ScalableWorkflowSpec
from scalable.controller.runtime import Runtime, no_prometheus
from scalable.controller.status_writes import StatusWrites, changed
from scalable.controller.dask_objects import (
    DEFAULT_GROUP,
    GroupTarget,
    SizedMark,
    TemplateError,
    default_worker_group_name,
    find_container,
    marks_of,
    paused,
    paused_message,
    resolve_targets,
    worker_pod_spec,
)
from scalable.controller.scaling_loop import PollDeps, _features, make_scaler, poll_once
from scalable.controller.timestamps import precise_time
from scalable.scaling.history import ScalingHistory
from scalable.units import QuantityError, exact_memory, format_cpu, format_memory, parse_memory

__all__ = ["WorkflowLoop", "size_groups", "cleanup_workflow"]

#: the queue queries a workflow gets when it names none (then its poll can be batched)
DEFAULT_QUERIES = PrometheusQueries()

log = logging.getLogger("scalable.controller.workflow")

HOLD_RECORD_INTERVAL_S = 60.0


@dataclass
class SizingResult:
    recommendations: dict[str, dict[str, Any]] = field(default_factory=dict)
    oom_kills: dict[str, dict[str, Any]] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _workflow_key(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def _worker_group_of(target: GroupTarget) -> str:
    """The DaskWorkerGroup whose pods run ``target``'s workers (a DaskCluster's: its default group)."""
    return default_worker_group_name(target.name) if target.kind == "DaskCluster" else target.name


def _oom_kill(target: GroupTarget, pods: worker_pods.WorkerPods | None, previous: Mapping[str, Any] | None,
              model_version: str | None, now: float) -> tuple[dict[str, Any] | None, bool]:
    """The group's ``lastOOMKill`` status: the largest limit of a worker OOM-killed now, or the one
    recorded under the same model version (the killed pods may be gone, the lesson is not); and
    whether it is a kill not recorded before. A newer model has learned from the telemetry of
    the kill (its OOM floor), so an older record no longer applies."""
    recorded = (previous or {}).get("lastOOMKill") or None
    if recorded and recorded.get("modelVersion") != model_version:
        recorded = None
    try:
        recorded_bytes = parse_memory(recorded["memory"]) if recorded else 0
    except (QuantityError, KeyError, TypeError):
        recorded, recorded_bytes = None, 0
    seen = pods.largest_oom_kill(_worker_group_of(target)) if pods is not None else None
    if seen is None or seen.limit_bytes <= recorded_bytes:
        return (dict(recorded) if recorded else None), False
    return {"memory": exact_memory(seen.limit_bytes), "pod": seen.pod, "time": precise_time(now),
            "modelVersion": model_version}, True


def oom_evidence(targets: list[GroupTarget], pods: worker_pods.WorkerPods | None) -> tuple[tuple[str, int], ...]:
    """Per group, the largest memory limit at which one of its workers was OOM-killed: sizing
    runs again whenever this changes."""
    if pods is None:
        return ()
    found = ((t.group.name, pods.largest_oom_kill(_worker_group_of(t))) for t in targets)
    return tuple((name, kill.limit_bytes) for name, kill in found if kill is not None)


async def size_groups(rt: Runtime, body: Mapping[str, Any], spec: ScalableWorkflowSpec, targets: list[GroupTarget],
                      advisor: Any, model_version: str | None,
                      pods: worker_pods.WorkerPods | None = None) -> SizingResult:
    """Recommend per group and, where the resource policy says so, write the pod templates.

    A group with a worker the kernel OOM-killed at a limit the recommendation does not exceed
    gets the advisor's answer for the retry of a run killed at that limit (``failed_memory``):
    the worker's limit proved too small, whatever the model has not learned yet."""
    result = SizingResult()
    namespace = body["metadata"]["namespace"]
    key = _workflow_key(body)
    previous = {g.get("name"): g for g in ((body.get("status") or {}).get("groups") or []) if isinstance(g, Mapping)}
    now = time.time()
    generation = int(body["metadata"].get("generation") or 0)
    applied, recommend_only, problems = [], [], []
    for target in targets:
        group = target.group
        try:
            rec = advisor.recommend(group.task, input_features=_features(group))
            kill, new_kill = _oom_kill(target, pods, previous.get(group.name), model_version, now)
            if kill is not None:
                result.oom_kills[group.name] = kill
            killed_at = parse_memory(kill["memory"]) if kill is not None else 0
            if killed_at and killed_at >= rec.memory_bytes:
                rec = advisor.recommend(group.task, input_features=_features(group), failed_memory=killed_at)
                if new_kill:
                    result.events.append(("WorkerOOMKilled", "Warning", (
                        f"group {group.name!r}: worker pod {kill['pod']} was OOM-killed at its limit {kill['memory']}, "
                        f"not above the recommendation; new workers are sized for the retry: {format_memory(rec.memory_bytes)}")))
        except Exception as exc:  # noqa: BLE001 - an advisor failure is reported, not fatal
            problems.append(f"group {group.name!r}: the advisor failed: {type(exc).__name__}: {exc}")
            continue
        policy = group.resourcePolicy
        cpus = rec.cpus_exact if getattr(rec, "cpus_exact", None) else rec.cpus
        try:
            group_sized = sizing.clamp(float(cpus), float(rec.memory_bytes), policy.minAllowed, policy.maxAllowed)
        except sizing.SizingError as exc:
            problems.append(f"group {group.name!r}: {exc}")
            continue
        basis = rec.basis + ("; " + "; ".join(group_sized.bounded_by) if group_sized.bounded_by else "")
        result.recommendations[group.name] = {
            "cpu": group_sized.cpu, "memory": group_sized.memory, "confidence": round(float(rec.confidence), 4),
            "method": rec.method, "basis": basis[:1000], "modelVersion": getattr(rec, "model_version", None) or model_version,
            **sizing.memory_bounds(getattr(rec, "interval", None), group_sized, policy.minAllowed, policy.maxAllowed),
            "uncappedTarget": {"cpu": format_cpu(float(cpus)), "memory": exact_memory(int(rec.memory_bytes))},
        }
        m = rt.metrics
        labels = (namespace, body["metadata"]["name"], group.name)
        m.recommended_cpu.labels(*labels).set(group_sized.cpus)
        m.recommended_memory.labels(*labels).set(group_sized.memory_bytes)
        m.confidence.labels(*labels).set(float(rec.confidence))
        if rec.method == "default":
            problems.append(f"group {group.name!r}: no history for task {group.task!r} yet; the template is left alone")
            continue
        templates = [(target.kind, target.name, target.obj)]
        if target.kind == "DaskCluster":
            # New default-group workers are built from the DaskWorkerGroup <cluster>-default, whose pod
            # spec dask-kubernetes does not update from the DaskCluster: it is sized too, on its own terms.
            default_name = default_worker_group_name(target.name)
            default_group = await rt.kube.get("DaskWorkerGroup", namespace, default_name)
            if default_group is None:
                problems.append(f"group {group.name!r}: DaskWorkerGroup {default_name!r} is not created yet; retrying")
            else:
                templates.append(("DaskWorkerGroup", default_name, default_group))
        written: tuple[str, str] | None = None
        held_because: list[str] = []
        failed = False
        for kind, obj_name, obj in templates:
            try:
                _, container = find_container(worker_pod_spec(obj), policy.containerName)
                controlled = policy.controlledValues
                here = sizing.under_limits(group_sized, container, controlled)
                ok, why = sizing.should_apply(policy.mode, container, here, SizedMark.read(obj, key), generation,
                                              model_version, oom_killed_at=killed_at or None)
                if not ok:
                    held_because.append(why)
                    continue
                change = sizing.describe_change(container, here, rec.basis)
                ops = sizing.template_patch(obj, policy.containerName, here, key, generation, model_version, controlled)
                await rt.kube.json_patch(kind, namespace, obj_name, ops)
                written = written or (change, why)
            except TemplateError as exc:
                problems.append(f"group {group.name!r}: {kind} {obj_name!r}: {exc}")
                failed = True
            except Conflict as exc:
                problems.append(f"group {group.name!r}: the template changed while sizing ({exc}); retrying")
                failed = True
            if failed:
                break
        if failed:
            continue
        if written is None:
            (recommend_only if policy.mode == "Off" else applied).append(f"{group.name}: {held_because[0]}")
            continue
        change, why = written
        applied.append(f"{group.name}: {change}")
        result.events.append(("Resized", "Normal", f"group {group.name!r} ({policy.mode}): {change}; {why}. Running workers keep their resources; new workers get these."))
    if problems:
        result.conditions.append({"type": "Sized", "status": False, "reason": "SizingIncomplete", "message": "; ".join(problems)[:2000]})
    elif recommend_only and not applied:
        result.conditions.append({"type": "Sized", "status": False, "reason": "RecommendOnly", "message": "; ".join(recommend_only)[:2000]})
    else:
        result.conditions.append({"type": "Sized", "status": True, "reason": "Sized", "message": ("; ".join(applied + recommend_only) or "sized")[:2000]})
    return result


def _merge_groups(spec: ScalableWorkflowSpec, previous: list[dict[str, Any]], *updates: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    old = {g.get("name"): dict(g) for g in previous or []}
    out = []
    for group in spec.workerGroups:
        entry = old.get(group.name, {"name": group.name})
        entry["name"] = group.name
        for update in updates:
            entry.update(update.get(group.name) or {})
        out.append(entry)
    return out


def _summary(groups: list[dict[str, Any]]) -> dict[str, Any]:
    first = groups[0] if groups else {}
    rec = first.get("recommendation") or {}
    confidence = rec.get("confidence")
    return {
        "cpu": rec.get("cpu"),
        "memory": rec.get("memory"),
        "confidence": f"{confidence:.2f}" if isinstance(confidence, (int, float)) else None,
        "currentWorkers": sum(int(g.get("currentReplicas") or 0) for g in groups),
        "desiredWorkers": sum(int(g.get("desiredReplicas") if g.get("desiredReplicas") is not None else g.get("currentReplicas") or 0) for g in groups),
    }


class WorkflowLoop:
    """The daemon body for one ScalableWorkflow."""

    def __init__(self, rt: Runtime, namespace: str, name: str) -> None:
        self.rt = rt
        self.namespace = namespace
        self.name = name
        self.scaler = None
        self.scaler_key: tuple | None = None
        self.history: ScalingHistory | None = None
        self.sized_key: tuple | None = None
        self.sized_at = 0.0
        self.observed_at = 0.0
        self.errors = 0
        self.hold_recorded: dict[str, float] = {}
        self.worker_pods = worker_pods.WorkerPodsCheck(rt.kube)
        self.status_writes = StatusWrites()

    async def _prometheus(self, namespace: str, cluster: str, spec: ScalableWorkflowSpec, group: str | None) -> QueueMetrics:
        client = self.rt.prometheus_for(spec)
        if client is None:
            return await no_prometheus(namespace, cluster, spec, group)
        batcher = self.rt.queue_batcher
        if batcher is not None and group is None and batchable(spec.scaling.prometheus.queries, DEFAULT_QUERIES):
            # the default queries of every workflow due now, in one grouped query per metric
            return await batcher.get(client.url, client.timeout, namespace, cluster)
        return await client.queue_metrics(spec.scaling.prometheus.queries, cluster, namespace, group or "default")

    async def _scheduler(self, namespace: str, cluster: str) -> QueueMetrics:
        client = self.rt.scheduler_for(namespace, cluster)
        if client is None:
            raise MetricsUnavailable("SchedulerUnavailable", "no scheduler URL template configured")
        return await client.queue_metrics()

    async def _record(self, namespace: str, workflow: str, decisions: list[Any], now: float) -> None:
        # every change is recorded; a hold at most once a minute per tag (500 workflows holding
        # every 15 s would otherwise write gigabytes a day of "nothing to do")
        tick = time.monotonic()
        keep = []
        for decision in decisions:
            if decision.action != "hold" or tick - self.hold_recorded.get(decision.tag, -1e9) >= HOLD_RECORD_INTERVAL_S:
                keep.append(decision)
                if decision.action == "hold":
                    self.hold_recorded[decision.tag] = tick
        if not keep:
            return
        decisions = keep
        try:
            await asyncio.to_thread(self.rt.recorder.decisions, namespace, workflow, decisions, now)
        except OSError as exc:
            log.warning("cannot record decisions of %s/%s: %s", namespace, workflow, exc)

    async def run(self, stopped: Any) -> None:
        """Iterate until ``stopped`` (kopf's daemon stopper, or an asyncio.Event in tests)."""
        wake = self.rt.wakeup("ScalableWorkflow", self.namespace, self.name)
        first = True
        while not _is_set(stopped):
            delay = await self.iterate()
            if delay is None:
                return
            if first:
                # daemons of many workflows start together; spread their polls over the interval
                delay *= random.uniform(0.5, 1.0)
                first = False
            wake.clear()
            try:
                await asyncio.wait_for(_either(stopped, wake), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def iterate(self, now: float | None = None) -> float | None:
        """One reconcile; returns seconds until the next, or None when the object is gone."""
        rt = self.rt
        started = time.monotonic()
        now = time.time() if now is None else now
        rt.metrics.reconciles.labels("ScalableWorkflow").inc()
        try:
            body = await rt.kube.get("ScalableWorkflow", self.namespace, self.name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            return await self._reconcile(body, now, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad iteration must never end the loop
            self.errors += 1
            reason = type(exc).__name__
            rt.metrics.reconcile_errors.labels("ScalableWorkflow", reason).inc()
            log.exception("reconcile of ScalableWorkflow %s/%s failed", self.namespace, self.name)
            try:
                body = await rt.kube.get("ScalableWorkflow", self.namespace, self.name)
                if body is None:
                    return None
                previous = body.get("status") or {}
                conditions = set_condition(previous.get("conditions"), "Ready", False, "ReconcileError",
                                           f"{reason}: {exc}"[:1000], now=now)
                if any(changed(previous, {"conditions": conditions})):
                    await rt.kube.patch_status("ScalableWorkflow", self.namespace, self.name, {"conditions": conditions})
            except Exception:  # noqa: BLE001
                pass
            return min(300.0, 5.0 * 2 ** min(self.errors, 6))

    async def _reconcile(self, body: dict[str, Any], now: float, started: float) -> float:
        rt = self.rt
        namespace, name = self.namespace, self.name
        generation = int(body["metadata"].get("generation") or 0)
        status = dict(body.get("status") or {})
        try:
            spec = ScalableWorkflowSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as exc:
            conditions = set_condition(status.get("conditions"), "Ready", False, "InvalidSpec", str(exc)[:1000], generation=generation, now=now)
            invalid = {"conditions": conditions, "observedGeneration": generation}
            if any(changed(status, invalid)):
                await rt.kube.patch_status("ScalableWorkflow", namespace, name, invalid)
            return 60.0
        self.errors = 0
        choice = await rt.advisors.for_workflow(namespace, spec)
        updates: list[dict[str, Any]] = [choice.condition]
        events: list[tuple[str, str, str]] = []

        scaler_key = (generation, choice.version)
        if self.scaler is None or scaler_key != self.scaler_key:
            self.scaler = make_scaler(spec, choice.learned)
            self.scaler_key = scaler_key

        cluster, targets, problems = await resolve_targets(rt.kube, namespace, spec)
        pods = None
        if cluster is not None:
            pods = await self.worker_pods.read(namespace, spec.clusterRef.name,
                                               {g.resourcePolicy.containerName for g in spec.workerGroups})
        sizing_result = SizingResult()
        sized_now = False  # sizing may patch the templates: the poll must then read them again
        sizing_key = (generation, choice.version, oom_evidence(targets, pods))
        if paused(body):
            # no template writes; sized again as soon as the annotation is gone
            self.sized_key = None
            updates.append({"type": "Sized", "status": False, "reason": "Paused",
                            "message": paused_message(body, "worker templates are left alone")})
        elif cluster is not None and (sizing_key != self.sized_key or now - self.sized_at >= rt.config.sizing_interval_s
                                      or (get_condition(status.get("conditions"), "Sized") or {}).get("reason") == "Paused"):
            sizing_result = await size_groups(rt, body, spec, targets, choice.advisor, choice.version, pods)
            sized_now = True
            if not any(c["type"] == "Sized" and c["status"] is False and c["reason"] == "SizingIncomplete" and "retrying" in c["message"] for c in sizing_result.conditions):
                self.sized_key, self.sized_at = sizing_key, now
            updates += sizing_result.conditions
            events += sizing_result.events

        if pods is not None:
            scheduled = worker_pods.scheduled_condition(pods)
            updates.append(scheduled)
            if worker_pods.turned_false(status.get("conditions"), scheduled):
                events.append((worker_pods.EVENT_REASON, "Warning", scheduled["message"]))

        deps = PollDeps(kube=rt.kube, prometheus=self._prometheus, scheduler=self._scheduler, record=self._record,
                        autoscalers=rt.autoscalers)
        poll = await poll_once(deps, body, self.scaler, now, self.history,
                               resolved=None if sized_now else (cluster, targets, problems))
        held = next((c["reason"] for c in poll.conditions if c["type"] == "Scaling" and c["status"] is False), None)
        rt.metrics.scaling_state(namespace, name, held)
        if poll.history is not None:
            self.history = poll.history
        updates += poll.conditions
        events += poll.events
        for decision in poll.decisions:
            group = next((g.name for g in spec.workerGroups if (g.tag or g.name) == decision.tag), decision.tag)
            rt.metrics.decisions.labels(namespace, name, group, decision.action).inc()
            rt.metrics.desired_workers.labels(namespace, name, group).set(decision.to_workers)

        if cluster is None:
            updates.append({"type": "Ready", "status": False, "reason": "ClusterNotFound", "message": problems[0]})
        elif problems:
            updates.append({"type": "Ready", "status": False, "reason": "WorkerGroupNotFound", "message": "; ".join(problems)})
        else:
            updates.append({"type": "Ready", "status": True, "reason": "Reconciled", "message": f"DaskCluster {spec.clusterRef.name!r} and its groups found"})

        recommendations = {g: {"recommendation": r} for g, r in sizing_result.recommendations.items()}
        kills = {g: {"lastOOMKill": k} for g, k in sizing_result.oom_kills.items()}
        groups = _merge_groups(spec, status.get("groups") or [], recommendations, kills, poll.groups)
        failures = poll.metrics_failures if poll.metrics_failures is not None else status.get("metricsFailures")
        new_status = {
            **_summary(groups),
            **({"metricsFailures": failures} if failures is not None else {}),
            "groups": groups,
            "observedGeneration": generation,
            "conditions": merge_conditions(status.get("conditions"), updates, generation=generation, now=now),
        }
        threshold = spec.scaling.fallback.failureThreshold if spec.scaling.fallback is not None else 1
        tick = time.monotonic()
        if self.status_writes.due(status, new_status, tick, threshold):
            await rt.kube.patch_status("ScalableWorkflow", namespace, name, new_status)
            self.status_writes.wrote(tick)
            rt.metrics.status_writes.labels("written").inc()
        else:
            rt.metrics.status_writes.labels("unchanged").inc()
        for reason, type_, message in events:
            await rt.kube.event(body, reason, message, type_)
        if poll.metrics is not None and now - self.observed_at >= rt.config.observe_interval_s and cluster is not None:
            self.observed_at = now
            await self._observe_workers(spec, targets)
        rt.metrics.poll_seconds.observe(time.monotonic() - started)
        return float(spec.scaling.pollIntervalSeconds)

    async def _observe_workers(self, spec: ScalableWorkflowSpec, targets: list[GroupTarget]) -> None:
        """Worker memory per worker from Prometheus into telemetry; failures only logged."""
        try:
            client = self.rt.prometheus_for(spec)
        except MetricsUnavailable:
            return  # the scaling poll reports it (PrometheusAvailable=False)
        if client is None:
            return
        batcher = self.rt.queue_batcher
        grouped = batcher is not None and batchable(spec.scaling.prometheus.queries, DEFAULT_QUERIES, ("workerMemory",))
        for target in targets:
            try:
                if grouped:
                    memory = await batcher.worker_memory(client.url, client.timeout, self.namespace, spec.clusterRef.name)
                else:
                    memory = await client.worker_memory(spec.scaling.prometheus.queries, spec.clusterRef.name, self.namespace,
                                                        target.group.name)
            except MetricsUnavailable as exc:
                # the reason and the operator's own wording only (issue 15: no read-back)
                log.info("worker memory of %s/%s not recorded: %s (%s)", self.namespace, self.name, exc.reason, exc.message)
                return
            if memory:
                tag = target.group.tag or target.group.name
                await asyncio.to_thread(self.rt.recorder.worker_memory, self.namespace, self.name, tag, memory)


async def cleanup_workflow(rt: Runtime, body: Mapping[str, Any]) -> list[str]:
    """On deletion: leave the DaskCluster and its workers alone, remove the operator's marks.

    The operator creates no Kubernetes objects for a workflow (Events expire by themselves);
    what it leaves on others are the ``scalable.dev/sized`` and ``scalable.dev/last-scale``
    annotations on the DaskCluster and DaskWorkerGroups, which are removed. The resources it wrote stay: they are the cluster's
    configuration now. Telemetry stays too (see :mod:`storage`). Returns what was cleaned.
    """
    namespace = body["metadata"]["namespace"]
    key = _workflow_key(body)
    cleaned = []
    try:
        spec = ScalableWorkflowSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError:
        return cleaned
    names = [("DaskCluster", spec.clusterRef.name), ("DaskWorkerGroup", default_worker_group_name(spec.clusterRef.name))]
    names += [("DaskWorkerGroup", g.name) for g in spec.workerGroups if g.name != DEFAULT_GROUP]
    for kind, obj_name in names:
        obj = await rt.kube.get(kind, namespace, obj_name)
        ours = {name: None for name in marks_of(obj, key)}
        if not ours:
            continue
        try:
            await rt.kube.merge_patch(kind, namespace, obj_name, {"metadata": {"annotations": ours}})
            cleaned.append(f"{kind}/{obj_name}")
        except KubeError as exc:
            log.warning("could not remove the sizing annotation from %s %s: %s", kind, obj_name, exc)
    rt.recorder.forget(namespace, body["metadata"]["name"])
    rt.metrics.forget_workflow(namespace, body["metadata"]["name"], [g.name for g in spec.workerGroups])
    rt.wakeups.pop(("ScalableWorkflow", namespace, body["metadata"]["name"]), None)
    return cleaned


def _is_set(flag: Any) -> bool:
    return bool(flag.is_set()) if hasattr(flag, "is_set") else bool(flag)


async def _either(stopped: Any, wake: asyncio.Event) -> None:
    """Return when the daemon is stopped or woken (a spec change)."""
    async def wait_for(awaitable: Any) -> None:
        await awaitable

    waiters = [asyncio.ensure_future(wake.wait())]
    if hasattr(stopped, "wait"):
        # kopf's stopper returns an awaitable promise, an asyncio.Event a coroutine: both await
        waiters.append(asyncio.ensure_future(wait_for(stopped.wait())))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
