"""The calibrated margin on the ResourceAdvisor's answers for tasks with short history."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scalable import LearnedAdvisor, ResourceAdvisor
from scalable.advising.fallback_calibration import FallbackCalibration

MiB = 1024**2


def _runs(rows: list[tuple[str, str, float, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["task", "tag", "submitted_at", "end_time", "peak_memory_bytes"])
    frame["state"] = "succeeded"
    frame["duration_s"] = frame["end_time"] - frame["submitted_at"]
    frame["cpu_seconds"] = frame["duration_s"]
    return frame.sort_values("end_time", kind="stable").reset_index(drop=True)


def test_a_held_out_run_is_scored_only_against_runs_finished_before_it_was_submitted():
    frame = _runs([
        ("B", "u", 0.0, 1.0, 50 * MiB),
        ("A", "u", 2.0, 10.0, 100 * MiB),   # still running when the next run of A is submitted
        ("A", "u", 5.0, 20.0, 200 * MiB),
    ])
    held_out = np.flatnonzero(frame["submitted_at"].to_numpy() == 5.0)
    calibration = FallbackCalibration.measure(frame, held_out)
    # A had no finished run at t=5: its tag's median (50Mi) is what the fallback would have said
    assert calibration.scores.tolist() == pytest.approx([math.log(200 / 50)])
    assert calibration.sources.tolist() == ["tag"]


def test_the_margin_is_the_conformal_quantile_and_refuses_to_promise_beyond_its_data():
    scores = np.log(np.arange(1, 20, dtype=float))
    calibration = FallbackCalibration(scores, np.array(["task"] * 19, dtype=object))
    assert calibration.margin(0.5, "task") == pytest.approx((10.0, 19))
    assert calibration.margin(0.9, "task") == pytest.approx((18.0, 19))
    assert calibration.margin(0.99, "task") is None  # 19 runs cannot back a 99% promise


def test_each_source_has_its_own_margin_and_a_thin_one_borrows_the_pool():
    task = np.log(np.linspace(1.0, 1.5, 40))
    tag = np.log(np.linspace(1.0, 6.0, 40))
    calibration = FallbackCalibration(np.r_[task, tag], np.array(["task"] * 40 + ["tag"] * 40, dtype=object))
    assert calibration.margin(0.9, "task")[0] < 1.5 < calibration.margin(0.9, "tag")[0]
    thin = FallbackCalibration(np.r_[task, tag[:3]], np.array(["task"] * 40 + ["tag"] * 3, dtype=object))
    assert thin.margin(0.9, "tag") == thin.margin(0.9, None)
    assert thin.margin(0.9, "tag")[1] == 43


def _short_history_tasks(n_tasks: int, runs: int, start: int, seed: int) -> pd.DataFrame:
    """Tasks born one after another, each with its own typical memory and log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(start, start + n_tasks):
        typical = rng.uniform(100, 2000) * MiB
        for k in range(runs):
            submitted = t * 100.0 + k * 10.0
            rows.append((f"task_{t}", f"user_{t % 7}", submitted, submitted + 5.0,
                         typical * math.exp(rng.normal(0, 0.3))))
    return _runs(rows)


def test_short_history_answers_keep_the_coverage_promise_on_future_tasks():
    history = _short_history_tasks(400, 6, 0, seed=1)
    advisor = LearnedAdvisor(coverage=0.9, min_history=5, min_memory=1).fit(history)
    assert advisor.quality["fallback"]["n_held_out"] > 100
    future = _short_history_tasks(120, 5, 400, seed=2)
    misses, answers = [], 0
    for _, runs in future.groupby("task", sort=False):
        for k in range(1, 5):  # one to four runs known: the ResourceAdvisor answers
            advisor.extend(runs.iloc[k - 1:k])
            rec = advisor.recommend(runs["task"].iloc[k], tag=runs["tag"].iloc[k])
            assert rec.method == "percentile"
            assert rec.details["fallback_method"] == "calibrated_percentile"
            assert "held-out runs with short history" in rec.basis
            misses.append(rec.memory_bytes < runs["peak_memory_bytes"].iloc[k])
            answers += 1
    rate = float(np.mean(misses))
    assert answers == 480
    assert 0.04 <= rate <= 0.18, rate


def test_the_calibration_survives_save_and_load(tmp_path):
    history = _short_history_tasks(300, 6, 0, seed=3)
    advisor = LearnedAdvisor(coverage=0.9, min_memory=1).fit(history)
    loaded = LearnedAdvisor.load(advisor.save(tmp_path))
    first = history[history["task"] == "task_299"].iloc[:2]
    for a in (advisor, loaded):
        a.update(pd.concat([history[history["task"] != "task_299"], first]))
    assert loaded.recommend("task_299").memory_bytes == advisor.recommend("task_299").memory_bytes
    assert loaded.recommend("task_299").details["fallback_method"] == "calibrated_percentile"


def test_the_sweep_gives_what_a_resource_advisor_fitted_at_each_submission_says():
    rng = np.random.default_rng(5)
    n = 300
    submitted = np.sort(rng.uniform(0, 1000, n))
    rows = [(f"t{rng.integers(0, 40)}", f"u{rng.integers(0, 5)}", s, s + rng.uniform(1, 80),
             float(rng.integers(1, 500)) * MiB) for s in submitted]
    frame = _runs(rows)
    asked = np.flatnonzero(frame["submitted_at"].to_numpy() > 300)[::7]
    calibration = FallbackCalibration.measure(frame, asked)
    expected = []
    for i in asked[np.argsort(frame["submitted_at"].to_numpy()[asked], kind="stable")]:
        known = frame[frame["end_time"] < frame["submitted_at"].iloc[i]]
        answer = ResourceAdvisor().fit(known).memory_percentile(frame["task"].iloc[i], 0.5, frame["tag"].iloc[i])
        if answer is not None:
            expected.append((math.log(frame["peak_memory_bytes"].iloc[i] / answer[0]), answer[1]))
    assert len(expected) > 20
    assert sorted(calibration.scores.tolist()) == pytest.approx(sorted(s for s, _ in expected))
    assert sorted(calibration.sources.tolist()) == sorted(src for _, src in expected)


@pytest.mark.parametrize("q", [0.5, 0.9, 1.0, 0.1])
def test_the_running_quantile_is_numpys_higher_quantile(q):
    from scalable.advising.fallback_calibration import _RunningQuantile

    rng = np.random.default_rng(int(q * 10))
    running, seen = _RunningQuantile(q), []
    for value in rng.integers(0, 50, 300).astype(float):
        running.add(value)
        seen.append(value)
        assert running.value == np.quantile(seen, q, method="higher")
