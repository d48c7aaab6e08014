"""From a recommendation to the resources of the Dask worker container in a pod template.

Pure functions, so every rule here is unit-tested without a cluster:

* **clamp**: the recommendation is bounded by the group's ``minAllowed``/``maxAllowed`` and by a
  floor below which a Dask worker cannot start (100m CPU, 256Mi memory); each bound that bit is
  named, because the Event must say *why* the template got what it got.
* **requests = limits**: the worker gets Guaranteed QoS. Dask derives its thread count and its
  memory limit from the container's cgroup limits, so limits equal to the recommendation make
  Dask's own memory management (spill, pause, restart at 95 %) agree with the number we learned;
  a limit far above the request would let a worker outgrow its node and be OOM-killed by the
  kernel instead of spilling.
* **controlledValues** ``RequestsOnly`` (as VPA's): only requests are written; the container's
  own limits stay, and a request above one of them is capped at it (a request above its
  limit is refused by the API server). Dask then takes its memory limit from that limit.
* **when to write**: ``Off`` never; ``Initial`` once per workflow generation (the template is
  sized when the workflow is created or its spec changes); ``Auto`` also whenever the
  recommendation moves by more than 10 % (e.g. after a retrain). In every mode only *new*
  workers get the new resources: dask-kubernetes never restarts running workers.
* **the patch** is a JSON patch guarded by a ``test`` of the container's name at its index,
  so a concurrent edit of the container list makes the API server refuse it instead of
  writing resources into the wrong container.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scalable.controller.dask_objects import (
    ANNOTATION_SIZED,
    WORKER_POD_SPEC,
    ContainerResources,
    SizedMark,
    annotation_pointer,
    find_container,
    worker_pod_spec,
)
from scalable.controller.quantities import QuantityError, parse_cpu, parse_memory
from scalable.units import MiB, exact_memory, format_cpu, format_memory, resources_block

__all__ = [
    "MIN_CPU",
    "MIN_MEMORY",
    "Sized",
    "SizingError",
    "clamp",
    "describe_change",
    "memory_bounds",
    "should_apply",
    "template_patch",
    "under_limits",
]

MIN_CPU = 0.1
MIN_MEMORY = 256 * MiB
HYSTERESIS = 0.10


class SizingError(ValueError):
    """The pod template cannot be sized (no such container, unreadable quantities)."""


@dataclass(frozen=True)
class Sized:
    """What the worker container gets, and which bounds changed the recommendation."""

    cpus: float
    memory_bytes: int
    recommended_cpus: float
    recommended_memory_bytes: int
    bounded_by: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cpu(self) -> str:
        return format_cpu(self.cpus)

    @property
    def memory(self) -> str:
        """Exactly :attr:`memory_bytes`, as the container's limit says it."""
        return exact_memory(self.memory_bytes)

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        """The worker container's ``resources`` block (requests = limits, exact memory)."""
        return resources_block(self.cpus, self.memory_bytes)


def _bound(value: Mapping[str, Any] | Any, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(key)
    return getattr(value, key, None)


def clamp(cpus: float, memory_bytes: float, min_allowed: Any = None, max_allowed: Any = None) -> Sized:
    """Bound a recommendation; ``min_allowed``/``max_allowed`` are ResourceBounds or mappings.

    Memory is rounded up to whole MiB and CPU up to whole millicores *before* the upper bound
    is applied, so the result never exceeds ``maxAllowed`` and never prints smaller than
    what was recommended.
    """
    if not (math.isfinite(cpus) and math.isfinite(memory_bytes)) or cpus < 0 or memory_bytes < 0:
        raise SizingError(f"recommendation must be finite and non-negative, got cpus={cpus!r} memory={memory_bytes!r}")
    bounded: list[str] = []
    cpu_value = parse_cpu(format_cpu(cpus)) if cpus > 0 else 0.0
    mem_value = -(-int(memory_bytes) // MiB) * MiB if memory_bytes > 0 else 0
    if cpu_value < MIN_CPU:
        cpu_value = MIN_CPU
        bounded.append(f"cpu raised to the {format_cpu(MIN_CPU)} floor")
    if mem_value < MIN_MEMORY:
        mem_value = MIN_MEMORY
        bounded.append(f"memory raised to the {format_memory(MIN_MEMORY)} floor")
    try:
        lo_cpu = _bound(min_allowed, "cpu")
        hi_cpu = _bound(max_allowed, "cpu")
        lo_mem = _bound(min_allowed, "memory")
        hi_mem = _bound(max_allowed, "memory")
        if lo_cpu is not None and cpu_value < parse_cpu(lo_cpu):
            cpu_value = parse_cpu(lo_cpu)
            bounded.append(f"cpu raised to minAllowed {lo_cpu}")
        if hi_cpu is not None and cpu_value > parse_cpu(hi_cpu):
            cpu_value = parse_cpu(hi_cpu)
            bounded.append(f"cpu capped at maxAllowed {hi_cpu}")
        if lo_mem is not None and mem_value < parse_memory(lo_mem):
            mem_value = parse_memory(lo_mem)
            bounded.append(f"memory raised to minAllowed {lo_mem}")
        if hi_mem is not None and mem_value > parse_memory(hi_mem):
            mem_value = parse_memory(hi_mem)
            bounded.append(f"memory capped at maxAllowed {hi_mem}")
    except QuantityError as exc:
        raise SizingError(f"resourcePolicy bound is not a quantity: {exc}") from exc
    return Sized(cpu_value, int(mem_value), float(cpus), int(memory_bytes), tuple(bounded))


def under_limits(sized: Sized, container: Mapping[str, Any], controlled: str = "RequestsAndLimits") -> Sized:
    """``sized`` for ``container`` under ``controlled``: with ``RequestsOnly`` its requests are
    capped at the limits the container keeps (and each cap is named); unchanged otherwise."""
    if controlled != "RequestsOnly":
        return sized
    current = ContainerResources.of(container)
    cpus, memory, bounded = sized.cpus, sized.memory_bytes, list(sized.bounded_by)
    if current.cpu_limit is not None and cpus > current.cpu_limit:
        cpus = current.cpu_limit
        bounded.append(f"cpu capped at the container's limit {format_cpu(cpus)} (controlledValues RequestsOnly)")
    if current.memory_limit is not None and memory > current.memory_limit:
        memory = current.memory_limit
        bounded.append(f"memory capped at the container's limit {exact_memory(memory)} (controlledValues RequestsOnly)")
    return replace(sized, cpus=cpus, memory_bytes=memory, bounded_by=tuple(bounded))


def resources_for(sized: Sized, container: Mapping[str, Any], controlled: str = "RequestsAndLimits") -> dict[str, Any]:
    """The container's new ``resources`` block: :attr:`Sized.resources` (requests = limits), or
    with ``RequestsOnly`` the requests alone beside the limits the container had."""
    if controlled != "RequestsOnly":
        return sized.resources
    block: dict[str, Any] = {"requests": sized.resources["requests"]}
    limits = ((container or {}).get("resources") or {}).get("limits")
    if limits:
        block["limits"] = dict(limits)
    return block


def memory_bounds(interval: tuple[int, int] | None, target: Sized, min_allowed: Any = None,
                  max_allowed: Any = None) -> dict[str, str]:
    """``lowerBound`` / ``upperBound`` memory of a recommendation, as the VPA's status has them.

    From the advisor's memory interval ``(low, high)`` in bytes (none without one), capped by
    the resource policy as the target is, and widened where needed so that they bracket the
    memory the template gets (rounded up to whole MiB, raised to a floor)."""
    if interval is None:
        return {}
    low, high = (int(v) for v in interval)
    lo_mem, hi_mem = _bound(min_allowed, "memory"), _bound(max_allowed, "memory")
    if lo_mem is not None:
        low, high = max(low, parse_memory(lo_mem)), max(high, parse_memory(lo_mem))
    if hi_mem is not None:
        low, high = min(low, parse_memory(hi_mem)), min(high, parse_memory(hi_mem))
    low, high = min(low, target.memory_bytes), max(high, target.memory_bytes)
    return {"lowerBound": exact_memory(max(0, low)), "upperBound": exact_memory(high)}


def _moved(old: float | None, new: float, tolerance: float) -> bool:
    if old is None or old <= 0:
        return True
    return abs(new - old) / old > tolerance


def should_apply(
    mode: str,
    container: Mapping[str, Any],
    sized: Sized,
    mark: SizedMark | None,
    generation: int,
    model: str | None = None,
    oom_killed_at: int | None = None,
) -> tuple[bool, str]:
    """Whether to write ``sized`` into the template, and why (or why not).

    ``mark`` is this workflow's :class:`SizedMark` on the target object, as written by
    :func:`template_patch` (None when this workflow never sized it); it tells at which
    generation of its spec it did, and from which model version. ``model`` is the version of
    the AdvisorModel behind ``sized`` (None before one is trained). ``Initial`` sizes once per
    generation, and once more when the first trained model replaces what the template was
    sized with before it (``kubectl apply -f examples/`` creates both at once).
    ``oom_killed_at``: a worker with this memory limit was OOM-killed; a template at or below it
    is resized in ``Initial`` and ``Auto`` alike, since the kernel has shown it too small.
    """
    current = ContainerResources.of(container)
    old_cpu, old_mem = current.cpus, current.memory_bytes
    same = old_cpu is not None and old_mem is not None and abs(old_cpu - sized.cpus) < 1e-9 and old_mem == sized.memory_bytes
    if mode == "Off":
        return False, "resourcePolicy.mode is Off: recommendation only"
    if same:
        return False, "the worker template already has the recommended resources"
    if oom_killed_at and sized.memory_bytes > oom_killed_at and (old_mem is None or old_mem <= oom_killed_at):
        return True, f"a worker was OOM-killed at {format_memory(oom_killed_at)}, which this template does not exceed"
    if mark is None:
        return True, "first sizing of this worker group"
    if mark.generation != generation:
        return True, f"the ScalableWorkflow spec changed (generation {mark.generation} -> {generation})"
    if mode == "Initial":
        if mark.model is None and model is not None:
            return True, f"the AdvisorModel's first trained model ({model}) replaces the answer sized before it"
        return False, "resourcePolicy.mode is Initial: sized once for this spec generation"
    if _moved(old_cpu, sized.cpus, HYSTERESIS) or _moved(old_mem, sized.memory_bytes, HYSTERESIS):
        return True, f"the recommendation moved by more than {HYSTERESIS:.0%}"
    return False, f"the recommendation moved by less than {HYSTERESIS:.0%}"


def template_patch(
    obj: Mapping[str, Any],
    container_name: str,
    sized: Sized,
    workflow_key: str,
    generation: int,
    model: str | None = None,
    controlled: str = "RequestsAndLimits",
) -> list[dict[str, Any]]:
    """JSON patch that sets the worker container's resources in ``obj``'s pod template.

    ``obj`` is a DaskCluster or DaskWorkerGroup. The patch also writes this workflow's
    :class:`SizedMark` (with the AdvisorModel version ``model``), which :func:`should_apply`
    reads back. ``controlled`` is the policy's controlledValues (:func:`resources_for`).
    """
    index, container = find_container(worker_pod_spec(obj), container_name)
    mark = SizedMark(workflow_key, generation, sized.cpu, sized.memory, model).encode()
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": f"{WORKER_POD_SPEC}/containers/{index}/name", "value": container_name},
        {"op": "add", "path": f"{WORKER_POD_SPEC}/containers/{index}/resources",
         "value": resources_for(sized, container, controlled)},
    ]
    if (obj.get("metadata") or {}).get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION_SIZED: mark}})
    else:
        ops.append({"op": "add", "path": annotation_pointer(ANNOTATION_SIZED), "value": mark})
    return ops


def describe_change(container: Mapping[str, Any], sized: Sized, basis: str | None = None) -> str:
    """One line for the Event: old -> new resources, the advisor's basis and the bounds that bit."""
    current = ContainerResources.of(container)
    old_cpu, old_mem = current.cpus, current.memory_bytes
    old_cpu_text = format_cpu(old_cpu) if old_cpu is not None else "unset"
    old_mem_text = format_memory(old_mem) if old_mem is not None else "unset"
    text = f"worker cpu {old_cpu_text} -> {sized.cpu}, memory {old_mem_text} -> {sized.memory}"
    if basis:
        text += f" ({basis})"
    if sized.bounded_by:
        text += "; " + "; ".join(sized.bounded_by)
    return text
