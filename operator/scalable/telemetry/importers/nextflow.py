"""Nextflow trace files (``-with-trace``, ``trace.txt``, and CSV exports of them) as runs.

What is read: a header line naming the fields, then one line per task attempt. The fields may be
any subset of Nextflow's, in any order (``trace.fields``); unknown columns are ignored. The
separator is found from the header: tab (Nextflow's default), comma, semicolon or pipe
(``trace.sep``); quoted CSV values are understood. Values may be human-readable or raw
(``trace.raw = true``), each read by its own form: see :mod:`.nextflow_values` for the units.

Column names are Nextflow's (``peak_rss``, ``%cpu``, ...). Headers are matched ignoring case and
surrounding quotes and spaces, camelCase is read as snake_case and ``pcpu`` / ``pmem`` as
``%cpu`` / ``%mem``, which is how Seqera Platform names the same fields, and ``exit_status``
(``exitStatus``) as ``exit``. The nf-core CSV exports in ``shared/data/nextflow`` use
Nextflow's own names and raw values, so they need no renaming.

The mapping is fixed so that anyone can rely on it. One task observation per line (attempt):

* task = ``process``; tag = ``process``; key = ``name`` (``process (tag)``), else ``task_id``,
  else ``hash``. A trace without a ``process`` column (Nextflow's default fields have none)
  takes the process from ``name``, without its `` (...)`` suffix.
* observed: ``peak_memory_bytes`` = ``peak_rss``; ``duration_s`` = ``realtime`` (else
  ``complete - start``); ``cpu_seconds`` = ``%cpu`` / 100 x ``realtime``.
* input features, each omitted when the trace says ``-`` or lacks the field:
  ``input_bytes`` = ``rchar``, ``requested_cpus`` = ``cpus``, ``requested_memory_bytes`` =
  ``memory``, ``requested_time_s`` = ``time``, ``attempt`` = ``attempt``. ``requested`` holds
  ``cpus`` and ``memory`` too; ``worker_resources`` stays unknown (the trace does not say what
  the node had).
* times: ``submitted_at`` = ``submit`` (else ``start``), ``started_at`` = ``start``,
  ``finished_at`` = ``complete``, else ``submit + duration`` (Nextflow's ``duration`` runs from
  submission to completion).
* state: ``exit`` 137 (128 + SIGKILL, how the kernel's and Kubernetes' OOM killer end a task)
  is ``oom_killed`` whether the status is FAILED or COMPLETED (an accepted exit status is still
  an OOM kill); otherwise COMPLETED succeeded, FAILED erred, ABORTED cancelled (Nextflow
  killed it), and with no ``status`` column exit 0 or none succeeded and any other exit erred.
* retries stay separate observations, each with its ``attempt``: a task OOM-killed at attempt 1
  and run again with more memory is two rows, ``oom_killed`` then ``succeeded``.

Skipped and counted: lines with the wrong number of fields or before any header
(``corrupt_line``), a value that cannot be read in a field the mapping uses
(``unreadable_<field>``; fields it does not need are not read, so the eager trace's one
negative ``duration``, a clock skew between submit and complete, costs nothing), tasks still NEW,
SUBMITTED or RUNNING when the trace was written (``unfinished_task``), CACHED tasks, whose
numbers were measured in the earlier run that computed them (``cached_task``; import that run's
trace), unknown statuses, and lines without a process, a run time or any time at all.

Dates without an offset are read in the time zone given (``timezone``): Nextflow writes them in
the local time of the machine that ran it, so the default is this machine's local time zone.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from scalable.telemetry.importers.common import ImportResult, Progress, open_text
from scalable.telemetry.importers.nextflow_values import (
    parse_count,
    parse_duration,
    parse_memory,
    parse_percent,
    parse_timestamp,
)
from scalable.telemetry.schema import Resources, TaskObservation, TaskState
from scalable.telemetry.store import RunStore

__all__ = ["OOM_EXIT_STATUSES", "TRACE_FIELDS", "canonical_field", "import_nextflow", "parse_nextflow",
           "resolve_timezone"]

#: Nextflow's trace field names (``TraceRecord.FIELDS``)
TRACE_FIELDS = frozenset({
    "task_id", "hash", "native_id", "process", "module", "container", "tag", "name", "status", "exit",
    "submit", "start", "complete", "duration", "realtime", "%cpu", "%mem", "rss", "vmem", "peak_rss",
    "peak_vmem", "rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "attempt", "workdir",
    "script", "scratch", "queue", "cpus", "memory", "disk", "time", "env", "error_action", "vol_ctxt",
    "inv_ctxt", "hostname", "cpu_model",
})
#: exit statuses that mean the task was OOM-killed
OOM_EXIT_STATUSES = frozenset({137})
LOCAL_TIMEZONE = "local"

_ALIASES = {"pcpu": "%cpu", "pmem": "%mem", "exit_status": "exit"}
_DELIMITERS = ("\t", ",", ";", "|")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SUFFIX = re.compile(r"^(.*?)\s+\(.*\)$")
_FIRST_VALUE = re.compile(r"[\t,;|]")
_EXIT_STATUS = re.compile(r"[+-]?\d{1,10}")
_UNFINISHED = frozenset({"NEW", "SUBMITTED", "RUNNING"})
_STATES = {"COMPLETED": TaskState.succeeded, "FAILED": TaskState.erred, "ABORTED": TaskState.cancelled}


class _Skip(Exception):
    """A line that does not become an observation, and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_field(name: str) -> str:
    """The Nextflow field a column header names: ``peakRss``, ``Peak_RSS``, ``"peak_rss"`` -> ``peak_rss``."""
    text = name.strip().strip("\"'").strip()
    text = _CAMEL.sub("_", text).lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(text, text)


def resolve_timezone(name: str | None) -> tzinfo | None:
    """The zone for dates without an offset: None for ``local`` (this machine's), else an IANA zone.

    ValueError for a name the zone database does not know.
    """
    if name is None or name.strip().lower() == LOCAL_TIMEZONE:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin, or local"
        ) from None


def _header(line: str) -> tuple[str, list[str]] | None:
    """The separator and canonical field names if ``line`` is a trace header, else None.

    The separator is the one that makes the most known field names; of two columns naming the
    same field, the first counts.
    """
    best: tuple[int, str, list[str]] | None = None
    for delimiter in _DELIMITERS:
        names = [canonical_field(part) for part in _split(line, delimiter)]
        known = sum(name in TRACE_FIELDS for name in names)
        if best is None or known > best[0]:
            best = (known, delimiter, names)
    if best is None or best[0] < 2 or not {"process", "name"} & set(best[2]):
        return None
    known, delimiter, names = best
    return delimiter, [name if name not in names[:i] else "" for i, name in enumerate(names)]


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == "\t" or '"' not in line:
        return line.split(delimiter)
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration):
        return line.split(delimiter)


def _rows(handle: Iterable[str], skipped: Counter, progress: Progress | None) -> Iterator[dict[str, str]]:
    """Each data line as {field: text}; a later header line (concatenated traces) takes over."""
    delimiter: str | None = None
    names: list[str] = []
    for number, line in enumerate(handle, 1):
        if progress is not None and number % 8192 == 0:
            progress.update()
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if delimiter is None or canonical_field(_FIRST_VALUE.split(line, 1)[0]) in TRACE_FIELDS:
            found = _header(line)
            if found is not None:
                delimiter, names = found
                continue
        if delimiter is None:
            skipped["corrupt_line"] += 1
            continue
        values = _split(line, delimiter)
        if len(values) != len(names):
            skipped["corrupt_line"] += 1
            continue
        yield dict(zip(names, values))
    if delimiter is None:
        skipped["missing_header"] += 1
    if progress is not None:
        progress.update()


def _read(row: dict[str, str], field: str, parser: Callable[[str], Any]) -> Any:
    text = row.get(field)
    if text is None:
        return None
    try:
        return parser(text)
    except (ValueError, ArithmeticError):
        raise _Skip(f"unreadable_{field}") from None


def _process(row: dict[str, str]) -> str:
    process = row.get("process", "").strip()
    if process and process != "-":
        return process
    name = row.get("name", "").strip()
    if name and name != "-":
        match = _SUFFIX.match(name)
        return match.group(1) if match else name
    raise _Skip("unknown_process")


def _state(row: dict[str, str], oom_exit_statuses: Collection[int]) -> TaskState:
    status = row.get("status", "-").strip().upper()
    exit_status = _read(row, "exit", _exit_status)
    if status in _UNFINISHED:
        raise _Skip("unfinished_task")
    if status == "CACHED":
        raise _Skip("cached_task")
    if status not in _STATES and status != "-":
        raise _Skip("unknown_status")
    if status == "ABORTED":
        return TaskState.cancelled
    if exit_status in oom_exit_statuses:
        return TaskState.oom_killed
    if status == "-":
        return TaskState.succeeded if exit_status in (None, 0) else TaskState.erred
    return _STATES[status]


def _exit_status(text: str) -> int | None:
    text = text.strip()
    if text in ("", "-"):
        return None
    if not _EXIT_STATUS.fullmatch(text):
        raise ValueError(f"not an exit status: {text!r}")
    return int(text)


def _key(row: dict[str, str]) -> str | None:
    for field in ("name", "task_id", "hash"):
        value = row.get(field, "").strip()
        if value and value != "-":
            return value
    return None


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _observation(
    row: dict[str, str], run_id: str, zone: tzinfo | None, oom_exit_statuses: Collection[int]
) -> TaskObservation:
    task = _process(row)
    state = _state(row, oom_exit_statuses)

    def when(field: str) -> float | None:
        return _read(row, field, lambda text: parse_timestamp(text, zone))

    submit, start, complete = when("submit"), when("start"), when("complete")
    realtime = _read(row, "realtime", parse_duration)
    if realtime is None and start is not None and complete is not None and complete >= start:
        realtime = complete - start
    if realtime is None:
        raise _Skip("unknown_realtime")
    if complete is None and submit is not None:
        since_submit = _read(row, "duration", parse_duration)
        complete = submit + since_submit if since_submit is not None else None
    submitted = submit if submit is not None else start
    if submitted is None:
        raise _Skip("unknown_submit_time")
    cpu_percent = _read(row, "%cpu", parse_percent)
    cpus = _read(row, "cpus", parse_count)
    memory = _read(row, "memory", parse_memory)
    time_limit = _read(row, "time", parse_duration)
    features: dict[str, Any] = {
        "input_bytes": _read(row, "rchar", parse_memory),
        "requested_cpus": cpus,
        "requested_memory_bytes": memory,
        "requested_time_s": _whole(time_limit) if time_limit is not None else None,
        "attempt": _read(row, "attempt", parse_count),
    }
    return TaskObservation(
        run_id=run_id,
        task=task[:253],
        tag=task,
        key=_key(row),
        input_features={name: value for name, value in features.items() if value is not None},
        submitted_at=submitted,
        started_at=start,
        finished_at=complete,
        duration_s=realtime,
        cpu_seconds=cpu_percent / 100 * realtime if cpu_percent is not None else None,
        peak_memory_bytes=_read(row, "peak_rss", parse_memory),
        requested=Resources(cpus=cpus, memory_bytes=memory),
        state=state,
    )


def parse_nextflow(
    handle: Iterable[str],
    run_id: str,
    skipped: Counter,
    progress: Progress | None = None,
    *,
    timezone: tzinfo | None = None,
    oom_exit_statuses: Collection[int] = OOM_EXIT_STATUSES,
) -> Iterator[TaskObservation]:
    """Task observations of the finished task attempts in Nextflow trace text, in file order.

    ``timezone`` reads dates without an offset (None: this machine's local time). Every
    non-blank line that is not a header is either yielded or counted once in ``skipped``.
    """
    for row in _rows(handle, skipped, progress):
        try:
            yield _observation(row, run_id, timezone, oom_exit_statuses)
        except _Skip as skip:
            skipped[skip.reason] += 1
        except (ValidationError, ValueError, OverflowError):
            skipped["invalid_record"] += 1


def _zone_label(zone: tzinfo | None) -> str:
    """The zone dates were read in, for the run's labels: ``Europe/Berlin``, ``local (CET)``."""
    if zone is not None:
        return str(zone)
    return f"{LOCAL_TIMEZONE} ({datetime.now().astimezone().tzname()})"


def import_nextflow(
    path: str | os.PathLike[str],
    store: RunStore | str | os.PathLike[str],
    *,
    run_id: str | None = None,
    workflow: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    timezone: str | None = LOCAL_TIMEZONE,
    oom_exit_statuses: Collection[int] = OOM_EXIT_STATUSES,
) -> ImportResult:
    """Import a Nextflow trace (plain or gzip, tab- or comma-separated) into ``store`` as one run.

    ``timezone`` is an IANA name (``UTC``, ``Europe/Berlin``) or ``local``; the zone used is kept
    in the run's labels. ValueError for an unknown zone, before anything is read.
    """
    zone = resolve_timezone(timezone)
    path = Path(path)
    store = store if isinstance(store, RunStore) else RunStore(store)
    skipped: Counter = Counter()
    with open_text(path) as handle:
        tracker = Progress(handle, progress)
        observations = list(parse_nextflow(handle, "pending", skipped, tracker, timezone=zone,
                                           oom_exit_statuses=oom_exit_statuses))
    name = path.name.removesuffix(".gz")
    for suffix in (".txt", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    writer = store.open_run(
        workflow=workflow or name, source="nextflow", run_id=run_id,
        labels={"file": path.name, "timezone": _zone_label(zone)},
    )
    with writer:
        imported = writer.append_many(o.model_copy(update={"run_id": writer.run_id}) for o in observations)
        if observations:
            writer.close(
                started_at=min(o.submitted_at for o in observations),
                finished_at=max(o.end_time for o in observations),
            )
    read = imported + sum(skipped.values()) - skipped["missing_header"]
    return ImportResult(run_id=writer.run_id, path=writer.path, imported=imported, skipped=skipped,
                        source="nextflow", read=read, unit="tasks")
