"""Per task: the line or the shared trees, an interval from the task's own errors, and the
request as the ceiling of a short-history answer measured on other tasks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import pandas as pd

from scalable.advising.learned_advisor import LearnedAdvisor
from scalable.advising.model_choice import trend_tasks
from scalable.advising.wastage import retry_wastage
from scalable.advising.trend import InputTrend
from scalable.units import MiB


def _runs(task: str, n: int, start: float, peak: np.ndarray, size: np.ndarray, request: float | None = None) -> pd.DataFrame:
    begin = start + 60.0 * np.arange(n)
    frame = pd.DataFrame({
        "task": task, "tag": task, "state": "succeeded", "peak_memory_bytes": peak, "cpu_seconds": 10.0,
        "duration_s": 10.0, "submitted_at": begin, "start_time": begin, "end_time": begin + 10, "feature.size": size,
    })
    if request is not None:
        frame["feature.requested_memory_bytes"] = request
    return frame


def _workflow(seed: int = 0) -> pd.DataFrame:
    """An early, steady task ('align': 41.3 GB whatever its input) then erratic later tasks,
    the only ones in the time hold-out: the shape of an nf-core pipeline's trace."""
    rng = np.random.default_rng(seed)
    n = 60
    align = _runs("align", n, 1.7e9, 41.3e9 * (1 + rng.uniform(0, 0.001, n)), rng.uniform(1e10, 3e11, n))
    later = [
        _runs(f"report{i}", 80, 1.7e9 + 1e5 + i * 1e4, 300 * MiB * rng.lognormal(0, 0.8, 80), rng.uniform(1, 10, 80))
        for i in range(3)
    ]
    return pd.concat([align, *later], ignore_index=True)


def test_a_task_the_hold_out_never_saw_gets_an_interval_from_its_own_runs():
    frame = _workflow()
    advisor = LearnedAdvisor(min_memory="1Ki").fit(frame)
    rec = advisor.recommend("align", input_features={"size": 2e11})
    peak = frame.loc[frame["task"] == "align", "peak_memory_bytes"].max()
    assert rec.method == "learned", rec.basis
    assert "input trend" in rec.basis and "chosen over the shared model" in rec.basis
    assert "this task's 60 left-one-out errors" in rec.basis
    assert peak <= rec.memory_bytes <= 1.01 * peak, (rec.memory_bytes / 1e9, peak / 1e9)


def test_the_interval_pooled_over_tasks_is_wider_for_that_task():
    frame = _workflow()
    trend = InputTrend().fit(frame["task"].to_numpy(dtype=object), frame[["feature.size"]].rename(columns=lambda c: c[8:]),
                             np.log(frame["peak_memory_bytes"].to_numpy()))
    centre, own_upper, line, how = trend.upper("align", {"size": 2e11}, 0.95)
    pooled_q, _ = trend.quantile(line, 0.95)
    pooled_upper = centre + pooled_q * line.sigma
    assert "this task's" in how
    assert own_upper < pooled_upper


def _trend():
    frame = _workflow()
    return InputTrend().fit(frame["task"].to_numpy(dtype=object), frame[["feature.size"]].rename(columns=lambda c: c[8:]),
                            np.log(frame["peak_memory_bytes"].to_numpy()))


def test_retry_wastage_counts_failed_attempts_whole_and_slack_on_the_one_that_fits():
    gb = np.log(1e9)
    # 4 GB for a 3 GB peak over 1 h: 1 GB*h; 1 GB for 3 GB: 1 + 2 failed, then 4 - 3: 4 GB*h
    wasted = retry_wastage(np.array([gb + np.log(4), gb]), np.array([gb + np.log(3)] * 2), np.array([3600.0, 3600.0]))
    assert wasted / (1e9 * 3600) == pytest.approx([1.0, 4.0])
    # without a duration every run weighs one second
    assert retry_wastage(np.array([gb]), np.array([gb]), np.array([np.nan]))[0] == pytest.approx(0.0)


def test_the_trees_keep_a_task_where_their_bounds_wasted_less_on_its_held_out_runs():
    trend = _trend()
    rng = np.random.default_rng(0)
    tasks = np.array(["report0"] * 20 + ["report1"] * 20, dtype=object)
    peaks = np.log(300 * MiB) + rng.normal(0, 0.5, 40)
    runtimes = np.full(40, 60.0)
    line_upper = peaks + 0.4  # always fits, 50% slack
    trees_upper = np.r_[peaks[:20] + 0.1, peaks[20:] + 1.0]  # tighter on report0, wider on report1
    chosen = trend_tasks(trend, tasks, trees_upper, line_upper, peaks, runtimes, min_history=5)
    assert "report0" not in chosen
    assert "report1" in chosen and "20 held-out runs of this task" in chosen["report1"]


def test_a_tight_model_that_misses_loses_to_a_wider_one_that_fits():
    trend = _trend()
    tasks = np.array(["report0"] * 10, dtype=object)
    peaks = np.full(10, np.log(1e9))
    runtimes = np.full(10, 3600.0)
    trees_upper = peaks + np.r_[[-0.05] * 5, [0.01] * 5]  # half the runs 5% short: killed, rerun at double
    line_upper = peaks + 0.3
    chosen = trend_tasks(trend, tasks, trees_upper, line_upper, peaks, runtimes, min_history=5)
    assert "report0" in chosen, "centres: the trees are closer; costs: their misses cost whole runs"


def test_a_task_without_held_out_runs_goes_to_its_line():
    trend = _trend()
    tasks = np.array(["report0"] * 20, dtype=object)
    peaks = np.log(300 * MiB) + np.random.default_rng(0).normal(0, 0.5, 20)
    trees_won = trend_tasks(trend, tasks, peaks + 0.1, peaks + 0.4, peaks, np.full(20, 60.0), min_history=5)
    assert "report0" not in trees_won
    assert "align" in trees_won and "0 held-out runs of this task" in trees_won["align"]


def test_the_choice_survives_save_and_load(tmp_path):
    advisor = LearnedAdvisor(min_memory="1Ki").fit(_workflow())
    before = advisor.recommend("align", input_features={"size": 2e11})
    advisor.save(tmp_path)
    loaded = LearnedAdvisor.load(tmp_path)
    after = loaded.recommend("align", input_features={"size": 2e11})
    assert after.memory_bytes == before.memory_bytes and after.basis == before.basis


def test_a_short_history_answer_never_asks_more_than_a_request_that_held():
    rng = np.random.default_rng(3)
    frame = _workflow()
    request = 6.5e9  # above the three runs, below the short-history widening of them
    few = _runs("heatmap", 3, 1.7e9 + 5e5, 5.9e9 * (1 + rng.uniform(0, 0.03, 3)), rng.uniform(1, 2, 3), request)
    advisor = LearnedAdvisor(min_memory="1Ki").fit(pd.concat([frame, few], ignore_index=True))
    rec = advisor.recommend("heatmap", input_features={"size": 1.5, "requested_memory_bytes": request})
    assert rec.method == "percentile"
    assert rec.memory_bytes == request, rec.basis
    assert "lowered to the memory the request asks for (6199Mi): no run of this task needed more" in rec.basis


def test_a_request_a_run_outgrew_is_no_ceiling():
    frame = _workflow()
    request = 4e9
    few = _runs("heatmap", 3, 1.7e9 + 5e5, np.array([5.9e9, 6.0e9, 6.1e9]), np.array([1.0, 1.5, 2.0]), request)
    advisor = LearnedAdvisor(min_memory="1Ki").fit(pd.concat([frame, few], ignore_index=True))
    rec = advisor.recommend("heatmap", input_features={"size": 1.5, "requested_memory_bytes": request})
    assert rec.memory_bytes >= 6.1e9 and "lowered to the memory the request" not in rec.basis


def test_the_percentile_advisor_doubles_after_an_oom_kill_and_says_so():
    from scalable.advising.resource_advisor import ResourceAdvisor

    advisor = ResourceAdvisor(min_memory="1Ki").fit(_workflow())
    plain = advisor.recommend("align")
    retry = advisor.recommend("align", failed_memory=plain.memory_bytes)
    assert retry.memory_bytes == 2 * plain.memory_bytes
    assert "OOM-killed at" in retry.basis and "doubled" in retry.basis
    assert advisor.recommend("align", failed_memory="1Ki").memory_bytes == plain.memory_bytes, \
        "a kill below the plain answer leaves it"


def test_between_retrains_the_level_adapts_to_drift_and_keeps_the_promise():
    """Runs that start needing 40% more than the history say so through the misses alone: the
    adaptive level widens the answers until the miss rate comes back to what was promised."""
    from scalable.advising.adaptive import AdaptiveOffset

    rng = np.random.default_rng(5)
    n = 300
    history = _runs("sim", n, 1.7e9, 1e9 * rng.lognormal(0, 0.1, n), rng.uniform(1, 10, n))
    advisor = LearnedAdvisor(coverage=0.9, min_memory="1Ki").fit(history)
    before = advisor.recommend("sim", input_features={"size": 5.0}).memory_bytes
    frame, missed = history, []
    for block in range(40):
        start = float(frame["end_time"].max()) + 60
        drifted = _runs("sim", 20, start, 1.4e9 * rng.lognormal(0, 0.1, 20), rng.uniform(1, 10, 20))
        recs = advisor.recommend_batch([{"task": "sim", "input_features": {"size": s}} for s in drifted["feature.size"]])
        missed += (drifted["peak_memory_bytes"].to_numpy() > [r.memory_bytes for r in recs]).tolist()
        frame = pd.concat([frame, drifted], ignore_index=True)
        advisor.update(frame)
    after = advisor.recommend("sim", input_features={"size": 5.0}).memory_bytes
    assert after > 1.2 * before
    late = np.mean(missed[-400:])
    assert late < 0.2, f"miss rate {late:.2%} in the last 400 runs, 10% promised"
    quality = advisor.quality["adaptive"]
    assert quality["observed"] == 800 and quality["promised_miss_rate"] == pytest.approx(0.1)
    assert "adaptive offset" in advisor.recommend("sim", input_features={"size": 5.0}).basis
    offset = AdaptiveOffset(0.1)
    offset.observe(np.r_[np.ones(1, bool), np.zeros(9, bool)])
    assert offset.offset == pytest.approx(0.0), "one miss in ten at a 10% promise leaves it where it was"


def test_the_adapted_level_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(6)
    history = _runs("sim", 200, 1.7e9, 1e9 * rng.lognormal(0, 0.1, 200), rng.uniform(1, 10, 200))
    advisor = LearnedAdvisor(coverage=0.9, min_memory="1Ki").fit(history)
    more = _runs("sim", 50, float(history["end_time"].max()) + 60, 2e9 * rng.lognormal(0, 0.1, 50), rng.uniform(1, 10, 50))
    advisor.update(pd.concat([history, more], ignore_index=True))
    advisor.save(tmp_path)
    loaded = LearnedAdvisor.load(tmp_path)
    assert loaded.adaptive_.offset == pytest.approx(advisor.adaptive_.offset) and loaded.adaptive_.observed == 50
    assert loaded.recommend("sim", input_features={"size": 5.0}).memory_bytes == \
        advisor.recommend("sim", input_features={"size": 5.0}).memory_bytes


def test_a_task_the_trees_answer_with_too_little_confidence_goes_to_its_own_line_before_the_percentiles():
    frame = _workflow()
    advisor = LearnedAdvisor(min_memory="1Ki", confidence_threshold=0.4).fit(frame)
    advisor.trend_tasks_ = {}  # as if the trees had won the choice for every task
    rec = advisor.recommend("align", input_features={"size": 2e11})
    peak = frame.loc[frame["task"] == "align", "peak_memory_bytes"].max()
    assert rec.method == "learned" and "input trend" in rec.basis, rec.basis
    assert re.search(r"the shared model's model confidence 0\.[0-3]\d below 0\.4", rec.basis), rec.basis
    assert peak <= rec.memory_bytes <= 1.01 * peak
    # the cpu answer is not the line's to give: it stays with the ResourceAdvisor
    assert advisor.recommend("align", input_features={"size": 2e11}, target="cpus").method != "learned"
