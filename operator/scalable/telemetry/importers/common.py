"""What importers share: reading plain or gzip text, and the result they report."""

from __future__ import annotations

import gzip
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ImportResult:
    """How an import went: the run written, jobs imported, and jobs skipped by reason.

    ``read`` is the number of data lines read, where the importer counts them (each is then
    imported or skipped); ``unit`` is what one line is called in the summary.
    """

    run_id: str | None
    path: Path | None
    imported: int = 0
    skipped: Counter = field(default_factory=Counter)
    source: str = ""
    read: int | None = None
    unit: str = "jobs"

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def reasons(self, limit: int = 5) -> str:
        """The most common skip reasons with their counts, the rest summed up."""
        common = self.skipped.most_common()
        text = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in common[:limit])
        rest = sum(n for _, n in common[limit:])
        return text + (f", {rest} for {len(common) - limit} other reasons" if rest else "")

    def summary(self) -> str:
        reasons = self.reasons()
        skipped = f"skipped {self.skipped_total}" + (f" ({reasons})" if reasons else "")
        read = f"read {self.read} rows, " if self.read is not None else ""
        return f"{read}imported {self.imported} {self.unit} into run {self.run_id}, {skipped}"


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a text file, gunzipping it when it starts with the gzip magic (any file name).

    Undecodable bytes become U+FFFD, so a damaged line is a corrupt line, not a crash.
    """
    raw = open(path, "rb")
    try:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if magic == _GZIP_MAGIC else raw
        return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)
    except BaseException:
        raw.close()
        raise


class Progress:
    """Bytes of the underlying (compressed) file consumed so far, for a progress bar."""

    def __init__(self, handle: IO[str], callback: Callable[[int, int], None] | None) -> None:
        self.callback = callback
        self._raw = _raw_file(handle)
        try:
            self.total = os.fstat(self._raw.fileno()).st_size if self._raw is not None else 0
        except (OSError, ValueError):
            self.total = 0

    def update(self) -> None:
        if self.callback is not None and self._raw is not None:
            try:
                self.callback(self._raw.tell(), self.total)
            except (OSError, ValueError):
                pass


def _raw_file(handle: IO[str]):
    stream = getattr(handle, "buffer", None)
    if isinstance(stream, gzip.GzipFile):
        return stream.fileobj
    return stream
