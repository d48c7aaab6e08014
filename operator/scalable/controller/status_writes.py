"""When a workflow's status is worth a write: only when it says something new.

Every poll builds the whole status again. Written every time, 5,000 workflows polling every
15 s are 333 PATCHes a second, each a new ``resourceVersion`` in etcd, a watch event to every
client watching ScalableWorkflows (kopf included) and an entry in the API server's rate
limits, almost all of them saying "still holding at 3 workers". So the status is compared
with the one read at the start of the poll, and written only when a field that means
something changed:

* **significant**: everything a person or a controller acts on -- replicas, the decision's
  action, from, to, reason, queue figures, each condition's status, reason, message and
  observedGeneration, the recommendation, ``observedGeneration``. Any change is written in
  this poll.
* **heartbeat**: fields that only say "the loop is alive" -- ``groups[].lastDecision.time``,
  and ``metricsFailures`` once it is past the count that decides anything (the fallback
  threshold). A change there alone is written at most every :data:`HEARTBEAT_INTERVAL_S`, so
  ``lastDecision.time`` stays at most a minute (plus a poll) old while the loop runs.

``lastTransitionTime`` of a condition moves only with its status (:mod:`conditions`), so it is
compared like the status it follows. A ``None`` is the same as a missing field: a merge patch
with ``null`` deletes the field, and the API server prunes nulls the schema does not allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HEARTBEAT_INTERVAL_S", "StatusWrites", "changed", "significant_part"]

#: the longest a status whose only change is a heartbeat field goes unwritten
HEARTBEAT_INTERVAL_S = 60.0


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def significant_part(status: Mapping[str, Any], keys: Any, failure_threshold: int) -> dict[str, Any]:
    """``status`` restricted to ``keys`` with the heartbeat fields taken out.

    ``metricsFailures`` is kept as ``min(count, failure_threshold)``: below the threshold every
    count matters (a restart must go on counting from it), at or above it only that it is there.
    """
    out = {k: _without_nulls(status.get(k)) for k in keys if status.get(k) is not None}
    if "metricsFailures" in out and isinstance(out["metricsFailures"], int):
        out["metricsFailures"] = min(out["metricsFailures"], max(1, failure_threshold))
    groups = []
    for group in out.get("groups") or []:
        if isinstance(group, Mapping) and isinstance(group.get("lastDecision"), Mapping):
            group = {**group, "lastDecision": {k: v for k, v in group["lastDecision"].items() if k != "time"}}
        groups.append(group)
    if "groups" in out:
        out["groups"] = groups
    return out


def changed(previous: Mapping[str, Any], new: Mapping[str, Any], failure_threshold: int = 1) -> tuple[bool, bool]:
    """(significant change, heartbeat-only change) of ``new`` against ``previous``.

    Only the keys of ``new`` are compared: a merge patch leaves the others as they are.
    """
    before = {k: _without_nulls(previous.get(k)) for k in new if previous.get(k) is not None}
    after = {k: _without_nulls(v) for k, v in new.items() if v is not None}
    if before == after:
        return False, False
    significant = significant_part(previous, new.keys(), failure_threshold) != significant_part(new, new.keys(), failure_threshold)
    return significant, not significant


class StatusWrites:
    """The write decision of one workflow's loop: it remembers when it last wrote."""

    def __init__(self, heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        #: monotonic time of the last write; None until this process wrote once
        self.written_at: float | None = None

    def due(self, previous: Mapping[str, Any], new: Mapping[str, Any], tick: float, failure_threshold: int = 1) -> bool:
        """Whether ``new`` should be written now (``tick``: monotonic seconds)."""
        significant, heartbeat = changed(previous, new, failure_threshold)
        if significant:
            return True
        if not heartbeat:
            return False
        return self.written_at is None or tick - self.written_at >= self.heartbeat_interval_s

    def wrote(self, tick: float) -> None:
        self.written_at = tick
