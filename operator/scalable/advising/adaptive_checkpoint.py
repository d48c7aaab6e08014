"""The adaptive offset's checkpoint: the state that moves between retrains, kept across restarts.

A stored model version is immutable (:mod:`scalable.advising.model_store`), but its adaptive
offset (:mod:`scalable.advising.adaptive`) moves with every batch of runs that finishes after
training. Kept only in memory, a restarted operator would reload the version as trained and
apply everything since in one batch: one step instead of the many it had taken, and the
promise the offset was keeping starts again. So the offset and the time it has observed up to
are checkpointed beside the version, in JSON (never a pickle: the volume is shared), written
to a temporary file and renamed (a reader sees the old checkpoint or the new one, never half),
and only after the update it describes was applied (VPA's recommender checkpoints the same way).
A checkpoint for another version, or one that does not parse, is ignored: the version's own
stored state is the safe start.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from scalable.advising.adaptive import AdaptiveOffset

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "adaptive-checkpoint.json"
#: a checkpoint is a few hundred bytes; anything larger is not one of ours
MAX_BYTES = 64 * 1024


def _path(model_dir: Path, name: str) -> Path:
    return Path(model_dir) / name / CHECKPOINT_FILE


def save_checkpoint(model_dir: Path, name: str, version: str, advisor: Any) -> bool:
    """Write ``advisor``'s adaptive offset as the checkpoint of ``name``'s ``version``; False
    when it has none to keep."""
    adaptive = getattr(advisor, "adaptive_", None)
    observed_until = float(getattr(advisor, "observed_until_", -math.inf))
    if adaptive is None or not math.isfinite(observed_until):
        return False
    record = {"version": str(version), "adaptive": adaptive.to_state(), "observed_until": observed_until}
    target = _path(model_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".checkpoint-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return True


def load_checkpoint(model_dir: Path, name: str, version: str) -> tuple[AdaptiveOffset, float] | None:
    """(offset, observed until) checkpointed for ``version``; None when there is none for it."""
    path = _path(model_dir, name)
    try:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return None
        record = json.loads(raw)
        if not isinstance(record, dict) or record.get("version") != str(version):
            return None
        offset = AdaptiveOffset.from_state(record["adaptive"])
        observed_until = float(record["observed_until"])
        values = (offset.target, offset.eta, offset.offset, observed_until)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return None
        if offset.observed < 0 or offset.missed < 0 or offset.missed > offset.observed:
            return None
        return offset, observed_until
    except (OSError, ValueError, KeyError, TypeError):
        return None
