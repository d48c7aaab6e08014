"""Reading a runs directory into tables, fast and without ever failing on bad data.

``load_tasks`` turns every ``tasks.jsonl`` under a runs directory into one pandas DataFrame.
Bad input is expected (a crash leaves a truncated line, another tool writes a newer schema,
a disk hands back garbage): such a line or file is skipped and counted by reason, and each
reason is reported once per load as a :class:`TelemetryWarning`.

Speed comes from two places:

* a cold parse hands many files at once to ``pyarrow.json`` and checks the records with
  vectorised compute; only a batch that fails any check is parsed again line by line with
  pydantic, which finds and counts exactly the bad lines;
* a Parquet cache in ``<runs_dir>/.cache/`` holds the parsed rows of every run together with
  each run's file identity (size, mtime_ns, inode). A warm load stats the task files, reads the
  cache's Parquet segments and re-parses only runs that were added or changed; rows of deleted
  runs are dropped. A cache that cannot be read is rebuilt; one that cannot be written is skipped.

Both parsers accept and reject the same records, with one leniency shared by both: a ``null``
input feature, or a ``null`` where a field has a default, is treated as absent.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import stat
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from scalable.telemetry.schema import (
    MAX_BYTES,
    MAX_CPU_SECONDS,
    MAX_CPUS,
    MAX_EPOCH_S,
    MAX_MAGNITUDE,
    MAX_SECONDS,
    RECORD_FILES,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    RunInfo,
    ScalingDecisionRecord,
    TaskObservation,
    TaskState,
    WorkerObservation,
)
from scalable.telemetry.store import RUN_INFO_FILE, default_runs_dir, is_run_dir_name, read_run_file

__all__ = [
    "CACHE_DIR",
    "SKIP_REASONS",
    "TASK_COLUMNS",
    "SkipReport",
    "TaskTable",
    "TelemetryWarning",
    "load_decisions",
    "load_run_infos",
    "load_tasks",
    "load_workers",
]

log = logging.getLogger(__name__)

CACHE_DIR = ".cache"
_CACHE_FORMAT = 4  # 4: rows out of the schema's ranges (an infinity, 1e400) are no longer cached
_CACHE_SUBDIR = f"tasks-v{_CACHE_FORMAT}"
_MANIFEST = "manifest.json"
#: compact into one segment when there are more, or when dead rows outnumber this share of live ones
_MAX_SEGMENTS = 8
_MAX_DEAD_SHARE = 0.25
_ORPHAN_AGE_S = 3600.0
_TASKS_FILE = RECORD_FILES["task"]
_BATCH_BYTES = 32 << 20
_FEATURE_PREFIX = "feature."
#: cache columns of a feature's text values; its numbers (and bools) live under _FEATURE_PREFIX
_TEXT_PREFIX = "text."

#: reasons a line or file is skipped, with the words used to report them
SKIP_REASONS: dict[str, str] = {
    "corrupt_line": "corrupt lines (not a JSON object)",
    "truncated_line": "truncated lines (last line of a file cut short)",
    "unknown_schema_version": "records of an unknown schema version",
    "invalid_record": "invalid records (do not match the record schema)",
    "unreadable_file": "unreadable files",
}

#: the fixed columns of ``TaskTable.frame``, in order; feature columns follow
TASK_COLUMNS: list[str] = [
    "run_id",
    "task",
    "tag",
    "key",
    "submitted_at",
    "started_at",
    "finished_at",
    "end_time",
    "duration_s",
    "cpu_seconds",
    "peak_memory_bytes",
    "worker_cpus",
    "worker_memory_bytes",
    "requested_cpus",
    "requested_memory_bytes",
    "state",
    "worker",
]
_STRING_COLUMNS = ["run_id", "task", "tag", "key", "state", "worker"]
_FLOAT_COLUMNS = [c for c in TASK_COLUMNS if c not in _STRING_COLUMNS and c != "end_time"]
_STATES = [s.value for s in TaskState]

_RESOURCES = pa.struct([("cpus", pa.float64()), ("memory_bytes", pa.int64())])
#: the shape pyarrow.json must find; input_features is inferred, anything else is an error
_RAW_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int64()),
        ("kind", pa.string()),
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("tag", pa.string()),
        ("key", pa.string()),
        ("submitted_at", pa.float64()),
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("duration_s", pa.float64()),
        ("cpu_seconds", pa.float64()),
        ("peak_memory_bytes", pa.int64()),
        ("worker_resources", _RESOURCES),
        ("requested", _RESOURCES),
        ("state", pa.string()),
        ("worker", pa.string()),
    ]
)
_RAW_NAMES = set(_RAW_SCHEMA.names) | {"input_features"}
_CACHE_SCHEMA = pa.schema(
    [(c, pa.string() if c in _STRING_COLUMNS else pa.float64()) for c in TASK_COLUMNS if c != "end_time"]
)


class TelemetryWarning(UserWarning):
    """Telemetry was skipped while loading; the message says what and how much."""


@dataclass
class SkipReport:
    """What a load skipped: counts by reason, and the first place each reason was seen."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.examples.setdefault(reason, where)

    def merge(self, other: SkipReport | dict[str, Any]) -> None:
        counts = other.counts if isinstance(other, SkipReport) else other.get("counts", {})
        examples = other.examples if isinstance(other, SkipReport) else other.get("examples", {})
        for reason, count in counts.items():
            self.add(reason, examples.get(reason, "?"), count)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def __bool__(self) -> bool:
        return self.total > 0

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": dict(self.examples)}

    def warn(self, where: str, stacklevel: int = 3) -> None:
        """One warning per reason, with its count and the first place it was seen."""
        for reason in SKIP_REASONS:
            count = self.counts.get(reason, 0)
            if count:
                warnings.warn(
                    f"telemetry in {where}: skipped {count} {SKIP_REASONS[reason]}, "
                    f"first at {self.examples.get(reason, '?')}",
                    TelemetryWarning,
                    stacklevel=stacklevel,
                )


@dataclass
class TaskTable:
    """All task observations of a runs directory.

    ``frame`` has the columns of :data:`TASK_COLUMNS` and then one ``feature.<name>`` column per
    input feature (float64 when every value is a number or bool, else strings); ``end_time`` is
    always set: ``finished_at``, else start (or submit) time plus ``duration_s``.
    """

    frame: pd.DataFrame
    feature_columns: list[str]
    skipped: SkipReport
    runs_dir: Path
    n_runs: int = 0

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def feature_names(self) -> list[str]:
        return [c[len(_FEATURE_PREFIX) :] for c in self.feature_columns]


# --------------------------------------------------------------------------- reading files


@dataclass
class _RunFile:
    run: str
    path: str
    name: str
    key: list[int] | None


def _file_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _scan(root: Path, filename: str, report: SkipReport) -> list[_RunFile]:
    """Run directories holding ``filename``, sorted by run, with the identity of each file."""
    try:
        scanned = [e for e in os.scandir(root) if is_run_dir_name(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        report.add("unreadable_file", f"{root}: {exc.strerror}")
        return []
    entries = []
    for entry in sorted(scanned, key=lambda e: e.name):
        if entry.is_symlink():  # a run linked in from elsewhere (another namespace's) is not this one's
            report.add("unreadable_file", f"{entry.name}: a symbolic link, not a run directory")
        elif entry.is_dir(follow_symlinks=False):
            entries.append(entry.name)
    files = []
    base = os.fspath(root)
    for name in entries:
        path = os.path.join(base, name, filename)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            report.add("unreadable_file", f"{name}/{filename}: {exc.strerror}")
            continue
        if not stat.S_ISREG(st.st_mode):  # a link, a FIFO (would hang the reader), a device (/dev/zero)
            report.add("unreadable_file", f"{name}/{filename}: not a regular file")
            continue
        files.append(_RunFile(name, path, filename, _file_key(st)))
    return files


def _read(run_file: _RunFile, report: SkipReport) -> bytes | None:
    """The file's bytes; if it changed while being read, its key is dropped (never cached)."""
    try:  # no link followed, regular files only, at most the size it had when opened
        data, before, after = read_run_file(os.path.dirname(os.path.dirname(run_file.path)), run_file.run, run_file.name)
    except OSError as exc:
        report.add("unreadable_file", f"{run_file.run}/{run_file.name}: {exc.strerror or exc}")
        run_file.key = None
        return None
    if not (before.st_size == after.st_size == len(data) and before.st_mtime_ns == after.st_mtime_ns):
        run_file.key = None
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
    else:
        run_file.key = _file_key(after)
    return data


# --------------------------------------------------------------------------- parsing tasks


def _render_number(values: pd.Series) -> pd.Series:
    def render(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    return values.map(render)


class _Columns:
    """Column lists of normalised task rows, built from validated records (the slow path)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in _CACHE_SCHEMA.names}
        self.num: dict[str, list[Any]] = {}
        self.txt: dict[str, list[Any]] = {}
        self.n = 0

    def add(self, run: str, rec: TaskObservation) -> None:
        c = self.cols
        c["run_id"].append(rec.run_id)
        c["task"].append(rec.task)
        c["tag"].append(rec.tag)
        c["key"].append(rec.key)
        c["submitted_at"].append(rec.submitted_at)
        c["started_at"].append(rec.started_at)
        c["finished_at"].append(rec.finished_at)
        c["duration_s"].append(rec.duration_s)
        c["cpu_seconds"].append(rec.cpu_seconds)
        c["peak_memory_bytes"].append(rec.peak_memory_bytes)
        c["worker_cpus"].append(rec.worker_resources.cpus)
        c["worker_memory_bytes"].append(rec.worker_resources.memory_bytes)
        c["requested_cpus"].append(rec.requested.cpus)
        c["requested_memory_bytes"].append(rec.requested.memory_bytes)
        c["state"].append(rec.state)
        c["worker"].append(rec.worker)
        for name, value in rec.input_features.items():
            if isinstance(value, str):
                target, value = self.txt, value
            else:
                target, value = self.num, float(value)
            column = target.get(name)
            if column is None:
                column = target[name] = [None] * self.n
            column.append(value)
        self.n += 1
        for column in self.num.values():
            if len(column) < self.n:
                column.append(None)
        for column in self.txt.values():
            if len(column) < self.n:
                column.append(None)

    def table(self) -> pa.Table:
        # float(): integers beyond 2**53 (peak memory as an int) round instead of raising ArrowInvalid
        arrays = [pa.array([None if v is None else float(v) for v in self.cols[f.name]] if pa.types.is_floating(f.type)
                           else self.cols[f.name], type=f.type) for f in _CACHE_SCHEMA]
        names = list(_CACHE_SCHEMA.names)
        for name, values in self.num.items():
            arrays.append(pa.array(values, type=pa.float64()))
            names.append(_FEATURE_PREFIX + name)
        for name, values in self.txt.items():
            arrays.append(pa.array(values, type=pa.string()))
            names.append(_TEXT_PREFIX + name)
        return pa.Table.from_arrays(arrays, names=names)


#: fields with a default that a ``null`` in the file stands for (pyarrow cannot tell them apart)
_DEFAULTED = ("schema_version", "kind", "input_features", "worker_resources", "requested", "state")


def _parse_slow(run_file: _RunFile, data: bytes, out: _Columns, report: SkipReport) -> None:
    """Line by line with full pydantic validation; every bad line is counted by reason."""
    where = f"{run_file.run}/{run_file.name}"
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: a nesting bomb
            reason = "truncated_line" if number == last and not ends_clean else "corrupt_line"
            report.add(reason, f"{where}:{number + 1}")
            continue
        if not isinstance(obj, dict):
            report.add("corrupt_line", f"{where}:{number + 1}")
            continue
        for name in _DEFAULTED:
            if name in obj and obj[name] is None:
                del obj[name]
        version = obj.get("schema_version", SCHEMA_VERSION)
        if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
            report.add("unknown_schema_version", f"{where}:{number + 1} (version {version!r})")
            continue
        features = obj.get("input_features")
        if isinstance(features, dict) and any(v is None for v in features.values()):
            obj["input_features"] = {k: v for k, v in features.items() if v is not None}
        try:
            record = TaskObservation.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            report.add("invalid_record", f"{where}:{number + 1} ({loc}: {first['msg']})")
            continue
        out.add(run_file.run, record)


def _primitive(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_null(t)


def _all(mask: pa.ChunkedArray | pa.Array) -> bool:
    return bool(pc.all(mask.fill_null(False)).as_py() is not False) if len(mask) else True


_LONG_LINE = 16 << 10


def _has_long_line(data: bytes) -> bool:
    """True if ``data`` may hold a line of ``_LONG_LINE`` bytes or more (no record is that long,
    a nesting bomb is). Every such line covers a whole window of half that size without a newline,
    so probing one ``find`` per window is enough: cheap, and never misses one."""
    step = _LONG_LINE // 2
    return any(data.find(b"\n", start, start + step) < 0 for start in range(0, len(data) - step + 1, step))


def _parse_fast(data: bytes, lines: int) -> pa.Table | None:
    """pyarrow.json over many files at once; None unless every record passes every check.

    ``lines`` is how many records ``data`` holds (it must have no blank lines): a mismatch
    means pyarrow saw the lines differently, and the exact parser takes over.
    """
    if _has_long_line(data):
        return None  # pyarrow's JSON reader crashes the process on deeply nested lines
    if not data.startswith(b"{") or data.count(b"\n{") != lines - 1:
        return None  # a line that is not an object; pyarrow 26 segfaults on a `null` line
    try:
        raw = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(use_threads=True, block_size=4 << 20),
            parse_options=pj.ParseOptions(explicit_schema=_RAW_SCHEMA, unexpected_field_behavior="infer"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        return None
    n = raw.num_rows
    if n != lines or not set(raw.column_names) <= _RAW_NAMES:
        return None
    for name in ("worker_resources", "requested"):
        if raw.schema.field(name).type != _RESOURCES:
            return None
    features_type = raw.schema.field("input_features").type if "input_features" in raw.column_names else None
    if features_type is not None and not pa.types.is_null(features_type):
        if not pa.types.is_struct(features_type):
            return None
        if not all(_primitive(features_type.field(i).type) for i in range(features_type.num_fields)):
            return None
    col = raw.column
    if not _all(pc.equal(col("schema_version").fill_null(SCHEMA_VERSION), SCHEMA_VERSION)):
        return None
    if not _all(pc.equal(col("kind").fill_null("task"), "task")):
        return None
    for name in ("run_id", "task"):
        length = pc.utf8_length(col(name))
        if col(name).null_count or not _all(pc.and_(pc.greater_equal(length, 1), pc.less_equal(length, 253))):
            return None
    for name in ("submitted_at", "duration_s"):
        if col(name).null_count:
            return None
    # the schema's ranges (NaN fails both comparisons, an infinity the upper one)
    bounded = [(col("submitted_at"), MAX_EPOCH_S), (col("started_at"), MAX_EPOCH_S), (col("finished_at"), MAX_EPOCH_S),
               (col("duration_s"), MAX_SECONDS), (col("cpu_seconds"), MAX_CPU_SECONDS), (col("peak_memory_bytes"), MAX_BYTES)]
    for name in ("worker_resources", "requested"):
        bounded.append((pc.struct_field(col(name), "cpus"), MAX_CPUS))
        bounded.append((pc.struct_field(col(name), "memory_bytes"), MAX_BYTES))
    for values, most in bounded:
        filled = values.fill_null(0)
        if not _all(pc.and_(pc.greater_equal(filled, 0), pc.less_equal(filled, most))):
            return None
    state = col("state").fill_null(TaskState.succeeded.value)
    if not _all(pc.is_in(state, value_set=pa.array(_STATES))):
        return None

    arrays: list[Any] = []
    names: list[str] = []

    def as_float(values: Any) -> Any:
        # unsafe: integers beyond 2**53 (a seed, an id) round as the exact parser's float() does
        return pc.cast(values, pa.float64(), safe=False)

    resources = {
        "worker_cpus": ("worker_resources", "cpus"),
        "worker_memory_bytes": ("worker_resources", "memory_bytes"),
        "requested_cpus": ("requested", "cpus"),
        "requested_memory_bytes": ("requested", "memory_bytes"),
    }
    for name in _CACHE_SCHEMA.names:
        if name in resources:
            parent, child = resources[name]
            values = as_float(pc.struct_field(col(parent), child))
        elif name == "state":
            values = state
        elif name in _STRING_COLUMNS:
            values = col(name)
        else:
            values = as_float(col(name))
        arrays.append(values)
        names.append(name)
    if features_type is not None and pa.types.is_struct(features_type):
        feats = col("input_features")
        for i in range(features_type.num_fields):
            child = features_type.field(i)
            values = pc.struct_field(feats, [i])
            if pa.types.is_null(child.type):
                continue
            if pa.types.is_string(child.type):
                arrays.append(values)
                names.append(_TEXT_PREFIX + child.name)
            else:
                numbers = as_float(values)
                if not _all(pc.less_equal(pc.abs(numbers.fill_null(0)), float(MAX_MAGNITUDE))):
                    return None  # an infinite, NaN or huge feature: the exact parser counts it
                arrays.append(numbers)
                names.append(_FEATURE_PREFIX + child.name)
    return pa.Table.from_arrays(arrays, names=names)


def _parse_runs(
    files: list[_RunFile], report: SkipReport, per_run: dict[str, SkipReport]
) -> dict[str, tuple[pa.Table, int, int]]:
    """Parse the task files of ``files`` (read here), fast in batches, exact where needed.

    Returns, per run, the table holding its rows and their offset and count in that table.
    """
    found: dict[str, tuple[pa.Table, int, int]] = {}
    batch: list[tuple[_RunFile, bytes, int]] = []
    size = 0

    def exact(run_file: _RunFile, data: bytes) -> None:
        lines = data.count(b"\n")
        if data.endswith(b"\n") and b"\n\n" not in data and not data.startswith(b"\n"):
            table = _parse_fast(data, lines)
            if table is not None:
                found[run_file.run] = (table, 0, table.num_rows)
                return
        own = per_run.setdefault(run_file.run, SkipReport())
        out = _Columns()
        _parse_slow(run_file, data, out, own)
        if out.n:
            found[run_file.run] = (out.table(), 0, out.n)

    def flush() -> None:
        nonlocal batch, size
        if len(batch) == 1:
            exact(batch[0][0], batch[0][1])
        elif batch:
            counts = [c for _, _, c in batch]
            table = _parse_fast(b"".join(d for _, d, _ in batch), sum(counts))
            if table is not None:
                offset = 0
                for (run_file, _, _), count in zip(batch, counts):
                    found[run_file.run] = (table, offset, count)
                    offset += count
            else:
                for run_file, data, _ in batch:
                    exact(run_file, data)
        batch, size = [], 0

    for run_file in files:
        data = _read(run_file, report)
        if data is None:
            per_run.setdefault(run_file.run, SkipReport())
            continue
        if not data:
            continue
        clean = data.endswith(b"\n") and b"\n\n" not in data and not data.startswith(b"\n")
        if not clean:
            flush()
            exact(run_file, data)
            continue
        batch.append((run_file, data, data.count(b"\n")))
        size += len(data)
        if size >= _BATCH_BYTES:
            flush()
    flush()
    return found


# --------------------------------------------------------------------------- the cache
#
# <runs_dir>/.cache/tasks-v<format>/manifest.json lists Parquet segments and, per run, the file key it
# was parsed from, where its rows are (segment, offset, rows) and what was skipped. Segments
# are written once and never changed; the manifest is replaced atomically after them. A load
# that re-parses a few runs writes only those rows as a new small segment; when segments pile
# up or hold many dead rows, the live rows are compacted into one.


@dataclass
class _Cache:
    directory: Path
    runs: dict[str, dict[str, Any]]
    segments: dict[str, pa.Table]
    sizes: dict[str, int]


def _cache_dir(root: Path) -> Path:
    return root / CACHE_DIR / _CACHE_SUBDIR


def _read_cache(root: Path) -> _Cache | None:
    directory = _cache_dir(root)
    for _attempt in range(2):  # a concurrent compaction may remove a segment between reads
        try:
            manifest = json.loads((directory / _MANIFEST).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.debug("ignoring unreadable telemetry cache manifest in %s: %s", directory, exc)
            return None
        try:
            if manifest.get("format") != _CACHE_FORMAT or manifest.get("schema_version") != SCHEMA_VERSION:
                return None
            segments = {name: pq.read_table(directory / name, pre_buffer=True) for name in manifest["segments"]}
            runs = manifest["runs"]
            for entry in runs.values():
                if entry["rows"] and entry["offset"] + entry["rows"] > segments[entry["segment"]].num_rows:
                    return None
            return _Cache(directory, runs, segments, {n: t.num_rows for n, t in segments.items()})
        except FileNotFoundError:
            continue
        except Exception as exc:  # a damaged cache is rebuilt, whatever the damage
            log.debug("ignoring damaged telemetry cache in %s: %s", directory, exc)
            return None
    return None


def _write_cache(root: Path, old: _Cache | None, runs: dict[str, Any], new_rows: pa.Table | None,
                 compacted: pa.Table | None) -> None:
    """Write the new segment (or the compacted one), then the manifest; drop what is unused."""
    directory = _cache_dir(root)
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        segments = dict(old.sizes) if old is not None and compacted is None else {}
        table = compacted if compacted is not None else new_rows
        if table is not None and table.num_rows:
            name = f"seg-{time.time_ns():x}-{secrets.token_hex(4)}.parquet"
            tmp = directory / f".{name}.tmp"
            written.append(tmp)
            pq.write_table(table, tmp, compression="snappy", row_group_size=256 * 1024)
            os.replace(tmp, directory / name)
            written[-1] = directory / name
            segments[name] = table.num_rows
            for entry in runs.values():
                if entry.get("segment") is None:
                    entry["segment"] = name
        live = {entry["segment"] for entry in runs.values() if entry["rows"]}
        manifest = {
            "format": _CACHE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "segments": [n for n in segments if n in live],
            "runs": runs,
        }
        atomic_replace(directory / _MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
    except Exception as exc:  # the cache is optional: a load never fails for want of it
        log.debug("not caching telemetry in %s: %s", directory, exc)
        for path in written:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        return
    dead = set(old.sizes) - live if old is not None else set()
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name == _MANIFEST or entry.name in live:
            continue
        try:
            if entry.name in dead or now - entry.stat().st_mtime > _ORPHAN_AGE_S:
                os.unlink(entry.path)
        except OSError:
            pass


def atomic_replace(path: Path, data: bytes) -> None:
    """Replace a cache file atomically; no fsync, since a lost cache is only rebuilt."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _concat(pieces: list[pa.Table]) -> pa.Table:
    pieces = [p for p in pieces if p.num_rows]
    if not pieces:
        return _CACHE_SCHEMA.empty_table()
    if len(pieces) == 1:
        return pieces[0]
    return pa.concat_tables(pieces, promote_options="default")


def _assemble(files: list[_RunFile], where: dict[str, tuple[pa.Table, int, int]]) -> pa.Table:
    """The rows of ``files`` in their order, as few slices as possible."""
    segments: list[list[Any]] = []
    for run_file in files:
        found = where.get(run_file.run)
        if found is None or not found[2]:
            continue
        source, start, count = found
        last = segments[-1] if segments else None
        if last is not None and last[0] is source and last[1] + last[2] == start:
            last[2] += count
        else:
            segments.append([source, start, count])
    return _concat([source.slice(start, count) for source, start, count in segments])


def _build(root: Path, use_cache: bool, report: SkipReport) -> tuple[pa.Table, int]:
    """The normalised task rows of every run, in run order, from the cache where it is valid.

    A run whose file could not be read, or changed while it was read, stays out of the cache
    and is read again next time.
    """
    files = _scan(root, _TASKS_FILE, report)
    cache = _read_cache(root) if use_cache else None
    cached_runs = cache.runs if cache is not None else {}

    fresh = [f for f in files if cached_runs.get(f.run, {}).get("key") != f.key]
    fresh_names = {f.run for f in fresh}
    where: dict[str, tuple[pa.Table, int, int]] = {}
    if cache is not None:
        for run, entry in cached_runs.items():
            if entry["rows"] and run not in fresh_names:
                where[run] = (cache.segments[entry["segment"]], entry["offset"], entry["rows"])
    per_run: dict[str, SkipReport] = {}
    found = _parse_runs(fresh, report, per_run) if fresh else {}
    where.update(found)
    table = _assemble(files, where)

    runs_meta: dict[str, Any] = {}
    new_offset = 0
    for run_file in files:
        if run_file.run in fresh_names:
            skipped = per_run.get(run_file.run, SkipReport())
            report.merge(skipped)
            if run_file.key is None:
                continue
            rows = found[run_file.run][2] if run_file.run in found else 0
            runs_meta[run_file.run] = {"key": run_file.key, "rows": rows, "segment": None, "offset": new_offset}
            if skipped:
                runs_meta[run_file.run]["skipped"] = skipped.as_dict()
            new_offset += rows
        else:
            entry = cached_runs[run_file.run]
            if "skipped" in entry:
                report.merge(entry["skipped"])
            runs_meta[run_file.run] = entry

    if use_cache and runs_meta != cached_runs:
        cacheable = [f for f in files if f.run in runs_meta]
        live_rows = sum(e["rows"] for e in runs_meta.values())
        stored_rows = sum(cache.sizes.values()) if cache is not None else 0
        new_files = [f for f in cacheable if runs_meta[f.run]["segment"] is None]
        segments_after = len(cache.sizes) + 1 if cache is not None else 1
        if cache is None or segments_after > _MAX_SEGMENTS or stored_rows + new_offset - live_rows > _MAX_DEAD_SHARE * max(live_rows, 1):
            compacted = table if len(cacheable) == len(files) else _assemble(cacheable, where)
            offset = 0
            for run_file in cacheable:
                entry = runs_meta[run_file.run] = {**runs_meta[run_file.run], "segment": None, "offset": offset}
                offset += entry["rows"]
            _write_cache(root, cache, runs_meta, None, compacted)
        else:
            _write_cache(root, cache, runs_meta, _assemble(new_files, found) if new_offset else None, None)
    return table, len(files)


def _to_frame(table: pa.Table) -> tuple[pd.DataFrame, list[str]]:
    names = set(table.column_names)
    base = {name: table.column(name) for name in _CACHE_SCHEMA.names}
    frame = pa.table(base).to_pandas(split_blocks=True, self_destruct=False)
    finished = frame["finished_at"].to_numpy()
    start = frame["started_at"].to_numpy()
    start = np.where(np.isnan(start), frame["submitted_at"].to_numpy(), start)
    frame.insert(TASK_COLUMNS.index("end_time"), "end_time", np.where(np.isnan(finished), start + frame["duration_s"].to_numpy(), finished))

    features = sorted(
        {n.split(".", 1)[1] for n in names if n.startswith((_FEATURE_PREFIX, _TEXT_PREFIX))}
    )
    columns: dict[str, Any] = {}
    for name in features:
        num_name, txt_name = _FEATURE_PREFIX + name, _TEXT_PREFIX + name
        num = table.column(num_name) if num_name in names else None
        txt = table.column(txt_name) if txt_name in names else None
        if txt is None or txt.null_count == len(txt):
            columns[num_name] = num.to_numpy() if num is not None else np.full(len(frame), np.nan)
            continue
        if num is None or num.null_count == len(num):
            columns[num_name] = txt.to_pandas()
            continue
        text = pd.Series(txt.to_pandas(), dtype=object)
        if num is not None:
            numbers = num.to_pandas()
            present = numbers.notna() & text.isna()
            text[present] = _render_number(numbers[present])
        columns[num_name] = text.where(text.notna(), None).to_numpy(dtype=object)
    if columns:
        frame = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    for name in _FLOAT_COLUMNS:
        if frame[name].dtype != np.float64:
            frame[name] = frame[name].astype(np.float64)
    return frame, [_FEATURE_PREFIX + n for n in features]


def load_tasks(runs_dir: str | os.PathLike[str] | None = None, *, cache: bool = True) -> TaskTable:
    """Every task observation under ``runs_dir`` (default: :func:`default_runs_dir`).

    Never raises on bad telemetry: skipped lines and files are in ``TaskTable.skipped`` and
    reported once per reason as a :class:`TelemetryWarning`. With ``cache=False`` nothing is
    read from or written to ``<runs_dir>/.cache``.
    """
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    report = SkipReport()
    table, n_runs = _build(root, cache, report)
    frame, feature_columns = _to_frame(table)
    report.warn(str(root))
    return TaskTable(frame=frame, feature_columns=feature_columns, skipped=report, runs_dir=root, n_runs=n_runs)


# --------------------------------------------------------------------------- other records


def _iter_records(root: Path, kind: str, model: type[BaseModel], report: SkipReport) -> Iterator[tuple[str, BaseModel]]:
    for run_file in _scan(root, RECORD_FILES[kind], report):
        data = _read(run_file, report)
        if data is None:
            continue
        where = f"{run_file.run}/{run_file.name}"
        lines = data.split(b"\n")
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                reason = "truncated_line" if number == len(lines) - 1 else "corrupt_line"
                report.add(reason, f"{where}:{number + 1}")
                continue
            if not isinstance(obj, dict):
                report.add("corrupt_line", f"{where}:{number + 1}")
                continue
            version = obj.get("schema_version", SCHEMA_VERSION)
            if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
                report.add("unknown_schema_version", f"{where}:{number + 1} (version {version!r})")
                continue
            try:
                yield run_file.run, model.model_validate(obj)
            except ValidationError:
                report.add("invalid_record", f"{where}:{number + 1}")


def _records_frame(root: Path, kind: str, model: type[BaseModel]) -> tuple[pd.DataFrame, SkipReport]:
    report = SkipReport()
    rows = []
    for _, record in _iter_records(root, kind, model, report):
        row = record.model_dump()
        resources = row.pop("resources", None)
        if isinstance(resources, dict):
            row["cpus"] = resources.get("cpus")
            row["memory_bytes_limit"] = resources.get("memory_bytes")
        rows.append(row)
    columns = [n for n in model.model_fields if n != "resources"]
    if model is WorkerObservation:
        columns += ["cpus", "memory_bytes_limit"]
    frame = pd.DataFrame(rows, columns=columns)
    if "time" in frame and len(frame):
        frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    report.warn(str(root), stacklevel=4)
    return frame, report


def load_decisions(runs_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Scaling decisions of all runs, one row per decision, ordered by time.

    Columns are the fields of :class:`ScalingDecisionRecord`. Bad lines are skipped and
    warned about as in :func:`load_tasks`; the report is in ``frame.attrs["skipped"]``.
    """
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    frame, report = _records_frame(root, "scaling_decision", ScalingDecisionRecord)
    frame.attrs["skipped"] = report.as_dict()
    return frame


def load_workers(runs_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Worker samples of all runs, ordered by time; ``resources`` is flattened to
    ``cpus`` and ``memory_bytes_limit``."""
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    frame, report = _records_frame(root, "worker", WorkerObservation)
    frame.attrs["skipped"] = report.as_dict()
    return frame


def load_run_infos(runs_dir: str | os.PathLike[str] | None = None) -> tuple[list[RunInfo], SkipReport]:
    """The ``run.json`` of every run that has a readable one, and a report of those that don't."""
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    report = SkipReport()
    infos = []
    for run_file in _scan(root, RUN_INFO_FILE, report):
        data = _read(run_file, report)
        if data is None:
            continue
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            report.add("corrupt_line", f"{run_file.run}/{RUN_INFO_FILE}")
            continue
        version = obj.get("schema_version", SCHEMA_VERSION) if isinstance(obj, dict) else None
        if isinstance(obj, dict) and (type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS):
            report.add("unknown_schema_version", f"{run_file.run}/{RUN_INFO_FILE}")
            continue
        try:
            infos.append(RunInfo.model_validate(obj))
        except ValidationError:
            report.add("invalid_record", f"{run_file.run}/{RUN_INFO_FILE}")
    return infos, report
