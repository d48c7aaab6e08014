"""The local spool: batches wait here until the operator has stored them (at-least-once).

Layout (one directory per destination, so a batch never goes to another operator or workflow)::

    <root>/<sha256(url, namespace/name)[:16]>/destination.json   where its batches go
    <root>/<...>/<run_id>.<index>.<hash>.json                     a request body, waiting
    <root>/<...>/failed/<same name> and .error                    refused for good (400, 409, 413)

A batch is written atomically (temp file, fsync, rename) before the first attempt, and deleted
only after the operator answered 200, so a crash, an operator that is down or one that answers
5xx loses nothing: the next drain sends it again, and the operator deduplicates what it stored
already (the name is the hash of the body: spooling the same run twice adds nothing).

:meth:`Spool.drain` sends the waiting batches oldest first, retrying a batch the operator cannot
take now with :class:`~scalable.telemetry.backoff.Backoff` (exponential, full jitter, bounded by
failures in a row and by a deadline); when the policy gives up, the rest stays for the next
drain. A refusal of one batch (an invalid record) moves it to ``failed/`` with the reason and
the drain goes on; a refusal of every request (401, 403, 404: token, RBAC or URL) stops it with
everything still spooled. One drain at a time per destination (``flock``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalable.telemetry.backoff import Backoff
from scalable.telemetry.batches import RunBatches
from scalable.telemetry.push import IngestClient, PushResult, Refused, Unavailable
from scalable.telemetry.store import atomic_write_bytes

__all__ = ["Spool", "DrainReport", "default_spool_root", "SPOOL_ENV"]

SPOOL_ENV = "SCALABLE_TELEMETRY_SPOOL"
_DESTINATION = "destination.json"
_LOCK = ".lock"


def default_spool_root() -> Path:
    """``$SCALABLE_TELEMETRY_SPOOL``, else ``$XDG_CACHE_HOME/scalable/spool`` (~/.cache/...)."""
    if os.environ.get(SPOOL_ENV):
        return Path(os.environ[SPOOL_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "scalable" / "spool"


@dataclass
class DrainReport:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    retries: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    remaining: int = 0
    #: why the drain stopped with batches left (the operator away, or refusing every request)
    stopped: str | None = None
    #: the drain stopped on a refusal of every request (token, RBAC, URL), not on an absence
    refused: bool = False
    busy: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and not self.busy


class Spool:
    def __init__(self, root: str | os.PathLike[str], url: str, namespace: str, name: str) -> None:
        destination = {"url": url.rstrip("/"), "workflow": f"{namespace}/{name}"}
        digest = hashlib.sha256(json.dumps(destination, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / digest
        self.destination = destination

    def _ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / _DESTINATION
        if not path.exists():
            atomic_write_bytes(path, json.dumps(self.destination, indent=1).encode() + b"\n")

    def add(self, run: RunBatches) -> int:
        """Spool every batch of a run; return how many were new to the spool."""
        self._ensure()
        added = 0
        for index, body in enumerate(run.bodies()):
            data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            name = f"{run.run_id}.{index:05d}.{hashlib.sha256(data).hexdigest()[:16]}.json"
            path = self.dir / name
            if path.exists() or (self.dir / "failed" / name).exists():
                continue
            atomic_write_bytes(path, data)
            added += 1
        return added

    def pending(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        names = [e.name for e in entries if e.is_file() and e.name.endswith(".json")
                 and not e.name.startswith(".") and e.name != _DESTINATION]
        return [self.dir / n for n in sorted(names)]

    def failed(self) -> list[Path]:
        return sorted((self.dir / "failed").glob("*.json"))

    def _fail(self, path: Path, reason: str) -> None:
        failed = self.dir / "failed"
        failed.mkdir(exist_ok=True)
        (failed / (path.name + ".error")).write_text(reason + "\n")
        os.replace(path, failed / path.name)

    def drain(
        self,
        client: IngestClient,
        backoff: Backoff = Backoff(),
        progress: Callable[[Path, PushResult], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> DrainReport:
        """Send what waits, oldest first; see the module's description for when it stops."""
        report = DrainReport()
        start = clock()
        if not self.dir.exists():
            return report
        self._ensure()
        lock_fd = os.open(self.dir / _LOCK, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy = True
                report.remaining = len(self.pending())
                return report
            failures = 0
            while True:
                batch = self.pending()
                if not batch:
                    break
                path = batch[0]
                try:
                    data = path.read_bytes()
                    result = client.push(data)
                except FileNotFoundError:
                    continue
                except Unavailable as exc:
                    failures += 1
                    wait = backoff.delay(failures, exc.retry_after, rng)
                    if backoff.gives_up(failures, clock() - start, wait):
                        report.stopped = str(exc)
                        break
                    report.retries += 1
                    sleep(wait)
                    continue
                except Refused as exc:
                    if exc.batch_only:
                        self._fail(path, str(exc))
                        report.failed.append((path.name, str(exc)))
                        failures = 0
                        continue
                    report.stopped, report.refused = str(exc), True
                    break
                failures = 0
                path.unlink(missing_ok=True)
                report.sent += 1
                report.accepted += result.accepted
                report.duplicates += result.duplicates
                if progress is not None:
                    progress(path, result)
            report.remaining = len(self.pending())
            return report
        finally:
            os.close(lock_fd)  # releases the flock
            report.seconds = clock() - start


