"""Idempotency keys of telemetry records, and the keys a run directory already holds.

A client that pushes at least once may send a record twice (a retry after a lost answer, a
spool replayed, ``scalable telemetry push`` run again). The receiver stores a record only if
its key is new to the run. The key is derived from the record itself, so it needs no field in
the schema and no cooperation from older clients: the SHA-256 of the record's canonical JSON
(keys sorted, as the run store writes it and reads it back), kind included. Two records that
agree in every field (task, key, submission and finish times, worker, features, ...) are the
same observation.

:class:`RunKeys` reads the keys of the records already in a run's JSONL files and keeps them
per file with the offset read so far; the next call reads only what was appended since (a file
that shrank or was replaced is read again from the start). Lines that are not whole JSON
objects are skipped, as the loader skips them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from scalable.telemetry.store import open_run_file

__all__ = ["record_key", "model_key", "RunKeys"]

_READ_CHUNK = 1 << 20


def record_key(record: dict[str, Any]) -> str:
    """The idempotency key of a record given as the JSON object it is stored as."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def model_key(record: BaseModel) -> str:
    """The key of a validated record: of the JSON the run store writes for it."""
    return record_key(json.loads(record.model_dump_json()))


class _FileKeys:
    __slots__ = ("ident", "offset", "keys")

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.offset = 0
        self.keys: set[str] = set()


class RunKeys:
    """The keys of the records in one run directory's files, read incrementally."""

    def __init__(self, run_dir: Path, file_names: Iterable[str]) -> None:
        self.run_dir = Path(run_dir)
        self.file_names = sorted(set(file_names))
        self._files: dict[str, _FileKeys] = {}

    def refresh(self) -> set[str]:
        """Bring every file up to date; return the union of keys."""
        out: set[str] = set()
        for name in self.file_names:
            out |= self._refresh_file(name)
        return out

    def _refresh_file(self, name: str) -> set[str]:
        try:  # through the run directory's descriptor, no link followed, regular files only
            fd = open_run_file(self.run_dir.parent, self.run_dir.name, name)
        except FileNotFoundError:
            self._files.pop(name, None)
            return set()
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            state = self._files.get(name)
            if state is None or state.ident != ident or st.st_size < state.offset:
                state = self._files[name] = _FileKeys(ident)
            if st.st_size > state.offset:
                os.lseek(fd, state.offset, os.SEEK_SET)
                self._read_lines(fd, state, st.st_size - state.offset)
            return state.keys
        finally:
            os.close(fd)

    @staticmethod
    def _read_lines(fd: int, state: _FileKeys, size: int) -> None:
        """Read up to ``size`` bytes of whole lines from the current offset (a partial last line
        is left for the next call: a writer may be in the middle of it)."""
        rest = b""
        remaining = size
        while remaining > 0:
            chunk = os.read(fd, min(_READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            data = rest + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                state.offset += len(line) + 1
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    state.keys.add(record_key(obj))
