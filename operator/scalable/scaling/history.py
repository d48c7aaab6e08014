"""What the scaler remembers between decisions, as a value the caller keeps and passes in.

VPA's recommender keeps its state in one model that a checkpoint writer persists; ours is
:class:`ScalingHistory`. :meth:`AdaptiveScaler.evaluate` reads a history and changes nothing;
the decision it returns carries the history with the new *observations* (the arrival forecast)
and :meth:`ScalingDecision.commit` adds the *changes* the caller really applied (a scale-up, a
retire, a replica patch that was not refused). A change that was held, or whose patch hit a
conflict, never starts a cooldown. The operator rebuilds a history after a restart from what it
persists (:meth:`ScalingHistory.with_persisted_change`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from scalable.scaling.forecast import HoltState

__all__ = ["ScalingHistory", "TagHistory"]


@dataclass(frozen=True)
class TagHistory:
    """One tag: its forecast state, the demand last seen, and its last applied change.

    ``last_prediction`` is the scaler's own memo of the last predicted durations, so a tag
    whose queue just emptied still has what its next arrivals are like.
    """

    forecast: HoltState | None = None
    last_demand: int = 0
    last_change: float | None = None
    last_action: str | None = None
    last_prediction: Any = field(default=None, repr=False, compare=False)

    def changed(self, action: str, time: float) -> "TagHistory":
        return replace(self, last_change=float(time), last_action=action)


@dataclass(frozen=True)
class ScalingHistory:
    """Per tag history; immutable, so a caller can hold the one it last committed."""

    tags: Mapping[str, TagHistory] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    def of(self, tag: str) -> TagHistory:
        return self.tags.get(tag) or TagHistory()

    def with_tags(self, updates: Mapping[str, TagHistory]) -> "ScalingHistory":
        return ScalingHistory({**self.tags, **updates})

    def applied(self, changes: Iterable[tuple[str, str, float]]) -> "ScalingHistory":
        """The history after the changes ``(tag, action, time)`` were really applied."""
        updates = {tag: self.of(tag).changed(action, time) for tag, action, time in changes}
        return self.with_tags(updates) if updates else self

    def with_persisted_change(self, tag: str, time: float | None, action: str | None) -> "ScalingHistory":
        """Take a change recorded outside this process (status, annotation) if it is the latest known.

        A persisted change without its action (``None``) holds every change for a cooldown,
        the safe reading after a restart.
        """
        current = self.of(tag)
        if time is None or (current.last_change is not None and current.last_change >= time):
            return self
        return self.with_tags({tag: replace(current, last_change=float(time), last_action=action)})
