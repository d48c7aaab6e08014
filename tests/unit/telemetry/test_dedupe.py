"""Idempotency keys: stable for the same record, different for any other; a run's keys are read
incrementally, whole lines only, and again from the start when a file shrank."""

from __future__ import annotations

import json

from scalable.telemetry.dedupe import RunKeys, model_key, record_key
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.store import RunStore


def _task(i: int, run_id: str = "r1", **extra) -> TaskObservation:
    return TaskObservation(run_id=run_id, task="simulate", submitted_at=1.7e9 + i, duration_s=1.5,
                           peak_memory_bytes=2**30 + i, input_features={"i": i}, **extra)


def test_the_key_is_the_records_own_and_ignores_key_order():
    a = {"kind": "task", "task": "t", "submitted_at": 1.0, "input_features": {"x": 1, "y": "z"}}
    b = {"input_features": {"y": "z", "x": 1}, "submitted_at": 1.0, "task": "t", "kind": "task"}
    assert record_key(a) == record_key(b)
    assert record_key(a) != record_key({**a, "submitted_at": 1.0000001})
    assert record_key(a) != record_key({**a, "kind": "worker"})
    # a validated record's key is the key of the line the store writes for it
    record = _task(3)
    assert model_key(record) == record_key(json.loads(record.model_dump_json()))
    assert model_key(record) != model_key(_task(3, worker="w1"))


def test_run_keys_read_what_was_appended_since_and_only_whole_lines(tmp_path):
    store = RunStore(tmp_path)
    writer = store.open_run(run_id="r1")
    writer.append_many([_task(i) for i in range(3)])
    keys = RunKeys(tmp_path / "r1", ["tasks.jsonl", "workers.jsonl"])
    assert keys.refresh() == {model_key(_task(i)) for i in range(3)}

    path = tmp_path / "r1" / "tasks.jsonl"
    line = _task(3).model_dump_json()
    with open(path, "a") as f:  # a writer in the middle of a line: not a record yet
        f.write(line[:20])
    assert model_key(_task(3)) not in keys.refresh()
    with open(path, "a") as f:
        f.write(line[20:] + "\n" + "{not json\n")
    assert keys.refresh() == {model_key(_task(i)) for i in range(4)}

    # cut back (a roll-back after a full disk): read again from the start
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1]))
    assert keys.refresh() == {model_key(_task(0))}
    writer.close()
