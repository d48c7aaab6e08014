"""ResourceAdvisor: percentiles of observed usage, explainable, safe without history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalable import ResourceAdvisor
from tests.unit.advising.synthetic import GiB, MiB, make_frame


def constant_history(n: int, peak: float, task: str = "run_simulation", **extra) -> pd.DataFrame:
    frame = make_frame(n_tasks=1, runs_per_task=n)
    frame["task"] = task
    frame["peak_memory_bytes"] = peak
    frame["cpu_seconds"] = frame["duration_s"] * 3.5
    for key, value in extra.items():
        frame[key] = value
    return frame


def test_p95_of_history_prints_like_the_documentation():
    frame = constant_history(50, 16 * GiB)
    rec = ResourceAdvisor().fit(frame).recommend(task="run_simulation")
    assert repr(rec) == "{'cpus': 4, 'memory': '16Gi', 'basis': 'p95 of 50 historical runs'}"
    assert rec.method == "percentile"


def test_uses_observed_usage_never_requested():
    frame = constant_history(50, 2 * GiB, requested_memory_bytes=64.0 * GiB, worker_memory_bytes=64.0 * GiB)
    assert ResourceAdvisor().fit(frame).recommend("run_simulation").memory == "2Gi"


def test_percentile_follows_coverage():
    frame = make_frame(n_tasks=1, runs_per_task=400)
    advisor = ResourceAdvisor().fit(frame)
    peaks = frame["peak_memory_bytes"].to_numpy()
    for q in (0.5, 0.9, 0.99):
        rec = advisor.recommend("task_0", coverage=q)
        assert rec.memory_bytes >= np.quantile(peaks, q) - 1
        assert abs(np.mean(peaks <= rec.memory_bytes) - q) < 0.01
    assert advisor.recommend("task_0", coverage=0.5).memory_bytes < advisor.recommend("task_0", coverage=0.99).memory_bytes


def test_no_history_gives_a_safe_default_that_says_so():
    rec = ResourceAdvisor().fit(make_frame(n_tasks=1, runs_per_task=5)).recommend("never_seen")
    assert rec.method == "default" and rec.confidence == 0.0
    assert "no history" in rec.basis and rec.memory == "4Gi" and rec.cpus == 1


def test_unseen_task_uses_its_tag_history():
    frame = constant_history(30, 3 * GiB, tag="demeter")
    rec = ResourceAdvisor().fit(frame).recommend("new_task", tag="demeter")
    assert rec.memory == "3Gi" and "tag 'demeter'" in rec.basis


def test_short_history_is_widened_and_says_so():
    rec = ResourceAdvisor().fit(constant_history(4, 1 * GiB)).recommend("run_simulation")
    assert rec.memory_bytes == pytest.approx(1.25 * GiB, rel=0.01)
    assert "short history" in rec.basis


def test_oom_kill_raises_the_floor():
    frame = constant_history(40, 1 * GiB)
    frame.loc[frame.index[-1], "state"] = "oom_killed"
    frame.loc[frame.index[-1], "peak_memory_bytes"] = 3 * GiB
    rec = ResourceAdvisor().fit(frame).recommend("run_simulation")
    assert rec.memory_bytes >= 1.2 * 3 * GiB and "OOM" in rec.basis


def test_minimum_memory():
    rec = ResourceAdvisor().fit(constant_history(30, 10 * MiB)).recommend("run_simulation")
    assert rec.memory == "250Mi" and "minimum" in rec.basis


def test_recommend_batch_and_targets():
    frame = make_frame(n_tasks=3, runs_per_task=50)
    advisor = ResourceAdvisor().fit(frame)
    recs = advisor.recommend_batch(["task_0", {"task": "task_1", "coverage": 0.5}, {"task": "x"}])
    assert [r.task for r in recs] == ["task_0", "task_1", "x"]
    assert recs[1].memory_bytes <= advisor.recommend("task_1").memory_bytes
    assert "duration" in advisor.recommend("task_0", target="duration").basis
    with pytest.raises(ValueError):
        advisor.recommend("task_0", target="gpu")


def test_state_round_trip_and_update():
    frame = make_frame(n_tasks=3, runs_per_task=50)
    advisor = ResourceAdvisor().fit(frame.iloc[:60])
    clone = ResourceAdvisor.from_state(advisor.to_state())
    assert clone.recommend("task_0") == advisor.recommend("task_0")
    advisor.update(frame)
    assert advisor.history_size("task_0") == 50
    extended = ResourceAdvisor().fit(frame.iloc[:60]).extend(frame.iloc[60:])
    assert extended.recommend("task_2").memory_bytes == advisor.recommend("task_2").memory_bytes


def test_runs_without_memory_records_still_give_duration_and_cpus():
    frame = pd.DataFrame({
        "task": ["sim"] * 5, "tag": ["u1"] * 5, "state": ["succeeded"] * 5,
        "peak_memory_bytes": [np.nan] * 5, "cpu_seconds": [20.0] * 5,
        "duration_s": [10.0, 12.0, 14.0, 16.0, 18.0], "end_time": np.arange(5.0), "submitted_at": np.arange(5.0),
    })
    advisor = ResourceAdvisor(short_history=0).fit(frame)
    rec = advisor.recommend("sim")
    assert rec.method == "percentile"
    assert rec.predicted_duration_s == 14.0
    assert rec.memory == "4Gi" and "no memory usage recorded" in rec.basis
    assert rec.cpus == 2
    # the tag's runs answer for a task never seen, memory still the default
    assert advisor.recommend("other", tag="u1").predicted_duration_s == 14.0
    assert advisor.recommend("other").method == "default"


def test_a_task_whose_runs_logged_no_memory_takes_memory_from_its_tag_and_time_from_itself():
    frame = pd.DataFrame({
        "task": ["sim"] * 3 + ["post"] * 20, "tag": ["u1"] * 23, "state": ["succeeded"] * 23,
        "peak_memory_bytes": [np.nan] * 3 + [100.0 * MiB] * 20, "cpu_seconds": [np.nan] * 3 + [5.0] * 20,
        "duration_s": [100.0, 110.0, 120.0] + [5.0] * 20, "end_time": np.arange(23.0), "submitted_at": np.arange(23.0),
    })
    rec = ResourceAdvisor(short_history=0, min_memory=1).fit(frame).recommend("sim")
    assert rec.memory == "100Mi"
    assert "runs with tag 'u1'" in rec.basis
    assert rec.predicted_duration_s == 110.0
