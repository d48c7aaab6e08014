"""The scaler's configuration: every threshold, timing and bound, with its default, once.

``scalable.yaml`` (:mod:`scalable.session.manifest`) and the ScalableWorkflow custom resource
(:mod:`scalable.controller.resources`) each map onto :class:`ScalerConfig` in one place and take
their defaults from :data:`DEFAULTS`, so the session and the operator scale a workflow with the
same rules unless a user says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULTS", "LOCAL_WORKER_STARTUP_SECONDS", "ScalerConfig"]

Bound = int | Mapping[str, int]


@dataclass(frozen=True)
class ScalerConfig:
    """How an :class:`~scalable.scaling.scaler.AdaptiveScaler` decides.

    ``min_workers`` and ``max_workers`` are an int for every tag or a mapping per tag (which
    may carry ``"*"`` as the default); a tag with no maximum is held.
    ``worker_startup_seconds`` is how long a worker asked for now takes to join: 30 s, a
    pod's; a local worker process takes a few seconds. ``horizon_seconds`` defaults to the
    cooldown plus that: what arrives before the scaler can act again and a new worker has
    joined is what it must provision for now. ``target_utilisation`` defaults to midway
    between the thresholds. ``min_confidence`` is the advisor confidence below which
    duration predictions are not trusted and the scaler is reactive.
    """

    min_workers: Bound = 0
    max_workers: Bound = 10
    scale_up_threshold: float = 0.8
    scale_down_threshold: float = 0.3
    target_utilisation: float | None = None
    cooldown_seconds: float = 60.0
    worker_startup_seconds: float = 30.0
    horizon_seconds: float | None = None
    min_confidence: float = 0.5
    max_scale_up_step: int | None = None
    max_scale_down_step: int = 1
    forecast_half_life_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name in ("min_workers", "max_workers"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, MappingProxyType({str(k): int(v) for k, v in value.items()}))
        finite = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith(("threshold", "seconds", "confidence", "utilisation"))}
        for name, value in finite.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 < self.scale_down_threshold < self.scale_up_threshold:
            raise ValueError(
                f"need 0 < scale_down_threshold < scale_up_threshold, got {self.scale_down_threshold} and {self.scale_up_threshold}"
            )
        if not self.scale_down_threshold <= self.utilisation_target <= self.scale_up_threshold:
            raise ValueError("target_utilisation must lie between the two thresholds")
        if self.worker_startup_seconds < 0:
            raise ValueError(f"worker_startup_seconds must be >= 0, got {self.worker_startup_seconds}")
        if self.cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be >= 0, got {self.cooldown_seconds}")
        if self.horizon <= 0:
            raise ValueError(f"horizon_seconds must be > 0, got {self.horizon}")
        if self.max_scale_down_step < 1 or (self.max_scale_up_step is not None and self.max_scale_up_step < 1):
            raise ValueError("scale steps must be >= 1")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.forecast_half_life_seconds <= 0:
            raise ValueError(f"forecast_half_life_seconds must be > 0, got {self.forecast_half_life_seconds}")
        tags = set()
        for bound in (self.min_workers, self.max_workers):
            if isinstance(bound, Mapping):
                tags |= set(bound)
        for tag in tags or {"*"}:
            low, high = self.bounds(tag)
            if low is None or high is None:
                continue
            if low < 0 or high < low:
                raise ValueError(f"tag {tag!r}: need 0 <= min_workers <= max_workers, got {low} and {high}")

    @property
    def horizon(self) -> float:
        """The look-ahead in seconds: ``horizon_seconds``, else cooldown plus start-up."""
        if self.horizon_seconds is not None:
            return self.horizon_seconds
        return self.cooldown_seconds + self.worker_startup_seconds

    @property
    def utilisation_target(self) -> float:
        if self.target_utilisation is not None:
            return self.target_utilisation
        return (self.scale_up_threshold + self.scale_down_threshold) / 2

    @staticmethod
    def _bound(bound: Bound, tag: str) -> int | None:
        if isinstance(bound, Mapping):
            value = bound.get(tag, bound.get("*"))
            return None if value is None else int(value)
        return int(bound)

    def bounds(self, tag: str) -> tuple[int | None, int | None]:
        """(min, max) workers for ``tag``; None where the configuration has none."""
        low = self._bound(self.min_workers, tag)
        high = self._bound(self.max_workers, tag)
        if low is None and high is not None:
            low = 0
        return low, high

    def with_changes(self, **changes: Any) -> "ScalerConfig":
        """A copy with ``changes`` (field names as in the constructor), validated again."""
        unknown = set(changes) - {f.name for f in fields(self) if f.init}
        if unknown:
            raise TypeError(f"unknown scaler settings {sorted(unknown)}")
        return replace(self, **changes)


#: the library's defaults; the manifest and the CRD take theirs from here
DEFAULTS = ScalerConfig()

#: how long a local worker process takes to join (``DEFAULTS`` has a pod's)
LOCAL_WORKER_STARTUP_SECONDS = 5.0
