"""The shape of dask-kubernetes' objects as the controller reads and writes them, in one place.

A DaskCluster keeps its default worker group under ``spec.worker``; a DaskWorkerGroup has the
same ``spec.worker`` and names its cluster in ``spec.cluster``. Both hold the replicas at
``spec.worker.replicas`` and the worker pod spec at ``spec.worker.spec``. dask-kubernetes
builds the default group's workers from a DaskWorkerGroup ``<cluster>-default`` it creates
from the DaskCluster and does not update afterwards, so sizing the default group writes both.

The operator leaves two annotations on these objects, each a JSON object naming the workflow
that wrote it, encoded and decoded here only: :class:`SizedMark` (which workflow sized the
template, at which spec generation, with what) and :class:`LastScale` (the last replica
change, written in the same patch as the replicas).

Container resources are read one way (:class:`ContainerResources`): what a container is
guaranteed is its request, which Kubernetes defaults to the limit; the threads Dask starts
follow the CPU it may use, its limit, and fall back to the request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from scalable.controller.kube import KubeClient
from scalable.controller.resources import ScalableWorkflowSpec, WorkerGroup
from scalable.controller.timestamps import parse_time, precise_time
from scalable.controller.quantities import QuantityError, parse_cpu, parse_memory

__all__ = [
    "ANNOTATION_LAST_SCALE",
    "ANNOTATION_PAUSED",
    "ANNOTATION_SIZED",
    "ContainerResources",
    "DEFAULT_GROUP",
    "GroupTarget",
    "LastScale",
    "SizedMark",
    "TemplateError",
    "WORKER_POD_SPEC",
    "annotation_pointer",
    "default_worker_group_name",
    "find_container",
    "paused",
    "paused_message",
    "replicas",
    "resolve_targets",
    "worker_pod_spec",
]

#: the group of the DaskCluster itself; every other group is a DaskWorkerGroup of that name
DEFAULT_GROUP = "default"
#: JSON pointer of the worker pod spec in a DaskCluster or DaskWorkerGroup
WORKER_POD_SPEC = "/spec/worker/spec"
ANNOTATION_SIZED = "scalable.dev/sized"
ANNOTATION_LAST_SCALE = "scalable.dev/last-scale"
#: on a ScalableWorkflow (set by a person, read by the operator): "true" holds scaling and sizing,
#: as KEDA's autoscaling.keda.sh/paused does; removing it resumes
ANNOTATION_PAUSED = "scalable.dev/paused"


class TemplateError(ValueError):
    """The worker pod template cannot be read as sizing needs it (no such container, bad quantities)."""


def _worker(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((obj or {}).get("spec") or {}).get("worker") or {}


def replicas(obj: Mapping[str, Any] | None) -> int:
    return int(_worker(obj).get("replicas") or 0)


def worker_pod_spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _worker(obj).get("spec") or {}


def default_worker_group_name(cluster: str) -> str:
    """The DaskWorkerGroup dask-kubernetes creates for a DaskCluster's own workers."""
    return f"{cluster}-{DEFAULT_GROUP}"


def find_container(pod_spec: Mapping[str, Any] | None, name: str) -> tuple[int, Mapping[str, Any]]:
    """(index, container) of the container called ``name``; the error names the ones there are."""
    containers = list((pod_spec or {}).get("containers") or [])
    for index, container in enumerate(containers):
        if container.get("name") == name:
            return index, container
    names = ", ".join(repr(c.get("name")) for c in containers) or "none"
    raise TemplateError(
        f"the worker pod template has no container named {name!r} (containers: {names}); set resourcePolicy.containerName"
    )


def paused(obj: Mapping[str, Any] | None) -> bool:
    """Whether the object carries ``scalable.dev/paused: "true"`` (any case, surrounding blanks
    ignored); any other value, or none, is not paused."""
    value = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PAUSED)
    return isinstance(value, str) and value.strip().lower() == "true"


def paused_message(obj: Mapping[str, Any], what: str) -> str:
    """The condition message of a paused workflow: what is held, and how to resume."""
    name = (obj.get("metadata") or {}).get("name", "NAME")
    return (f'annotation {ANNOTATION_PAUSED}: "true": {what}; to resume, remove it: '
            f"kubectl annotate scalableworkflow {name} {ANNOTATION_PAUSED}-")


def annotation_pointer(name: str) -> str:
    """JSON pointer of the annotation ``name`` (RFC 6901 escapes ``~`` and ``/``)."""
    return "/metadata/annotations/" + name.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class ContainerResources:
    """A container's requests and limits, parsed; None where unset."""

    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request: int | None = None
    memory_limit: int | None = None

    @classmethod
    def of(cls, container: Mapping[str, Any] | None) -> "ContainerResources":
        resources = (container or {}).get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        try:
            return cls(
                cpu_request=parse_cpu(requests["cpu"]) if requests.get("cpu") is not None else None,
                cpu_limit=parse_cpu(limits["cpu"]) if limits.get("cpu") is not None else None,
                memory_request=parse_memory(requests["memory"]) if requests.get("memory") is not None else None,
                memory_limit=parse_memory(limits["memory"]) if limits.get("memory") is not None else None,
            )
        except QuantityError as exc:
            raise TemplateError(f"the worker container's resources cannot be read: {exc}") from exc

    @property
    def cpus(self) -> float | None:
        """CPUs the container is guaranteed: its request, which Kubernetes defaults to the limit."""
        return self.cpu_request if self.cpu_request is not None else self.cpu_limit

    @property
    def memory_bytes(self) -> int | None:
        return self.memory_request if self.memory_request is not None else self.memory_limit

    @property
    def threads(self) -> int:
        """Threads a Dask worker starts in it: one per CPU it may use (its limit), at least 1."""
        cpu = self.cpu_limit if self.cpu_limit is not None else self.cpu_request
        return max(1, math.ceil(round(cpu, 6))) if cpu else 1


def _note(obj: Mapping[str, Any] | None, name: str, workflow_key: str) -> dict[str, Any] | None:
    text = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(name)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("workflow") != workflow_key:
        return None
    return data


def _encode(fields: Mapping[str, Any]) -> str:
    return json.dumps(dict(fields), sort_keys=True)


@dataclass(frozen=True)
class SizedMark:
    """``scalable.dev/sized``: this workflow sized the template at ``generation`` with cpu and
    memory, from the AdvisorModel version ``model`` (None: before a model was trained)."""

    workflow: str
    generation: int | None
    cpu: str | None = None
    memory: str | None = None
    model: str | None = None

    def encode(self) -> str:
        return _encode(asdict(self))

    @classmethod
    def read(cls, obj: Mapping[str, Any] | None, workflow_key: str) -> "SizedMark | None":
        data = _note(obj, ANNOTATION_SIZED, workflow_key)
        if data is None:
            return None
        generation = data.get("generation")
        model = data.get("model")
        return cls(workflow_key, generation if isinstance(generation, int) else None, data.get("cpu"), data.get("memory"),
                   model if isinstance(model, str) else None)


@dataclass(frozen=True)
class LastScale:
    """``scalable.dev/last-scale``: this workflow changed the replicas from ``from_workers`` to
    ``to_workers`` at ``time`` (epoch seconds), written in the same patch as the replicas."""

    workflow: str
    time: float
    from_workers: int
    to_workers: int

    @property
    def action(self) -> str | None:
        if self.to_workers == self.from_workers:
            return None
        return "scale_up" if self.to_workers > self.from_workers else "scale_down"

    def encode(self) -> str:
        return _encode({"workflow": self.workflow, "time": precise_time(self.time), "from": self.from_workers, "to": self.to_workers})

    @classmethod
    def read(cls, obj: Mapping[str, Any] | None, workflow_key: str) -> "LastScale | None":
        data = _note(obj, ANNOTATION_LAST_SCALE, workflow_key)
        time = parse_time((data or {}).get("time"))
        if data is None or time is None:
            return None
        frm, to = data.get("from"), data.get("to")
        if not (isinstance(frm, int) and isinstance(to, int)):
            frm = to = 0  # direction unknown: holds every change for a cooldown
        return cls(workflow_key, time, frm, to)


def marks_of(obj: Mapping[str, Any] | None, workflow_key: str) -> list[str]:
    """The operator's annotations on ``obj`` that ``workflow_key`` wrote."""
    return [name for name in (ANNOTATION_SIZED, ANNOTATION_LAST_SCALE) if _note(obj, name, workflow_key) is not None]


@dataclass
class GroupTarget:
    """A worker group of a workflow and the object its size lives in (DaskCluster or DaskWorkerGroup)."""

    group: WorkerGroup
    kind: str
    name: str
    obj: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.group.tag or self.group.name

    @property
    def replicas(self) -> int:
        return replicas(self.obj)

    @property
    def resource_version(self) -> str:
        return self.obj["metadata"]["resourceVersion"]

    def last_scale(self, workflow_key: str) -> LastScale | None:
        return LastScale.read(self.obj, workflow_key)

    def threads_per_worker(self) -> int:
        """Threads each worker of the group runs; 1 when the container or its CPU is not set."""
        try:
            _, container = find_container(worker_pod_spec(self.obj), self.group.resourcePolicy.containerName)
            return ContainerResources.of(container).threads
        except TemplateError:
            return 1


async def resolve_targets(kube: KubeClient, namespace: str, spec: ScalableWorkflowSpec) -> tuple[dict[str, Any] | None, list[GroupTarget], list[str]]:
    """The DaskCluster, the object behind each group, and what is missing (as messages)."""
    cluster_name = spec.clusterRef.name
    cluster = await kube.get("DaskCluster", namespace, cluster_name)
    if cluster is None:
        return None, [], [f"DaskCluster {cluster_name!r} not found in namespace {namespace!r}"]
    targets, problems = [], []
    for group in spec.workerGroups:
        if group.name == DEFAULT_GROUP:
            targets.append(GroupTarget(group, "DaskCluster", cluster_name, cluster))
            continue
        obj = await kube.get("DaskWorkerGroup", namespace, group.name)
        owner = ((obj or {}).get("spec") or {}).get("cluster")
        if obj is None:
            problems.append(f"DaskWorkerGroup {group.name!r} not found in namespace {namespace!r}")
        elif owner != cluster_name:
            problems.append(f"DaskWorkerGroup {group.name!r} belongs to cluster {owner!r}, not {cluster_name!r}")
        else:
            targets.append(GroupTarget(group, "DaskWorkerGroup", group.name, obj))
    return cluster, targets, problems
