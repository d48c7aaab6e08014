"""ScalableSession on a real LocalCluster: the design.md example, tag routing, telemetry states."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dask
import pytest
from distributed import wait

from scalable.session.session import ScalableSession
from scalable.telemetry.schema import ScalingDecisionRecord, TaskObservation, WorkerObservation

from . import workloads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _records(run_dir: Path, name: str, model):
    path = run_dir / name
    return [model.model_validate_json(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_design_example_records_every_task_and_the_learned_advisor_trains_on_it(write_manifest):
    from scalable import LearnedAdvisor

    path = write_manifest(scaling={"max_scale_down_step": 2})
    session = ScalableSession.from_yaml(path, target="local")
    client = session.start()
    futures = [client.submit(workloads.run_demeter_scenario, i, tag="demeter", size_mb=4 + 4 * (i % 5)) for i in range(100)]
    results = client.gather(futures)
    session.close()
    assert results == list(range(100))

    run_dir = session.runs_dir / session.run_id
    tasks = _records(run_dir, "tasks.jsonl", TaskObservation)
    assert len(tasks) == 100 and {t.key for t in tasks} == {f.key for f in futures}
    assert {t.task for t in tasks} == {"run_demeter_scenario"}
    assert {t.state for t in tasks} == {"succeeded"} and {t.tag for t in tasks} == {"demeter"}
    by_i = {t.input_features["i"]: t for t in tasks}
    assert by_i[7].input_features == {"i": 7, "size_mb": 12}
    for t in tasks:
        assert t.started_at >= t.submitted_at - 0.5 and t.finished_at >= t.started_at
        assert t.duration_s >= 0.02 * (1 + t.input_features["i"] % 4) * 0.9, "execution time, sleep included"
        assert t.peak_memory_bytes > t.input_features["size_mb"] * 1024 * 1024
        assert t.worker_resources.cpus == 1 and t.worker_resources.memory_bytes == 2 * 1024**3
        assert t.worker.startswith("demeter-")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["finished_at"] is not None and info["workflow"] == "demeter-sweep"

    decisions = _records(run_dir, "decisions.jsonl", ScalingDecisionRecord)
    assert any(d.action == "scale_up" for d in decisions), "100 queued tasks on one worker must scale up"
    assert all(1 <= d.to_workers <= 4 for d in decisions)

    advisor = LearnedAdvisor.from_history(session.runs_dir)
    small = advisor.recommend(task="run_demeter_scenario", input_features={"i": 0, "size_mb": 4})
    assert small.method == "learned"
    assert small.predicted_duration_s is not None and small.predicted_duration_s > 0
    assert 0 <= small.confidence <= 1


def test_a_tagged_task_runs_only_on_its_groups_workers(write_manifest):
    groups = [
        {"tag": "demeter", "workers": {"min": 1, "max": 2}, "memory": "1Gi"},
        {"tag": "gcam", "workers": {"min": 1, "max": 1}, "memory": "1Gi", "threads": 2},
    ]
    with ScalableSession.from_yaml(write_manifest(groups=groups), target="local") as session:
        client = session.client
        demeter = client.map(workloads.where, range(12), tag="demeter")
        gcam = client.map(workloads.where, range(12), tag="gcam")
        assert all(name.startswith("demeter-") for name in client.gather(demeter))
        assert all(name.startswith("gcam-") for name in client.gather(gcam))
        with pytest.raises(ValueError, match="unknown tag 'hector'.*demeter, gcam"):
            client.submit(workloads.where, 1, tag="hector")
        cancelled = client.submit(workloads.slow, 5, tag="gcam")
        client.cancel(cancelled)
        deadline = time.monotonic() + 20
        while session.collector.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.collector.pending() == {}, "finished and cancelled tasks are no longer pending work"
    tasks = _records(session.runs_dir / session.run_id, "tasks.jsonl", TaskObservation)
    assert len(tasks) == 24
    assert {t.worker_resources.cpus for t in tasks if t.tag == "gcam"} == {2}
    assert all(t.worker.startswith(f"{t.tag}-") for t in tasks)
    samples = {}
    for sample in _records(session.runs_dir / session.run_id, "workers.jsonl", WorkerObservation):
        samples.setdefault(sample.worker, []).append(sample)
    assert {name.split("-")[0] for name in samples} == {"demeter", "gcam"}
    for name, seen in samples.items():
        seen.sort(key=lambda s: s.time)  # events missed live are recorded from the replay at close
        assert len(seen) >= 2, f"{name}: a sample when it joined, and when it left or the session closed"
        assert {s.tag for s in seen} == {name.split("-")[0]} and seen[0].tasks_executing == 0
        assert seen[0].resources.memory_bytes == 1024**3
    assert {s.resources.cpus for name, seen in samples.items() if name.startswith("gcam") for s in seen} == {2}


def test_erred_and_oom_killed_tasks_are_recorded_with_their_state(write_manifest):
    groups = [{"tag": "demeter", "workers": {"min": 1, "max": 1}, "memory": "400Mi"}]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with ScalableSession.from_yaml(write_manifest(groups=groups), target="local") as session:
            client = session.client
            erred = client.submit(workloads.fail, 3, tag="demeter")
            wait([erred])
            assert erred.status == "error"
            killed = client.submit(workloads.hog, 1200, tag="demeter")
            wait([killed], timeout=60)
            assert killed.status == "error"
            ok = client.submit(workloads.run_demeter_scenario, 1, tag="demeter")
            assert ok.result(timeout=60) == 1
    tasks = {t.task: t for t in _records(session.runs_dir / session.run_id, "tasks.jsonl", TaskObservation)}
    assert tasks["fail"].state == "erred" and tasks["fail"].input_features == {"i": 3}
    assert tasks["hog"].state == "oom_killed"
    assert tasks["hog"].peak_memory_bytes > 0.9 * 400 * 1024**2, "the nanny's last reading of the killed worker"
    assert tasks["run_demeter_scenario"].state == "succeeded"


def test_a_given_scaler_is_the_one_the_session_drives(write_manifest):
    from scalable.scaling.config import ScalerConfig
    from scalable.scaling.scaler import AdaptiveScaler

    # the manifest's bounds (1..4) and the given scaler's (2..2) differ, so the decision says whose it is
    given = AdaptiveScaler(config=ScalerConfig(min_workers={"demeter": 2}, max_workers={"demeter": 2}, cooldown_seconds=0))
    path = write_manifest(scaling={"mode": "off", "poll_interval_seconds": 3600})
    with pytest.raises(ValueError, match="carries its own advisor"):
        ScalableSession.from_yaml(path, target="local", scaler=given, advisor=None)
    with ScalableSession.from_yaml(path, target="local", scaler=given) as session:
        assert session.scaler is given
        decision = session.scale_once().tags["demeter"]
    assert (decision.action, decision.from_workers, decision.to_workers) == ("scale_up", 1, 2)
    assert "below the minimum 2" in decision.reason
