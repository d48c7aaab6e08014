"""Helpers for telemetry tests: small runs written through the real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalable.telemetry.schema import Resources, TaskObservation
from scalable.telemetry.store import RunStore


def make_task(run_id: str, i: int = 0, **overrides) -> TaskObservation:
    fields = dict(
        run_id=run_id,
        task="run_simulation",
        tag="demeter",
        key=f"run_simulation-{i}",
        input_features={"num_nodes": 100 + i, "scenario_type": "peak" if i % 2 else "base"},
        submitted_at=1000.0 + i,
        started_at=1001.0 + i,
        finished_at=1011.0 + i,
        duration_s=10.0,
        cpu_seconds=9.5,
        peak_memory_bytes=(1 + i) * 1024**2,
        worker_resources=Resources(cpus=2, memory_bytes=8 * 1024**3),
    )
    fields.update(overrides)
    return TaskObservation(**fields)


def write_run(store: RunStore, n: int, **task_overrides) -> str:
    with store.open_run(workflow="test") as writer:
        writer.append_many(make_task(writer.run_id, i, **task_overrides) for i in range(n))
    return writer.run_id


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")
