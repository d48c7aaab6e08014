"""The cooldown rule, the one place that says when a tag may change again.

A tag changes at most once per cooldown from its last *applied* change, with one exception: a
scale-up right after a scale-down. The cooldown is there against flapping and to give new
workers time to arrive; letting it hold tasks back behind a scale-down would make the load that
returned wait a whole cooldown (AWS target tracking interrupts a scale-in cooldown the same
way). At most one down-then-up pair fits in a cooldown, since the scale-up starts a new one.
Bound repairs are not subject to it; the scaler makes them before asking.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CooldownVerdict", "cooldown"]


@dataclass(frozen=True)
class CooldownVerdict:
    """Whether a change may go now; ``seconds_left`` when held, ``note`` when let through early."""

    allowed: bool
    seconds_left: float = 0.0
    note: str = ""


def cooldown(action: str, last_change: float | None, last_action: str | None, now: float, cooldown_seconds: float) -> CooldownVerdict:
    """May ``action`` ("scale_up" or "scale_down") be applied at ``now``?

    ``last_change`` and ``last_action`` describe the last change that was really applied
    (None when there was none, or none is known); an unknown last action holds every change.
    """
    if last_change is None or now - last_change >= cooldown_seconds:
        return CooldownVerdict(True)
    if action == "scale_up" and last_action == "scale_down":
        return CooldownVerdict(True, note="a scale-down in cooldown does not hold back a scale-up")
    return CooldownVerdict(False, seconds_left=cooldown_seconds - (now - last_change))
