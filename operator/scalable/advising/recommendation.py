"""What an advisor answers: resources for one task, with how sure it is and why.

A Recommendation is read three ways by three kinds of callers: people print it (so it prints
like the dict in the user documentation), scripts index it like a mapping (``rec["memory"]``),
and the operator reads attributes and turns it into a pod's ``resources`` (``to_k8s``). It is
immutable so that a cached answer can be handed out to many callers safely.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from scalable.units import format_memory, parse_memory, resources_block

__all__ = ["Recommendation", "METHODS"]

METHODS = ("learned", "percentile", "default")

_PERCENTILE_KEYS = ("cpus", "memory", "basis")
_LEARNED_KEYS = ("cpus", "memory", "confidence", "method", "basis", "predicted_duration_s")


@dataclass(frozen=True, eq=False, repr=False)
class Recommendation(Mapping):
    """Recommended resources for one task.

    The mapping view holds the headline fields: ``cpus``, ``memory`` and ``basis`` for the
    percentile advisor (as users see it printed in the documentation), plus ``confidence``,
    ``method`` and ``predicted_duration_s`` when a model answered. Every other attribute can
    also be read by key (``rec["confidence"]`` works for a percentile answer too), so code
    never has to know which advisor answered.

    ``interval`` is the memory interval in bytes ``(lower, upper)``: ``upper`` is the
    recommendation, a calibrated upper quantile at ``coverage``.
    """

    cpus: int
    memory_bytes: int
    confidence: float
    method: str
    basis: str
    predicted_duration_s: float | None = None
    interval: tuple[int, int] | None = None
    coverage: float | None = None
    model_version: str | None = None
    task: str | None = None
    cpus_exact: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    keys_shown: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not (0.0 <= self.confidence <= 1.0) or math.isnan(self.confidence):
            raise ValueError(f"confidence must be in [0, 1], not {self.confidence!r}")
        if self.cpus < 1 or self.memory_bytes < 0:
            raise ValueError("a recommendation needs at least 1 cpu and non-negative memory")
        if not self.keys_shown:
            shown = _LEARNED_KEYS if self.method == "learned" else _PERCENTILE_KEYS
            object.__setattr__(self, "keys_shown", shown)
        object.__setattr__(self, "details", dict(self.details))

    @classmethod
    def _trusted(cls, **fields: Any) -> "Recommendation":
        """Construct without re-validating: for batches of values an advisor has already
        bounded (a recommend_batch of 50,000 spends most of its time here otherwise)."""
        rec = object.__new__(cls)
        values = rec.__dict__
        values.update(_DEFAULTS)
        values.update(fields)
        if not values["keys_shown"]:
            values["keys_shown"] = _LEARNED_KEYS if values["method"] == "learned" else _PERCENTILE_KEYS
        return rec

    @property
    def memory(self) -> str:
        """Memory as a Kubernetes quantity with a binary suffix, e.g. ``"8Gi"``."""
        return format_memory(self.memory_bytes)

    @property
    def resources(self) -> dict[str, Any]:
        """``{'cpus': int, 'memory': '8Gi'}``."""
        return {"cpus": self.cpus, "memory": self.memory}

    def to_k8s(self) -> dict[str, dict[str, str]]:
        """A container's ``resources`` block for this recommendation, requests equal to limits
        (:func:`scalable.units.resources_block`), memory as :attr:`memory` says it."""
        return resources_block(self.cpus, parse_memory(self.memory))

    def __getitem__(self, key: str) -> Any:
        if key in ("memory", "resources"):
            return getattr(self, key)
        if key in ("keys_shown",) or key not in _ATTRIBUTES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_shown)

    def __len__(self) -> int:
        return len(self.keys_shown)

    def __contains__(self, key: object) -> bool:
        return key in self.keys_shown

    def __repr__(self) -> str:
        return repr({key: self[key] for key in self.keys_shown})

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash((self.task, self.cpus, self.memory_bytes, self.method, self.basis))

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (for ``--format json`` and telemetry)."""
        return {
            "task": self.task,
            "cpus": self.cpus,
            "memory": self.memory,
            "memory_bytes": self.memory_bytes,
            "confidence": self.confidence,
            "method": self.method,
            "basis": self.basis,
            "predicted_duration_s": self.predicted_duration_s,
            "interval": list(self.interval) if self.interval is not None else None,
            "coverage": self.coverage,
            "model_version": self.model_version,
            "cpus_exact": self.cpus_exact,
            "details": dict(self.details),
        }


_ATTRIBUTES = frozenset(
    {
        "cpus",
        "memory",
        "memory_bytes",
        "confidence",
        "method",
        "basis",
        "predicted_duration_s",
        "interval",
        "coverage",
        "model_version",
        "task",
        "cpus_exact",
        "details",
        "resources",
    }
)


_DEFAULTS: dict[str, Any] = {
    f.name: (f.default if f.default is not MISSING else None) for f in fields(Recommendation)
}
_DEFAULTS.update(details={}, keys_shown=())


DOUBLED = "doubled: too few runs needed more than that to calibrate the next attempt"


def after_oom_kill(plain: Recommendation, failed: int, estimate: tuple[int, str] | None = None) -> Recommendation:
    """``plain`` for the next attempt of a run OOM-killed at ``failed`` bytes.

    ``estimate`` is an advisor's own (memory, how it was obtained) for that attempt; it is used
    when it lies above the failure and below double it. Otherwise the memory is doubled, the
    retry convention of workflow managers and the most a tail estimate may ask. Never less
    than ``plain`` when ``plain`` is already above the failure."""
    if estimate is not None and failed < estimate[0] < 2 * failed:
        memory, how = int(estimate[0]), estimate[1]
    else:
        memory, how = 2 * failed, DOUBLED
    memory = max(memory, plain.memory_bytes if plain.memory_bytes > failed else 0)
    basis = f"{plain.basis}; the last attempt was OOM-killed at {format_memory(failed)}: {format_memory(memory)}, {how}"
    return with_memory(plain, memory, basis, (failed, memory), failed_memory_bytes=failed)


def with_memory(rec: Recommendation, memory: int, basis: str, interval: tuple[int, int] | None,
                **details: Any) -> Recommendation:
    """``rec`` with another memory, basis and interval (and ``details`` added), all else kept:
    the one place an advisor revises an answer it already bounded."""
    return Recommendation._trusted(**{
        **{k: getattr(rec, k) for k in ("cpus", "confidence", "method", "predicted_duration_s", "coverage",
                                        "model_version", "task", "cpus_exact", "keys_shown")},
        "memory_bytes": memory, "basis": basis, "interval": interval, "details": {**rec.details, **details},
    })
