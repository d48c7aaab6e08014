"""The run store: one directory per workflow run, append-only JSONL files inside it.

Layout of a runs directory::

    <runs_dir>/<run_id>/run.json          RunInfo, rewritten atomically (open, close)
    <runs_dir>/<run_id>/tasks.jsonl       TaskObservation, one JSON object per line
    <runs_dir>/<run_id>/workers.jsonl     WorkerObservation
    <runs_dir>/<run_id>/decisions.jsonl   ScalingDecisionRecord
    <runs_dir>/.cache/                    the loader's columnar cache (never a run)

Several writers, in threads or processes, may append to the same run at once. Each line is
handed to the kernel by one ``os.write`` on a file descriptor opened with ``O_APPEND``, so the
kernel places every write at the current end of the file and lines never interleave. Nothing
is buffered in user space: once ``append`` returns, the record is in the page cache and any
reader sees it whole. ``close`` fsyncs the files and marks the run finished.

The volume may be writable by tenants' pods, so nothing here follows a symbolic link inside
it: a run directory and the files in it are opened through a directory descriptor with
``O_NOFOLLOW`` (:func:`open_run_file`), anything but a regular file (a FIFO, a device such as
``/dev/zero``) is refused, and reads stop at the size the file had when it was opened and at
:data:`MAX_RUN_FILE_BYTES`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES, RunInfo

__all__ = [
    "RUN_INFO_FILE",
    "RunStore",
    "MAX_RUN_FILE_BYTES",
    "RunWriter",
    "default_runs_dir",
    "open_run_file",
    "read_run_file",
    "is_run_dir_name",
    "new_run_id",
]

RUN_INFO_FILE = "run.json"
RUNS_DIR_ENV = "SCALABLE_RUNS_DIR"

#: most bytes handed to one os.write by append_many; always a whole number of lines
_BULK_WRITE_BYTES = 1 << 20
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,252}$")


#: the largest run file read (two million task records); a larger one is refused, not read
MAX_RUN_FILE_BYTES = 2 << 30
#: the largest run.json read
MAX_RUN_INFO_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_run_file(runs_dir: str | os.PathLike[str], run_id: str, name: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``<runs_dir>/<run_id>/<name>``, following no symbolic link at the run
    directory or the file, and only if that is a regular file (``OSError`` otherwise: ``ELOOP``
    for a link, ``EINVAL`` for a FIFO, socket or device). ``O_NONBLOCK`` keeps a FIFO from
    blocking the open; it changes nothing for a regular file."""
    dir_fd = os.open(os.path.join(os.fspath(runs_dir), run_id), _DIR_FLAGS)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", f"{run_id}/{name}")
    return fd


def read_fd(fd: int, size: int) -> bytes:
    """At most ``size`` bytes from ``fd`` (its size when opened: what grows after is not read)."""
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 16 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_run_file(runs_dir: str | os.PathLike[str], run_id: str, name: str,
                  limit: int = MAX_RUN_FILE_BYTES) -> tuple[bytes, os.stat_result, os.stat_result]:
    """The bytes of a run file as :func:`open_run_file` opens it, at most the size it had when
    opened (a file that grows meanwhile is read to that point), refused beyond ``limit``;
    with its ``fstat`` before and after the read (a caller tells a changing file by them)."""
    fd = open_run_file(runs_dir, run_id, name)
    try:
        before = os.fstat(fd)
        if before.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", f"{run_id}/{name}")
        data = read_fd(fd, before.st_size)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return data, before, after


def default_runs_dir() -> Path:
    """``$SCALABLE_RUNS_DIR`` if set, else ``./.scalable/runs`` (relative to the working dir)."""
    value = os.environ.get(RUNS_DIR_ENV)
    return Path(value) if value else Path(".scalable") / "runs"


def new_run_id(now: float | None = None) -> str:
    """A run id that sorts by time and does not collide: UTC timestamp plus 48 random bits."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    millis = int((now % 1) * 1000)
    return f"{stamp}{millis:03d}Z-{secrets.token_hex(6)}"


def is_run_dir_name(name: str) -> bool:
    """Whether a directory entry can be a run: hidden names (the cache, temp files) cannot."""
    return bool(_RUN_ID.fullmatch(name))  # fullmatch: "$" would also accept a trailing newline


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half.

    The temp file is hidden and unique per writer, synced before the rename, and the directory
    is synced after it so the rename survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """One write for the whole buffer; a short write (disk full, signal) continues the rest."""
    written = os.write(fd, data)
    if written < len(data):  # pragma: no cover - regular files write whole buffers
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class RunWriter:
    """Appends records to one run. A context manager; ``close`` finalises the run.

    Thread-safe: writes and ``close`` take a lock; every batch of whole lines goes out in a
    single ``os.write`` on an ``O_APPEND`` descriptor.
    """

    def __init__(self, path: Path, info: RunInfo) -> None:
        self.path = path
        self.run_id = info.run_id
        self._info = info
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def info(self) -> RunInfo:
        """The run's ``run.json`` as this writer last wrote it."""
        return self._info

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunWriter({str(self.path)!r})"

    def _write(self, kind: str, data: bytes) -> None:
        """Hand ``data`` (whole lines) to the kernel in one write.

        The lock makes a write and ``close`` exclusive, so a descriptor is never used after it
        was closed (and perhaps reused by another file); the kernel orders writers in other
        processes through ``O_APPEND``.
        """
        with self._lock:
            if self._closed:
                raise ValueError(f"run {self.run_id} is closed")
            fd = self._fds.get(kind)
            if fd is None:  # never through a link: a tasks.jsonl linked elsewhere is refused (ELOOP)
                fd = open_run_file(self.path.parent, self.path.name, RECORD_FILES[kind], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                self._fds[kind] = fd
            _write_all(fd, data)

    def _coerce(self, record: BaseModel | Mapping[str, Any]) -> BaseModel:
        if isinstance(record, Mapping):
            data = dict(record)
            data.setdefault("run_id", self.run_id)
            kind = data.get("kind", "task")
            model = RECORD_TYPES.get(kind)
            if model is None or kind not in RECORD_FILES:
                raise ValueError(f"cannot append a record of kind {kind!r}; kinds: {sorted(RECORD_FILES)}")
            record = model.model_validate(data)
        kind = getattr(record, "kind", None)
        if not isinstance(record, BaseModel) or kind not in RECORD_FILES:
            raise TypeError(f"expected a telemetry record ({', '.join(sorted(RECORD_FILES))}), got {record!r}")
        if type(record) is not RECORD_TYPES[kind]:
            raise TypeError(f"record of kind {kind!r} must be a {RECORD_TYPES[kind].__name__}")
        if getattr(record, "run_id", self.run_id) != self.run_id:
            raise ValueError(f"record belongs to run {record.run_id!r}, not to {self.run_id!r}")  # type: ignore[attr-defined]
        return record

    def append(self, record: BaseModel | Mapping[str, Any]) -> None:
        """Append one record as one line.

        ``record`` is a TaskObservation, WorkerObservation or ScalingDecisionRecord of this run,
        or a mapping that validates as one (``kind`` defaults to ``"task"``, ``run_id`` to this
        run). Invalid records raise before anything is written.
        """
        record = self._coerce(record)
        line = record.model_dump_json().encode() + b"\n"
        self._write(record.kind, line)  # type: ignore[attr-defined]

    def append_many(self, records: Iterable[BaseModel | Mapping[str, Any]]) -> int:
        """Append records in bulk and return how many.

        Lines are grouped per file into writes of up to about 1 MiB, each a whole number of
        lines, so the file never shows a partial line even with other writers appending.
        """
        pending: dict[str, list[bytes]] = {}
        sizes: dict[str, int] = {}
        count = 0
        for record in records:
            record = self._coerce(record)
            kind = record.kind  # type: ignore[attr-defined]
            line = record.model_dump_json().encode() + b"\n"
            pending.setdefault(kind, []).append(line)
            sizes[kind] = sizes.get(kind, 0) + len(line)
            count += 1
            if sizes[kind] >= _BULK_WRITE_BYTES:
                self._write(kind, b"".join(pending.pop(kind)))
                sizes[kind] = 0
        for kind, lines in pending.items():
            if lines:
                self._write(kind, b"".join(lines))
        return count

    def close(self, **run_info_fields: Any) -> None:
        """Sync the record files, then write ``run.json`` with ``finished_at`` (idempotent).

        Extra keyword arguments update fields of ``run.json`` (labels, for example).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fds, self._fds = self._fds, {}
        try:
            for fd in fds.values():
                os.fsync(fd)
        finally:
            for fd in fds.values():
                os.close(fd)
        update = {"finished_at": time.time(), **run_info_fields}
        self._info = RunInfo.model_validate({**self._info.model_dump(), **update})
        atomic_write_bytes(self.path / RUN_INFO_FILE, self._info.model_dump_json(indent=2).encode() + b"\n")

    @property
    def closed(self) -> bool:
        return self._closed


class RunStore:
    """A runs directory: creates runs for writing and lists the runs it holds."""

    def __init__(self, runs_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(runs_dir) if runs_dir is not None else default_runs_dir()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def open_run(
        self,
        workflow: str = "default",
        source: str = "scalable",
        run_id: str | None = None,
        **run_info_fields: Any,
    ) -> RunWriter:
        """Create a run (or join an existing one by ``run_id``) and return its writer.

        A new run gets a fresh id and its ``run.json`` at once, so a run that never closes is
        still visible. Joining an existing run keeps its ``run.json`` as it is: several processes
        can write one run, each with its own writer.
        """
        if run_id is None:
            run_id = new_run_id()
        elif not is_run_dir_name(run_id):
            raise ValueError(
                f"invalid run id {run_id!r}: use letters, digits and . _ : @ + -, not starting with . or -"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / run_id
        try:
            path.mkdir()
            created = True
        except FileExistsError:
            created = False
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise OSError(errno.ELOOP if os.path.islink(path) else errno.ENOTDIR,
                              "a run must be a directory, not a link or a file", str(path))
        existing = None if created else _read_run_info(path)
        if existing is not None:
            return RunWriter(path, existing)
        info = RunInfo(run_id=run_id, workflow=workflow, source=source, **run_info_fields)
        data = info.model_dump_json(indent=2).encode() + b"\n"
        if created:
            atomic_write_bytes(path / RUN_INFO_FILE, data)
        else:
            try:
                fd = os.open(path / RUN_INFO_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read_run_info(path) or info
            else:
                os.close(fd)
                atomic_write_bytes(path / RUN_INFO_FILE, data)
        return RunWriter(path, info)

    def run_ids(self) -> list[str]:
        """Ids of the runs in the store, oldest first (ids sort by creation time)."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if is_run_dir_name(e.name) and e.is_dir(follow_symlinks=False))

    def run_info(self, run_id: str) -> RunInfo | None:
        """The run's ``run.json``, or None when it is missing or unreadable."""
        return _read_run_info(self.root / run_id)

    def run_path(self, run_id: str) -> Path:
        return self.root / run_id


def _read_run_info(path: Path) -> RunInfo | None:
    try:
        data, _, _ = read_run_file(path.parent, path.name, RUN_INFO_FILE, MAX_RUN_INFO_BYTES)
        return RunInfo.model_validate(json.loads(data))
    except (OSError, ValueError, RecursionError):
        return None
