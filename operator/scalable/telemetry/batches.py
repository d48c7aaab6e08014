"""A recorded run as the request bodies that push it to the operator.

The run's ``run.json`` becomes the body's ``run`` (without workflow and namespace, which the
operator sets from the URL); its records are read from the JSONL files, validated with the
telemetry schema, and cut into batches well below the endpoint's limits (16 MiB, 100 000
records), so that one bad line or one large run never makes a request the operator refuses
whole. A line that is not JSON, a record of a schema version or kind this library does not know,
or one that does not validate is skipped and counted, as the loader does.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES, SUPPORTED_SCHEMA_VERSIONS, RunInfo
from scalable.telemetry.store import RUN_INFO_FILE

__all__ = ["RunBatches", "run_batches", "MAX_BATCH_RECORDS", "MAX_BATCH_BYTES"]

MAX_BATCH_RECORDS = 2000
MAX_BATCH_BYTES = 2 * 1024 * 1024
_RUN_FIELDS = ("run_id", "started_at", "finished_at", "host", "source", "labels")


@dataclass
class RunBatches:
    run_id: str
    run: dict[str, Any]
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    @property
    def records(self) -> int:
        return sum(len(b) for b in self.batches)

    def bodies(self) -> list[dict[str, Any]]:
        return [{"run": self.run, "records": records} for records in self.batches]


def _run_info(run_dir: Path) -> RunInfo:
    try:
        return RunInfo.model_validate(json.loads((run_dir / RUN_INFO_FILE).read_bytes()))
    except FileNotFoundError:
        raise ValueError(f"{run_dir}: no {RUN_INFO_FILE}: not a run directory") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{run_dir / RUN_INFO_FILE}: unreadable: {exc}") from None


def run_batches(run_dir: str | Path, max_records: int = MAX_BATCH_RECORDS, max_bytes: int = MAX_BATCH_BYTES) -> RunBatches:
    """Read one run directory; raise ValueError when its run.json is missing or invalid."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    dumped = info.model_dump(mode="json")
    run = {k: dumped[k] for k in _RUN_FIELDS if dumped.get(k) is not None}
    out = RunBatches(info.run_id, run)
    current: list[dict[str, Any]] = []
    size = 0
    for kind, file_name in sorted(RECORD_FILES.items()):
        try:
            lines = (run_dir / file_name).read_bytes().splitlines()
        except FileNotFoundError:
            continue
        model = RECORD_TYPES[kind]
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                out.skipped["not JSON"] += 1
                continue
            if not isinstance(record, dict):
                out.skipped["not an object"] += 1
                continue
            if record.get("schema_version", 1) not in SUPPORTED_SCHEMA_VERSIONS:
                out.skipped["unknown schema_version"] += 1
                continue
            if record.setdefault("kind", kind) != kind:
                out.skipped[f"kind {record.get('kind')!r} in {file_name}"] += 1
                continue
            if record.setdefault("run_id", info.run_id) != info.run_id:
                out.skipped["another run's record"] += 1
                continue
            try:
                model.model_validate(record)
            except pydantic.ValidationError:
                out.skipped["invalid"] += 1
                continue
            length = len(line) + 2
            if current and (len(current) >= max_records or size + length > max_bytes):
                out.batches.append(current)
                current, size = [], 0
            current.append(record)
            size += length
    if current or not out.batches:
        out.batches.append(current)  # a run without records is still pushed: its run.json
    return out
