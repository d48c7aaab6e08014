"""Telemetry the operator records by itself, so a team that never instruments its code still
builds a history: its own scaling decisions and the queue figures behind them, and the memory
each worker used as Prometheus saw it.

Records go into the namespace's runs directory (see :mod:`storage`), one run per workflow and
UTC day (``operator-<workflow>-<yyyymmdd>``, source ``operator``), through the telemetry
library's :class:`RunStore`, so the loaders and advisors read them like any other run.
Writers are kept open per run and closed when the day changes or the workflow goes away.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from scalable.controller.storage import TelemetryRoot
from scalable.scaling.decision import TagDecision
from scalable.telemetry.schema import WorkerObservation
from scalable.telemetry.store import RunStore, RunWriter

__all__ = ["OperatorRecorder", "operator_run_id"]


def operator_run_id(workflow: str, now: float) -> str:
    return f"operator-{workflow}-{time.strftime('%Y%m%d', time.gmtime(now))}"


class OperatorRecorder:
    def __init__(self, root: TelemetryRoot) -> None:
        self.root = root
        self._writers: dict[tuple[str, str], RunWriter] = {}

    def _writer(self, namespace: str, workflow: str, now: float) -> RunWriter:
        run_id = operator_run_id(workflow, now)
        key = (namespace, workflow)
        writer = self._writers.get(key)
        if writer is not None and writer.run_id == run_id:
            return writer
        if writer is not None:
            writer.close()
        store = RunStore(self.root.runs_dir(namespace, create=True))
        writer = store.open_run(workflow=workflow, source="operator", run_id=run_id, namespace=namespace)
        self._writers[key] = writer
        return writer

    def decisions(self, namespace: str, workflow: str, decisions: Iterable[TagDecision], now: float | None = None) -> int:
        now = time.time() if now is None else now
        writer = self._writer(namespace, workflow, now)
        records = [d.to_record(writer.run_id, now) for d in decisions]
        return writer.append_many(records)

    def worker_memory(self, namespace: str, workflow: str, tag: str, memory: Mapping[str, float],
                      resources: Mapping[str, Any] | None = None, now: float | None = None) -> int:
        """One WorkerObservation per worker series (keyed by instance) with its memory in use."""
        now = time.time() if now is None else now
        writer = self._writer(namespace, workflow, now)
        records = [
            WorkerObservation(run_id=writer.run_id, time=now, worker=worker, tag=tag, memory_bytes=int(value),
                              resources=dict(resources or {}))
            for worker, value in sorted(memory.items())
        ]
        return writer.append_many(records)

    def forget(self, namespace: str, workflow: str) -> None:
        writer = self._writers.pop((namespace, workflow), None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
