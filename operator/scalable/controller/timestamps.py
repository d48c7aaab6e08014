"""RFC 3339 timestamps as the API server stores them, and back to epoch seconds.

Cooldowns and Lease renewals are measured from these strings, so they keep microseconds:
whole seconds would cut a cooldown short by up to one second.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["parse_time", "precise_time"]


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time (``Z`` or any offset, any number of fractional digits:
    nanoseconds are cut to microseconds); None when absent or not a time. A time without an
    offset is read as UTC, as the API server means it."""
    if not text:
        return None
    try:
        parsed = _dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.timestamp()


def precise_time(now: float) -> str:
    """RFC 3339 with microseconds: the cooldown is measured from it, whole seconds would cut it short."""
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
