from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from scalable.telemetry.schema import RunInfo, ScalingDecisionRecord, TaskObservation, WorkerObservation
from scalable.telemetry.store import RunStore, default_runs_dir, is_run_dir_name, new_run_id

from .conftest import make_task


def test_default_runs_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SCALABLE_RUNS_DIR", raising=False)
    assert default_runs_dir() == Path(".scalable") / "runs"
    monkeypatch.setenv("SCALABLE_RUNS_DIR", str(tmp_path))
    assert default_runs_dir() == tmp_path
    assert RunStore().root == tmp_path


def test_round_trip_of_every_record_kind(store):
    with store.open_run(workflow="wf", source="scalable", host="laptop", labels={"a": "b"}) as writer:
        task = make_task(writer.run_id, 3, input_features={"n": 1, "x": 2.5, "flag": True, "s": "str"})
        worker = WorkerObservation(run_id=writer.run_id, time=5.0, worker="w1", memory_bytes=10)
        decision = ScalingDecisionRecord(
            run_id=writer.run_id, time=6.0, tag="t", action="scale_up", from_workers=1, to_workers=3, reason="queue"
        )
        writer.append(task)
        writer.append(worker)
        writer.append(decision)
    path = writer.path
    assert [TaskObservation.model_validate_json(l) for l in (path / "tasks.jsonl").read_text().splitlines()] == [task]
    assert WorkerObservation.model_validate_json((path / "workers.jsonl").read_text()) == worker
    assert ScalingDecisionRecord.model_validate_json((path / "decisions.jsonl").read_text()) == decision
    info = RunInfo.model_validate_json((path / "run.json").read_text())
    assert info.run_id == writer.run_id and info.workflow == "wf" and info.host == "laptop"
    assert info.labels == {"a": "b"}
    assert info.finished_at is not None and info.finished_at >= info.started_at
    assert store.run_ids() == [writer.run_id]


def test_run_json_exists_while_the_run_is_open(store):
    writer = store.open_run()
    info = store.run_info(writer.run_id)
    assert info is not None and info.finished_at is None
    writer.close()
    assert store.run_info(writer.run_id).finished_at is not None
    leftovers = [p.name for p in writer.path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_append_accepts_a_mapping_and_fills_the_run_id(store):
    with store.open_run() as writer:
        writer.append({"task": "t", "submitted_at": 1.0, "duration_s": 2.0})
        writer.append({"kind": "worker", "time": 1.0, "worker": "w"})
    line = json.loads((writer.path / "tasks.jsonl").read_text())
    assert line["run_id"] == writer.run_id and line["task"] == "t" and line["schema_version"] == 1
    assert (writer.path / "workers.jsonl").exists()


def test_invalid_records_raise_before_anything_is_written(store):
    with store.open_run() as writer:
        with pytest.raises(ValidationError):
            writer.append({"task": "t", "submitted_at": 1.0, "duration_s": -1.0})
        with pytest.raises(ValueError, match="belongs to run"):
            writer.append(make_task("another-run"))
        with pytest.raises((TypeError, ValueError)):
            writer.append(RunInfo(run_id=writer.run_id))
    assert not (writer.path / "tasks.jsonl").exists()


def test_append_after_close_raises(store):
    writer = store.open_run()
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.append(make_task(writer.run_id))


def test_run_ids_are_unique_and_sort_by_time():
    ids = [new_run_id(1_700_000_000.0 + i) for i in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert all(is_run_dir_name(i) for i in ids)
    assert len({new_run_id(1_700_000_000.0) for _ in range(200)}) == 200


@pytest.mark.parametrize("bad", ["", ".cache", "../x", "a/b", "-x", "x" * 300])
def test_unsafe_run_ids_are_refused(store, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        store.open_run(run_id=bad)


def test_hidden_and_plain_files_are_not_runs(store):
    run_id = store.open_run().run_id
    (store.root / ".cache").mkdir()
    (store.root / "notes.txt").write_text("x")
    assert store.run_ids() == [run_id]
    assert RunStore(store.root / "missing").run_ids() == []


def test_joining_a_run_keeps_its_run_json(store):
    first = store.open_run(workflow="original", run_id="shared-run")
    second = store.open_run(workflow="other", run_id="shared-run")
    assert second.info.workflow == "original"
    first.close()
    second.close()


def _hammer(root: str, run_id: str, worker: int, n: int, bulk: bool) -> None:
    store = RunStore(root)
    pad = "x" * (500 + 900 * worker)  # lines of different lengths, several kilobytes
    with store.open_run(run_id=run_id) as writer:
        records = [
            make_task(run_id, i, key=f"w{worker}-{i}", input_features={"pad": pad, "worker": worker})
            for i in range(n)
        ]
        if bulk:
            writer.append_many(records)
        else:
            for record in records:
                writer.append(record)


@pytest.mark.parametrize("bulk", [False, True])
def test_concurrent_writers_in_several_processes_write_whole_lines(tmp_path, bulk):
    root = tmp_path / "runs"
    RunStore(root).open_run(run_id="shared").close()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(root), "shared", w, 300, bulk)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = (root / "shared" / "tasks.jsonl").read_bytes()
    assert data.endswith(b"\n")
    keys = set()
    for line in data.splitlines():
        record = TaskObservation.model_validate_json(line)
        keys.add(record.key)
    assert len(data.splitlines()) == 1200
    assert keys == {f"w{w}-{i}" for w in range(4) for i in range(300)}


def test_concurrent_threads_share_one_writer(store):
    with store.open_run() as writer:
        def work(t: int) -> None:
            for i in range(200):
                writer.append(make_task(writer.run_id, i, key=f"{t}-{i}"))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = (writer.path / "tasks.jsonl").read_bytes().splitlines()
    assert len({TaskObservation.model_validate_json(l).key for l in lines}) == 800


def test_close_syncs_files(store, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    with store.open_run() as writer:
        writer.append(make_task(writer.run_id))
        writer.append({"kind": "worker", "time": 1.0, "worker": "w"})
    assert len(synced) >= 3  # two record files, run.json (and its directory)
