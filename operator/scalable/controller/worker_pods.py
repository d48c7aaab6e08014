"""Whether the worker pods of a DaskCluster were accepted by the cluster: condition ``WorkersScheduled``.

Sizing writes requests = limits into the worker template, and nothing on the API server checks
them against the nodes: a limit above every node's allocatable memory is stored, dask-kubernetes
makes a Deployment from it, and its pod stays Pending (``PodScheduled=False``, reason
``Unschedulable``, "0/1 nodes are available: 1 Insufficient memory") without anyone telling the
user. The kubelet can refuse a pod later too (a container that cannot be created, a pod it
does not admit). This module reads the pods dask-kubernetes made (by its labels) and turns what
it finds into a condition on the ScalableWorkflow that names the pods, the scheduler's or
kubelet's words, and the limits the worker container got, so ``kubectl describe`` says why
workers never arrive and which bound (``resourcePolicy.maxAllowed``) to set.

Reading pods is best effort: a refusal (403 when the operator's RBAC lacks ``pods: list``) or
any other failure makes the condition ``Unknown`` with the reason and never fails the reconcile.
After a 403 the pods are not asked for again for :data:`FORBIDDEN_RETRY_S`: every refused
request makes kr8s re-authenticate and rebuild the HTTP session all workflows share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scalable.controller.conditions import get_condition
from scalable.controller.kube import KubeClient, KubeError
from scalable.units import QuantityError, parse_memory

__all__ = [
    "CONDITION",
    "EVENT_REASON",
    "OOMKill",
    "FORBIDDEN_RETRY_S",
    "RefusedPod",
    "WorkerPods",
    "WorkerPodsCheck",
    "oom_kill",
    "refusal",
    "scheduled_condition",
    "summarise",
    "turned_false",
    "worker_selector",
]

CONDITION = "WorkersScheduled"
EVENT_REASON = "WorkersNotScheduled"
FORBIDDEN_RETRY_S = 300.0
#: container waiting reasons with which the kubelet refuses what the pod spec asks for (as
#: opposed to ContainerCreating, an image being pulled, or a crash of the worker itself)
REFUSED_WAITING_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
#: pod reasons of a kubelet's admission refusal (phase Failed before any container ran)
REFUSED_POD_REASONS = frozenset({"OutOfcpu", "OutOfmemory", "OutOfpods", "UnexpectedAdmissionError"})
MAX_MESSAGE = 2000
#: dask-kubernetes' label naming a worker pod's DaskWorkerGroup
WORKER_GROUP_LABEL = "dask.org/workergroup-name"

log = logging.getLogger("scalable.controller.worker_pods")


def worker_selector(cluster: str) -> str:
    """dask-kubernetes' labels on every worker pod of ``cluster``, whichever group it belongs to."""
    return f"dask.org/cluster-name={cluster},dask.org/component=worker"


@dataclass(frozen=True)
class RefusedPod:
    """A worker pod the scheduler or the kubelet refused; ``limits`` as the message shows them."""

    name: str
    reason: str
    message: str
    limits: str


@dataclass(frozen=True)
class OOMKill:
    """A worker container the kernel killed for memory, at the memory limit it had."""

    pod: str
    group: str
    limit_bytes: int


@dataclass(frozen=True)
class WorkerPods:
    """What the worker pods of one cluster look like; ``error`` says why they could not be read."""

    total: int = 0
    scheduled: int = 0
    refused: tuple[RefusedPod, ...] = ()
    error: str | None = None
    error_reason: str | None = None
    oom_kills: tuple[OOMKill, ...] = ()

    def largest_oom_kill(self, group: str) -> OOMKill | None:
        """The OOM kill at the largest limit among the workers of DaskWorkerGroup ``group``."""
        kills = [k for k in self.oom_kills if k.group == group]
        return max(kills, key=lambda k: k.limit_bytes) if kills else None


def _limits(pod: Mapping[str, Any], container_names: Collection[str]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") in container_names), containers[0] if containers else {})
    resources = container.get("resources") or {}
    values = resources.get("limits") or resources.get("requests") or {}
    shown = [f"{key} {values[key]}" for key in ("memory", "cpu") if key in values]
    return ", ".join(shown) or "no limits"


def refusal(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when the scheduler or the kubelet refused ``pod``, else None.

    A pod that is merely not scheduled yet (no PodScheduled condition, or one that is False for
    another reason, such as scheduling gates) is not refused.
    """
    status = pod.get("status") or {}
    if status.get("phase") == "Failed" and status.get("reason") in REFUSED_POD_REASONS:
        return status["reason"], status.get("message") or ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return "Unschedulable", condition.get("message") or ""
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in REFUSED_WAITING_REASONS:
            return waiting["reason"], f"container {container.get('name')!r}: {waiting.get('message') or ''}".rstrip(": ")
    return None


def oom_kill(pod: Mapping[str, Any], container_names: Collection[str]) -> OOMKill | None:
    """The worker container's OOM kill (now or its last restart) and the limit it had, else None.
    A container without a readable memory limit says nothing about how much memory is enough."""
    statuses = {c.get("name"): c for c in (pod.get("status") or {}).get("containerStatuses") or []}
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") not in container_names:
            continue
        found = statuses.get(container.get("name")) or {}
        ended = [((found.get(k) or {}).get("terminated") or {}) for k in ("state", "lastState")]
        if not any(t.get("reason") == "OOMKilled" for t in ended):
            continue
        resources = container.get("resources") or {}
        limit = (resources.get("limits") or {}).get("memory") or (resources.get("requests") or {}).get("memory")
        try:
            limit_bytes = parse_memory(limit) if limit is not None else None
        except QuantityError:
            limit_bytes = None
        if limit_bytes:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            return OOMKill(pod["metadata"]["name"], str(labels.get(WORKER_GROUP_LABEL, "")), limit_bytes)
    return None


def _is_scheduled(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def summarise(pods: Iterable[Mapping[str, Any]], container_names: Collection[str]) -> WorkerPods:
    """The worker pods of a cluster, pods being deleted left out."""
    live = sorted((p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")),
                  key=lambda p: p["metadata"]["name"])
    refused = []
    for pod in live:
        found = refusal(pod)
        if found is not None:
            refused.append(RefusedPod(pod["metadata"]["name"], found[0], found[1], _limits(pod, container_names)))
    kills = tuple(k for k in (oom_kill(p, container_names) for p in live) if k is not None)
    return WorkerPods(total=len(live), scheduled=sum(1 for p in live if _is_scheduled(p)), refused=tuple(refused),
                      oom_kills=kills)


def _too_big(pod: RefusedPod) -> bool:
    return pod.reason in ("OutOfmemory", "OutOfcpu") or (
        pod.reason == "Unschedulable" and ("Insufficient memory" in pod.message or "Insufficient cpu" in pod.message))


def _hint(refused: Iterable[RefusedPod]) -> str:
    if any(_too_big(pod) for pod in refused):
        return ("; the resources come from the workflow's sizing: set resourcePolicy.maxAllowed within the nodes' "
                "allocatable memory and cpu, or add larger nodes. New workers get the new size; a Pending worker stays "
                "until its Deployment is deleted (dask-kubernetes retires workers through the scheduler, which never saw it)")
    return ""


def scheduled_condition(pods: WorkerPods) -> dict[str, Any]:
    """The ``WorkersScheduled`` condition for what :func:`summarise` (or a failed read) found.

    Refused pods with the same reason, message and limits are named together, so a group of
    twenty identical Pending workers is one line, not twenty.
    """
    if pods.error is not None:
        return {"type": CONDITION, "status": "Unknown", "reason": pods.error_reason or "PodsUnreadable",
                "message": f"cannot list the worker pods: {pods.error}"[:MAX_MESSAGE]}
    if not pods.refused:
        pending = pods.total - pods.scheduled
        if pods.total == 0:
            message = "no worker pods"
        else:
            message = f"{pods.scheduled} of {pods.total} worker pods scheduled" + (
                f", {pending} not yet (none refused)" if pending else "")
        return {"type": CONDITION, "status": True, "reason": "Scheduled" if pods.total else "NoWorkerPods", "message": message}
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for pod in pods.refused:
        grouped.setdefault((pod.reason, pod.message, pod.limits), []).append(pod.name)
    parts = [f"{', '.join(names)} ({limits}): {reason}: {message}".rstrip(": ")
             for (reason, message, limits), names in grouped.items()]
    reasons = {pod.reason for pod in pods.refused}
    hint = _hint(pods.refused)
    listed = f"{len(pods.refused)} of {pods.total} worker pods refused: " + "; ".join(parts)
    if len(listed) + len(hint) > MAX_MESSAGE:
        listed = listed[:MAX_MESSAGE - len(hint) - 3] + "..."
    return {"type": CONDITION, "status": False, "reason": reasons.pop() if len(reasons) == 1 else "WorkersRefused",
            "message": listed + hint}


def turned_false(previous: Iterable[Mapping[str, Any]] | None, condition: Mapping[str, Any]) -> bool:
    """Whether ``condition`` is False where the workflow's status did not already say so
    (a restarted operator reads the previous status, so it does not warn twice)."""
    before = get_condition(previous, condition["type"])
    return condition["status"] is False and (before is None or before.get("status") != "False")


class WorkerPodsCheck:
    """Reads one workflow's worker pods each reconcile; holds back for a while after a 403."""

    def __init__(self, kube: KubeClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.clock = clock
        self.forbidden_until = 0.0
        self.forbidden: WorkerPods | None = None

    async def read(self, namespace: str, cluster: str, container_names: Collection[str]) -> WorkerPods:
        if self.forbidden is not None and self.clock() < self.forbidden_until:
            return self.forbidden
        try:
            items = await self.kube.list("Pod", namespace, label_selector=worker_selector(cluster))
        except KubeError as exc:
            if exc.code == 403:
                self.forbidden_until = self.clock() + FORBIDDEN_RETRY_S
                self.forbidden = WorkerPods(error=f"{exc} (the operator needs `list` on pods; see the chart's RBAC)",
                                            error_reason="Forbidden")
                log.warning("cannot list the worker pods of %s/%s, asking again in %.0f s: %s", namespace, cluster,
                            FORBIDDEN_RETRY_S, exc)
                return self.forbidden
            return WorkerPods(error=str(exc), error_reason="PodsUnreadable")
        except Exception as exc:  # noqa: BLE001 - a failed read is reported in the condition, never fatal
            return WorkerPods(error=f"{type(exc).__name__}: {exc}", error_reason="PodsUnreadable")
        self.forbidden = None
        return summarise(items, container_names)

    async def condition(self, namespace: str, cluster: str, container_names: Collection[str]) -> dict[str, Any]:
        return scheduled_condition(await self.read(namespace, cluster, container_names))
