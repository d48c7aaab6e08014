"""Slurm accounting (``sacct --parsable2``) output as runs.

Expected: pipe-separated lines with a header naming the fields, for example from
``sacct --parsable2 --allocations=no --format=JobID,JobName,User,Group,Partition,Submit,Start,End,
Elapsed,State,AllocCPUS,ReqCPUS,ReqMem,MaxRSS,TotalCPU,Timelimit,NNodes``. Any subset of these
fields works as long as JobID is there; unknown fields are ignored. A trailing ``|`` (from
``--parsable``) is tolerated.

Steps (``123.batch``, ``123.extern``, ``123.0``) fold into their job (``123``, also array and
heterogeneous ids such as ``123_4`` or ``123+0``): the job's peak memory is the largest MaxRSS
over the job line and its steps, and the job is OOM-killed when the job or any step ran out of
memory. Steps without a job line still make one job.

One task observation per finished job: task = JobName, tag = ``user-<User>`` (as for SWF),
key = JobID; features ``requested_procs`` (ReqCPUS), ``requested_time_s`` (Timelimit),
``requested_memory_bytes`` (ReqMem: ``c`` = per CPU, ``n`` = per node, multiplied out),
``user``, ``group``, ``partition`` where known; observed ``duration_s`` = Elapsed,
``cpu_seconds`` = TotalCPU (all CPUs together), ``peak_memory_bytes`` = max MaxRSS;
``worker_resources.cpus`` = AllocCPUS. Times without a zone are taken as UTC.
States: COMPLETED succeeded; OUT_OF_MEMORY oom_killed; CANCELLED, PREEMPTED, REVOKED cancelled;
FAILED, TIMEOUT, NODE_FAIL, BOOT_FAIL, DEADLINE erred. Jobs still PENDING, RUNNING, REQUEUED,
SUSPENDED (or with an unknown state or elapsed time) are skipped and counted, as are lines with
the wrong number of fields (``corrupt_line``). Slurm sizes are binary: 1K = 1024 bytes.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scalable.telemetry.importers.common import ImportResult, Progress, open_text
from scalable.telemetry.schema import TaskObservation, TaskState
from scalable.telemetry.store import RunStore

__all__ = ["import_sacct", "parse_sacct", "parse_duration", "parse_slurm_memory"]

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*([cn]?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)\s*$")
_JOB_ID = re.compile(r"^([^.]+)(?:\.(.+))?$")
_UNFINISHED = ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
               "REQUEUE_FED", "STOPPED", "SIGNALING", "STAGE_OUT", "CONFIGURING", "COMPLETING")
_STATES = {
    "COMPLETED": TaskState.succeeded,
    "OUT_OF_MEMORY": TaskState.oom_killed,
    "CANCELLED": TaskState.cancelled,
    "PREEMPTED": TaskState.cancelled,
    "REVOKED": TaskState.cancelled,
    "FAILED": TaskState.erred,
    "TIMEOUT": TaskState.erred,
    "NODE_FAIL": TaskState.erred,
    "BOOT_FAIL": TaskState.erred,
    "DEADLINE": TaskState.erred,
}


def parse_duration(text: str) -> float | None:
    """Seconds in a Slurm duration: ``MM:SS(.mmm)``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``D-HH``.

    None for an empty, ``UNLIMITED``, ``Partition_Limit`` or unreadable value.
    """
    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    match = _DURATION.match(text)
    if match:
        days, hours, minutes, seconds = match.groups()
        return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    if "-" in text:
        days, _, hours = text.partition("-")
        if days.isdigit() and hours.isdigit():
            return int(days) * 86400 + int(hours) * 3600
    if text.isdigit():
        return int(text) * 60.0
    return None


def parse_slurm_memory(text: str, cpus: float | None = None, nodes: float | None = None) -> int | None:
    """Bytes in a Slurm memory size (``1234K``, ``4000M``, ``4Gn``, ``2Gc``); binary units.

    A ``c`` suffix means per CPU and is multiplied by ``cpus``; ``n`` per node, by ``nodes``
    (1 when unknown). A bare number is in MB, as Slurm reads ReqMem (MaxRSS always has a unit).
    """
    match = _MEMORY.match(text)
    if not match:
        return None
    number, unit, per = match.groups()
    value = float(number) * (_UNITS[unit.upper()] if unit else 1024**2)
    if per.lower() == "c":
        if cpus is None:
            return None
        value *= cpus
    elif per.lower() == "n":
        value *= nodes or 1
    return int(value)


def _max_rss(text: str) -> int | None:
    match = _MEMORY.match(text)
    if not match:
        return None
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def _time(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("Unknown", "None") or not text[0].isdigit():
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _state(text: str) -> str:
    return text.strip().split(" ", 1)[0].upper().rstrip("+")


@dataclass
class _Job:
    job_id: str
    line: dict[str, str] | None = None
    peak: int | None = None
    oom: bool = False
    steps: list[dict[str, str]] = field(default_factory=list)


def _fold(rows: Iterable[dict[str, str]]) -> Iterator[_Job]:
    """Jobs with their steps folded in, in order of first appearance."""
    jobs: dict[str, _Job] = {}
    for row in rows:
        match = _JOB_ID.match(row.get("JobID", "").strip())
        if not match:
            continue
        job_id, step = match.groups()
        job = jobs.get(job_id)
        if job is None:
            job = jobs[job_id] = _Job(job_id)
        if step is None:
            job.line = row
        else:
            job.steps.append(row)
        rss = _max_rss(row.get("MaxRSS", ""))
        if rss is not None:
            job.peak = rss if job.peak is None else max(job.peak, rss)
        if _state(row.get("State", "")) == "OUT_OF_MEMORY":
            job.oom = True
    yield from jobs.values()


def _observation(job: _Job, run_id: str, skipped: Counter) -> TaskObservation | None:
    row = job.line if job.line is not None else job.steps[0]
    get = row.get
    state_text = _state(get("State", ""))
    if state_text in _UNFINISHED:
        skipped["unfinished_job"] += 1
        return None
    state = TaskState.oom_killed if job.oom else _STATES.get(state_text)
    if state is None:
        skipped["unknown_state"] += 1
        return None
    submitted, started, ended = _time(get("Submit", "")), _time(get("Start", "")), _time(get("End", ""))
    duration = parse_duration(get("Elapsed", ""))
    if duration is None and started is not None and ended is not None:
        duration = max(0.0, ended - started)
    if duration is None:
        skipped["unknown_elapsed"] += 1
        return None
    if submitted is None:
        submitted = started if started is not None else ended
    if submitted is None:
        skipped["unknown_submit_time"] += 1
        return None
    alloc_cpus = _number(get("AllocCPUS", ""))
    req_cpus = _number(get("ReqCPUS", ""))
    nodes = _number(get("NNodes", ""))
    req_mem = parse_slurm_memory(get("ReqMem", ""), cpus=req_cpus or alloc_cpus, nodes=nodes)
    limit = parse_duration(get("Timelimit", ""))
    features: dict[str, Any] = {}
    if req_cpus is not None:
        features["requested_procs"] = int(req_cpus) if req_cpus.is_integer() else req_cpus
    if limit is not None:
        features["requested_time_s"] = int(limit) if float(limit).is_integer() else limit
    if req_mem is not None:
        features["requested_memory_bytes"] = req_mem
    for name, column in (("user", "User"), ("group", "Group"), ("partition", "Partition")):
        value = get(column, "").strip()
        if value:
            features[name] = value
    user = get("User", "").strip()
    name = get("JobName", "").strip() or (f"user-{user}" if user else "unknown")
    return TaskObservation(
        run_id=run_id,
        task=name[:253],
        tag=f"user-{user}" if user else None,
        key=job.job_id,
        input_features=features,
        submitted_at=submitted,
        started_at=started,
        finished_at=ended,
        duration_s=duration,
        cpu_seconds=parse_duration(get("TotalCPU", "")),
        peak_memory_bytes=job.peak,
        worker_resources={"cpus": alloc_cpus},
        requested={"cpus": req_cpus, "memory_bytes": req_mem},
        state=state,
    )


def _rows(handle: Iterable[str], skipped: Counter, progress: Progress | None) -> Iterator[dict[str, str]]:
    header: list[str] | None = None
    for number, line in enumerate(handle, 1):
        if progress is not None and number % 8192 == 0:
            progress.update()
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if header is None:
            if "JobID" not in fields:
                skipped["corrupt_line"] += 1
                continue
            header = fields[:-1] if fields and fields[-1] == "" else fields
            continue
        if len(fields) == len(header) + 1 and fields[-1] == "":
            fields.pop()
        if fields == header:
            continue
        if len(fields) != len(header):
            skipped["corrupt_line"] += 1
            continue
        yield dict(zip(header, fields))
    if header is None:
        skipped["missing_header"] += 1
    if progress is not None:
        progress.update()


def parse_sacct(
    handle: Iterable[str], run_id: str, skipped: Counter, progress: Progress | None = None
) -> Iterator[TaskObservation]:
    """Task observations of the finished jobs in sacct ``--parsable2`` text, steps folded."""
    for job in _fold(_rows(handle, skipped, progress)):
        try:
            observation = _observation(job, run_id, skipped)
        except (ValidationError, ValueError, OverflowError):
            skipped["invalid_record"] += 1
            continue
        if observation is not None:
            yield observation


def import_sacct(
    path: str | os.PathLike[str],
    store: RunStore | str | os.PathLike[str],
    *,
    run_id: str | None = None,
    workflow: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import sacct ``--parsable2`` output (plain or gzip) into ``store`` as one run."""
    path = Path(path)
    store = store if isinstance(store, RunStore) else RunStore(store)
    skipped: Counter = Counter()
    with open_text(path) as handle:
        tracker = Progress(handle, progress)
        observations = list(parse_sacct(handle, "pending", skipped, tracker))
        writer = store.open_run(
            workflow=workflow or path.name.removesuffix(".gz"), source="sacct", run_id=run_id,
            labels={"file": path.name},
        )
        with writer:
            imported = writer.append_many(o.model_copy(update={"run_id": writer.run_id}) for o in observations)
            if observations:
                writer.close(
                    started_at=min(o.submitted_at for o in observations),
                    finished_at=max(o.end_time for o in observations),
                )
    return ImportResult(run_id=writer.run_id, path=writer.path, imported=imported, skipped=skipped, source="sacct")
