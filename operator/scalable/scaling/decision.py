"""What the scaler decided, per tag and for the whole snapshot, and how it is recorded.

A decision is kept separate from the scaler so that whoever applies it (the local session,
the operator) and whoever records it (telemetry, a status field, an Event) share one shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from scalable.scaling.history import ScalingHistory
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
    """The decision for a whole snapshot: one :class:`TagDecision` per tag.

    ``observed`` is the scaler's history with this snapshot observed and no change applied;
    :meth:`commit` turns it into the history for the next decision.
    """

    time: float
    tags: dict[str, TagDecision] = field(default_factory=dict)
    observed: ScalingHistory = field(default_factory=ScalingHistory, repr=False, compare=False)

    def commit(self, applied: Iterable[str]) -> ScalingHistory:
        """The history after the caller applied the changes of the tags ``applied``.

        Only tags whose change really happened belong there: not a hold, not a patch that was
        refused; the cooldown of the others does not start.
        """
        changes = []
        for tag in applied:
            decision = self.tags[tag]
            if decision.action == "hold":
                raise ValueError(f"tag {tag!r} was held; there is no change to commit")
            changes.append((tag, decision.action, self.time))
        return self.observed.applied(changes)

    @property
    def changes(self) -> list[str]:
        """The tags whose decision is a change (scale-up or scale-down)."""
        return [tag for tag, d in self.tags.items() if d.action != "hold"]

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
