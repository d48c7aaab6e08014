"""What the scaler decided, per tag and for the whole snapshot, and how it is recorded.

A decision is kept separate from the scaler so that whoever applies it (the local session,
the operator) and whoever records it (telemetry, a status field, an Event) share one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scalable.telemetry.schema import ScalingDecisionRecord

__all__ = ["Action", "Mode", "TagDecision", "ScalingDecision"]

Action = Literal["scale_up", "scale_down", "hold"]
Mode = Literal["predictive", "reactive", "hold"]


@dataclass(frozen=True)
class TagDecision:
    """The decision for one tag (one worker group).

    ``predicted_load`` is the number of busy worker threads the scaler expects over its
    horizon (predicted work-seconds divided by the horizon); None in reactive mode.
    ``retire`` is how many idle workers may go, equal to ``from_workers - to_workers``
    on a scale-down: only idle workers are ever retired.
    """

    tag: str
    action: Action
    from_workers: int
    to_workers: int
    reason: str
    mode: Mode
    utilisation: float
    queued: int
    processing: int
    predicted_load: float | None = None
    confidence: float | None = None

    @property
    def retire(self) -> int:
        return max(0, self.from_workers - self.to_workers)

    def to_record(self, run_id: str, time: float) -> ScalingDecisionRecord:
        """The telemetry record of this decision."""
        utilisation = self.utilisation if self.utilisation != float("inf") else None
        return ScalingDecisionRecord(
            run_id=run_id,
            time=time,
            tag=self.tag,
            action=self.action,
            from_workers=self.from_workers,
            to_workers=self.to_workers,
            reason=self.reason,
            mode=self.mode,
            predicted_load=self.predicted_load,
            confidence=self.confidence,
            queued=self.queued,
            processing=self.processing,
            utilisation=utilisation,
        )


@dataclass(frozen=True)
class ScalingDecision:
    """The decision for a whole snapshot: one :class:`TagDecision` per tag."""

    time: float
    tags: dict[str, TagDecision] = field(default_factory=dict)

    @property
    def targets(self) -> dict[str, int]:
        return {tag: d.to_workers for tag, d in self.tags.items()}

    @property
    def actions(self) -> dict[str, Action]:
        return {tag: d.action for tag, d in self.tags.items()}

    @property
    def reasoning(self) -> dict[str, str]:
        return {tag: d.reason for tag, d in self.tags.items()}

    @property
    def predicted_load(self) -> dict[str, float | None]:
        return {tag: d.predicted_load for tag, d in self.tags.items()}

    @property
    def confidence(self) -> float | None:
        """The lowest confidence among tags decided predictively; None if none was."""
        values = [d.confidence for d in self.tags.values() if d.confidence is not None]
        return min(values) if values else None

    @property
    def changed(self) -> bool:
        return any(d.action != "hold" for d in self.tags.values())

    def to_records(self, run_id: str) -> list[ScalingDecisionRecord]:
        return [d.to_record(run_id, self.time) for d in self.tags.values()]

    def __str__(self) -> str:
        return "\n".join(
            f"{tag}: {d.action} {d.from_workers}->{d.to_workers} ({d.mode}): {d.reason}"
            for tag, d in self.tags.items()
        )
