"""Standard Workload Format (Parallel Workloads Archive) traces as runs.

The mapping is fixed so that anyone can rely on it. One task observation per job:

* task ``exe-<executable id>`` when the executable is known, else ``user-<user id>``
  (``unknown`` when neither is); tag ``user-<user id>`` (None when the user is unknown);
  key: the job number.
* input features ``requested_procs``, ``requested_time_s``, ``requested_memory_bytes``
  (KB x 1024), ``user``, ``group``, ``queue``, ``partition``, as the numbers the log holds,
  each omitted when the log says -1.
* observed: ``duration_s`` = run time, ``cpu_seconds`` = average CPU time per processor,
  ``peak_memory_bytes`` = used memory KB x 1024 (per processor, as logged).
* times: ``submitted_at`` = submit time, ``started_at`` = submit + wait, ``finished_at`` =
  submit + wait + run; all shifted by the header's ``UnixStartTime`` when present, so they are
  epoch seconds. Unknown wait leaves start and finish unset.
* resources: ``worker_resources.cpus`` = allocated processors; ``requested.cpus`` = requested
  processors, ``requested.memory_bytes`` = requested memory KB x 1024.
* status 1 succeeded, 0 erred, 5 cancelled; of the SWF v2 partial-execution codes, 3 (last part
  completed) succeeded and 2, 4 erred; -1 (unknown) succeeded, since the job ran its logged
  time; any other value (some logs hold exit codes) erred.

Any field logged as -1 (or another negative number) is unknown and becomes None. Jobs whose run
time is unknown are skipped and counted (``unknown_run_time``), as are lines that are not 18
numbers (``corrupt_line``).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scalable.telemetry.importers.common import ImportResult, Progress, open_text
from scalable.telemetry.schema import TaskObservation, TaskState
from scalable.telemetry.store import RunStore

__all__ = ["SWF_FIELDS", "import_swf", "parse_swf"]

#: the 18 SWF fields, in order
SWF_FIELDS = (
    "job", "submit", "wait", "run", "alloc_procs", "avg_cpu", "used_mem_kb", "req_procs",
    "req_time", "req_mem_kb", "status", "user", "group", "exe", "queue", "partition",
    "preceding_job", "think_time",
)
_START = re.compile(r"^;\s*UnixStartTime:\s*(-?\d+)", re.IGNORECASE)
_STATUS = {1: TaskState.succeeded, 0: TaskState.erred, 5: TaskState.cancelled,
           3: TaskState.succeeded, 2: TaskState.erred, 4: TaskState.erred}
_BATCH = 4096


def _known(value: float) -> int | float | None:
    """None for the log's unknowns (-1, any negative, NaN, inf); whole numbers as int."""
    if not 0 <= value < math.inf:
        return None
    return int(value) if value.is_integer() else value


def _observation(numbers: list[float], offset: float, run_id: str) -> TaskObservation | None:
    (job, submit, wait, run, alloc_procs, avg_cpu, used_mem_kb, req_procs, req_time, req_mem_kb,
     status, user, group, exe, queue, partition) = map(_known, numbers[:16])
    if run is None or submit is None:
        return None
    features = {}
    if req_procs is not None:
        features["requested_procs"] = req_procs
    if req_time is not None:
        features["requested_time_s"] = req_time
    if req_mem_kb is not None:
        features["requested_memory_bytes"] = int(req_mem_kb * 1024)
    for name, value in (("user", user), ("group", group), ("queue", queue), ("partition", partition)):
        if value is not None:
            features[name] = value
    submitted = submit + offset
    started = submitted + wait if wait is not None else None
    return TaskObservation(
        run_id=run_id,
        task=f"exe-{exe}" if exe is not None else (f"user-{user}" if user is not None else "unknown"),
        tag=f"user-{user}" if user is not None else None,
        key=str(job) if job is not None else None,
        input_features=features,
        submitted_at=submitted,
        started_at=started,
        finished_at=started + run if started is not None else None,
        duration_s=run,
        cpu_seconds=avg_cpu,
        peak_memory_bytes=int(used_mem_kb * 1024) if used_mem_kb is not None else None,
        worker_resources={"cpus": alloc_procs},
        requested={"cpus": req_procs, "memory_bytes": int(req_mem_kb * 1024) if req_mem_kb is not None else None},
        state=TaskState.succeeded if status is None else _STATUS.get(status, TaskState.erred),
    )


def parse_swf(
    handle: Any, run_id: str, skipped: Counter, progress: Progress | None = None
) -> Iterator[TaskObservation]:
    """Task observations of the jobs in an open SWF text stream, in file order.

    The header's UnixStartTime applies to the jobs after it. ``skipped`` counts what was left out.
    """
    offset = 0.0
    for number, line in enumerate(handle, 1):
        if progress is not None and number % 8192 == 0:
            progress.update()
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(";"):
            match = _START.match(stripped)
            if match:
                offset = float(match.group(1))
            continue
        parts = stripped.split()
        if len(parts) < len(SWF_FIELDS):
            skipped["corrupt_line"] += 1
            continue
        try:
            numbers = [float(p) for p in parts[:16]]
        except ValueError:
            skipped["corrupt_line"] += 1
            continue
        if not 0 <= numbers[3] < math.inf:
            skipped["unknown_run_time"] += 1
            continue
        try:
            observation = _observation(numbers, offset, run_id)
        except ValidationError:
            skipped["invalid_record"] += 1
            continue
        if observation is None:
            skipped["unknown_submit_time"] += 1
            continue
        yield observation
    if progress is not None:
        progress.update()


def import_swf(
    path: str | os.PathLike[str],
    store: RunStore | str | os.PathLike[str],
    *,
    run_id: str | None = None,
    workflow: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import an SWF file (plain or gzip) into ``store`` as one run; returns what happened.

    ``progress(done, total)`` is called now and then with bytes of the file consumed.
    """
    path = Path(path)
    store = store if isinstance(store, RunStore) else RunStore(store)
    skipped: Counter = Counter()
    first_submit = last_end = None
    imported = 0
    with open_text(path) as handle:
        writer = store.open_run(
            workflow=workflow or path.name.removesuffix(".gz").removesuffix(".swf"),
            source="swf",
            run_id=run_id,
            labels={"trace": path.name},
        )
        with writer:
            batch: list[TaskObservation] = []
            tracker = Progress(handle, progress)
            for obs in parse_swf(handle, writer.run_id, skipped, tracker):
                batch.append(obs)
                first_submit = obs.submitted_at if first_submit is None else min(first_submit, obs.submitted_at)
                last_end = obs.end_time if last_end is None else max(last_end, obs.end_time)
                if len(batch) >= _BATCH:
                    imported += writer.append_many(batch)
                    batch.clear()
            imported += writer.append_many(batch)
            times = {"started_at": first_submit, "finished_at": last_end} if first_submit is not None else {}
            writer.close(**times)
    return ImportResult(run_id=writer.run_id, path=writer.path, imported=imported, skipped=skipped, source="swf")
