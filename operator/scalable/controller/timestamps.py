"""RFC 3339 timestamps as the API server stores them, and back to epoch seconds.

Cooldowns and Lease renewals are measured from these strings, so they keep microseconds:
whole seconds would cut a cooldown short by up to one second.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["parse_time", "precise_time"]


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 UTC time, with or without fractional seconds."""
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.timezone.utc).timestamp()
        except ValueError:
            continue
    return None


def precise_time(now: float) -> str:
    """RFC 3339 with microseconds: the cooldown is measured from it, whole seconds would cut it short."""
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
