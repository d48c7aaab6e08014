"""TelemetryCollector without Dask: pending work, start times, and what it keeps in memory."""

from __future__ import annotations

from scalable.telemetry.dask_plugin import TelemetryCollector


def _started(key, at, worker="tcp://w1"):
    return (at, {"phase": "started", "key": key, "worker": worker, "time": at})


def _finished(key, started, state="succeeded", worker="tcp://w1"):
    return (started + 1, {
        "phase": "finished", "key": key, "worker": worker, "worker_name": "demeter-1", "started_at": started,
        "finished_at": started + 1, "duration_s": 1.0, "cpu_seconds": 0.1, "peak_memory_bytes": 1 << 20,
        "nthreads": 1, "memory_limit": 1 << 30, "state": state, "error": None,
    })


def _collector():
    records = []
    return TelemetryCollector("run-1", records.append), records


def test_pending_work_carries_the_start_time_of_running_tasks():
    collector, _ = _collector()
    for i in range(3):
        collector.register(f"k{i}", "run", "demeter", {"i": i}, submitted_at=10.0 + i)
    collector.handle(_started("k0", 20.0))
    pending = collector.pending()["demeter"]
    assert [p["input_features"]["i"] for p in pending] == [0, 1, 2], "submission order"
    assert pending[0]["started_at"] == 20.0 and "started_at" not in pending[1]


def test_a_long_session_holds_only_the_tasks_a_record_may_still_come_for():
    collector, records = _collector()
    for i in range(1000):
        key = f"k{i}"
        collector.register(key, "run", "demeter", {"i": i}, submitted_at=float(i))
        collector.handle(_started(key, i + 0.5))
        collector.handle(_finished(key, i + 0.5))
    assert len(records) == 1000 and len(collector) == 0
    assert collector.submitted_per_tag == {"demeter": 1000}
    # live events replayed at close are recognised and not recorded twice
    for i in range(1000):
        collector.handle(_started(f"k{i}", i + 0.5))
        collector.handle(_finished(f"k{i}", i + 0.5))
    assert len(records) == 1000 and len(collector) == 0 and collector.pending() == {}


def test_cancelled_tasks_are_dropped_but_one_still_running_is_recorded_first():
    collector, records = _collector()
    collector.register("queued", "run", "demeter", {}, submitted_at=1.0)
    collector.register("running", "run", "demeter", {}, submitted_at=1.0)
    collector.handle(_started("running", 2.0))
    collector.forget("queued")
    collector.forget("running")
    assert collector.pending() == {} and len(collector) == 1
    collector.handle(_finished("running", 2.0))
    assert [r.key for r in records] == ["running"] and len(collector) == 0


def test_a_failed_task_is_kept_for_its_retry_and_each_execution_recorded_once():
    collector, records = _collector()
    collector.register("k", "run", "demeter", {}, submitted_at=1.0)
    collector.handle(_started("k", 2.0))
    collector.handle(_finished("k", 2.0, state="erred"))
    assert len(collector) == 1 and collector.pending() == {}
    collector.handle(_finished("k", 5.0))  # Dask retried it
    collector.handle(_finished("k", 2.0, state="erred"))  # replayed at close
    assert [(r.started_at, r.state) for r in records] == [(2.0, "erred"), (5.0, "succeeded")]
    assert len(collector) == 0


def test_a_task_on_a_lost_worker_is_recorded_and_stays_pending_for_its_rerun():
    collector, records = _collector()
    collector.register("k", "run", "demeter", {}, submitted_at=1.0)
    collector.handle(_started("k", 2.0, worker="tcp://w1"))
    collector.handle((9.0, {"worker": "tcp://w1", "memory": True, "time": 9.0, "rss": 123}))
    assert [r.state for r in records] == ["oom_killed"]
    assert len(collector.pending()["demeter"]) == 1
    collector.handle(_started("k", 10.0, worker="tcp://w2"))
    collector.handle(_finished("k", 10.0, worker="tcp://w2"))
    assert [r.state for r in records] == ["oom_killed", "succeeded"] and len(collector) == 0


def test_worker_events_become_samples_with_tag_and_resources_recorded_once():
    collector, records = _collector()
    collector.worker_tags = {"tag-demeter": "demeter"}
    base = {"worker": "tcp://127.0.0.1:1", "name": "demeter-3", "nthreads": 2, "memory_limit": 1 << 30,
            "resources": {"tag-demeter": 1_000_000}}
    joined = (5.0, {**base, "event": "joined", "time": 5.0, "tasks_executing": 0})
    left = (9.0, {**base, "event": "left", "time": 9.0, "memory_bytes": None})
    other = (6.0, {**base, "worker": "tcp://127.0.0.1:2", "name": "x", "resources": {}, "event": "joined", "time": 6.0})
    for event in (joined, left, other):
        collector.handle_worker(event)
    collector.replay({"scalable-worker": [joined, left, other]})
    assert [(r.worker, r.time, r.tag) for r in records] == [("demeter-3", 5.0, "demeter"), ("demeter-3", 9.0, "demeter"), ("x", 6.0, None)]
    assert records[0].resources.cpus == 2 and records[0].resources.memory_bytes == 1 << 30
    assert records[0].tasks_executing == 0 and collector.workers_recorded == 3
