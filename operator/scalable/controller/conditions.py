"""Kubernetes-style conditions: set one, keep the others, move lastTransitionTime only on change.

``kubectl wait --for=condition=Ready`` and every dashboard read ``lastTransitionTime`` as "since
when has this been so"; rewriting it on every reconcile would make that meaningless, so it only
moves when ``status`` changes. Reason, message and observedGeneration follow the latest state.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["now_rfc3339", "set_condition", "get_condition", "merge_conditions", "is_true"]

_VALID_STATUS = {"True", "False", "Unknown"}


def now_rfc3339(now: float | None = None) -> str:
    """UTC time as Kubernetes writes it (RFC 3339, second precision, ``Z``)."""
    moment = _dt.datetime.now(_dt.timezone.utc) if now is None else _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(value: bool | str) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if value not in _VALID_STATUS:
        raise ValueError(f"condition status must be one of {sorted(_VALID_STATUS)}, not {value!r}")
    return value


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return dict(condition)
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return bool(condition and condition.get("status") == "True")


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition ``type_`` set; the input is not modified.

    The order of existing conditions is kept (a new type is appended) so that status patches
    do not churn when nothing changed.
    """
    status = _status(status)
    out: list[dict[str, Any]] = []
    found = False
    for condition in conditions or ():
        condition = dict(condition)
        if condition.get("type") == type_:
            found = True
            if condition.get("status") != status or not condition.get("lastTransitionTime"):
                condition["lastTransitionTime"] = now_rfc3339(now)
            condition.update(status=status, reason=reason, message=message)
            if generation is not None:
                condition["observedGeneration"] = generation
        out.append(condition)
    if not found:
        new = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339(now)}
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def merge_conditions(
    conditions: Iterable[Mapping[str, Any]] | None,
    updates: Iterable[Mapping[str, Any]],
    *,
    generation: int | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Apply several ``{"type", "status", "reason", "message"}`` updates in order."""
    result = [dict(c) for c in conditions or ()]
    for update in updates:
        result = set_condition(
            result, update["type"], update["status"], update.get("reason", ""), update.get("message", ""),
            generation=generation, now=now,
        )
    return result
