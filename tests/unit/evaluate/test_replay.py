"""The replay never looks into the future, and its metrics are the ones written down."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scalable.advising.replay import (
    AdvisorPredictor,
    PercentileBaseline,
    best_percentile_at_rate,
    interpolate_at_rate,
    last_jobs_mean,
    margin_for_rate,
    replay,
    replay_many,
    requests_from,
    score_duration,
    score_memory,
    slack,
    slack_at_rate,
    tradeoff_curve,
    under_provision_rate,
)

GiB = 1024**3


def _jobs(rows):
    frame = pd.DataFrame(rows, columns=["task", "submitted_at", "end_time", "peak_memory_bytes"])
    frame["tag"] = "u1"
    frame["duration_s"] = frame["end_time"] - frame["submitted_at"]
    return frame


class MaxSeen:
    """A toy advisor: recommends the largest memory it has been shown for the task."""

    def __init__(self):
        self.seen = {}
        self.fitted_on = []

    def fit(self, frame):
        self.fitted_on.append(float(frame["end_time"].max()) if len(frame) else -math.inf)
        self.seen = frame.groupby("task")["peak_memory_bytes"].max().to_dict()
        return self

    def update(self, frame):
        self.seen = frame.groupby("task")["peak_memory_bytes"].max().to_dict()

    def recommend_batch(self, requests):
        return [{"memory_bytes": self.seen.get(r["task"], 1.0), "predicted_duration_s": None,
                 "confidence": 0.5, "method": "toy"} for r in requests]


def test_replay_never_uses_a_job_that_finished_after_the_submit():
    # Job 2 is submitted at t=10 and uses 5 GiB but finishes only at t=100: a leaking replay
    # would show it to job 3 (submitted at t=20) and recommend 5 GiB instead of 1 GiB.
    frame = _jobs([
        ("a", 0, 5, 1 * GiB),
        ("a", 10, 100, 5 * GiB),
        ("a", 20, 30, 1 * GiB),
        ("a", 200, 210, 1 * GiB),
    ])
    for block_size in (1, 2):
        advisor = MaxSeen()
        result = replay(frame, AdvisorPredictor("toy", lambda: advisor), score_fraction=0.5,
                        block_size=block_size, refit_every=1)
        by_submit = result.scored.set_index("submitted_at")["toy"]
        assert by_submit[20] == 1 * GiB  # job 2 (finished at 100) is not yet known
        if block_size == 1:
            assert by_submit[200] == 5 * GiB  # now it is
        assert result.leak_checks >= 1


def test_percentile_baseline_is_honest_too():
    frame = _jobs([
        ("a", 0, 5, 1 * GiB),
        ("a", 10, 100, 5 * GiB),
        ("a", 20, 30, 1 * GiB),
        ("a", 200, 210, 1 * GiB),
    ])
    result = replay(frame, PercentileBaseline(percentiles=(100,), windows=(None,)),
                    score_fraction=0.5, block_size=1)
    col = "max of task"
    by_submit = result.scored.set_index("submitted_at")[col]
    assert by_submit[20] == 1 * GiB and by_submit[200] == 5 * GiB


def test_block_cutoff_is_the_first_submit_of_the_block():
    # with one block holding jobs submitted at 20 and 200, nothing finished after 20 is known
    frame = _jobs([
        ("a", 0, 5, 1 * GiB),
        ("a", 10, 100, 5 * GiB),
        ("a", 20, 30, 1 * GiB),
        ("a", 200, 210, 1 * GiB),
    ])
    result = replay(frame, PercentileBaseline(percentiles=(100,), windows=(None,)),
                    score_fraction=0.5, block_size=10)
    assert (result.scored["max of task"] == 1 * GiB).all()


def test_refits_and_updates_happen_at_checkpoints():
    rows = [("a", float(t), float(t) + 0.5, float(t % 7 + 1)) for t in range(100)]
    advisor_log = []

    def factory():
        advisor = MaxSeen()
        advisor_log.append(advisor)
        return advisor

    predictor = AdvisorPredictor("toy", factory)
    result = replay(_jobs(rows), predictor, score_fraction=0.5, block_size=5, refit_every=20)
    assert result.refits == 3  # at 0, 20, 40 scored jobs
    assert predictor.fits == 3 and len(advisor_log) == 3
    assert predictor.updates == result.blocks - 3


def test_metrics_on_a_hand_computed_example():
    rec = [4, 4, 2, 10]
    used = [3, 5, 2, 5]
    # job 2 (rec 4 < used 5) is under-provisioned: 1/4
    assert under_provision_rate(rec, used) == 0.25
    # fitting jobs: (4,3), (2,2), (10,5): slack = (1 + 0 + 5) / (4 + 2 + 10) = 6/16
    assert slack(rec, used) == pytest.approx(6 / 16)
    s = score_memory(rec, used)
    assert s["n"] == 4 and s["under_provision_rate"] == 0.25
    d = score_duration([10, 20, 30], [12, 20, 27])
    assert d["mae_s"] == pytest.approx(5 / 3)
    assert d["median_abs_error_s"] == 2
    assert d["under_prediction_rate"] == pytest.approx(1 / 3)


def test_nan_truth_is_not_scored():
    assert under_provision_rate([1, 2], [np.nan, 3]) == 1.0


def test_margin_for_rate_is_exact():
    rec = np.ones(100)
    used = np.arange(1, 101) / 100.0  # ratios 0.01 .. 1.00
    assert margin_for_rate(rec, used, 0.0) == pytest.approx(1.0)
    # allow 2 of 100 above: the margin is the 98th ratio
    m = margin_for_rate(rec, used, 0.02)
    assert m == pytest.approx(0.98)
    assert under_provision_rate(rec * m, used) == pytest.approx(0.02)


def test_slack_at_equal_rate_favours_the_tighter_advisor():
    rng = np.random.default_rng(0)
    used = rng.lognormal(0, 1, 2000)
    tight = used * rng.uniform(0.9, 1.3, used.size)  # knows the job
    loose = np.full(used.size, np.median(used))      # knows nothing
    for rate in (0.01, 0.02, 0.05):
        a = slack_at_rate(tight, used, rate)
        b = slack_at_rate(loose, used, rate)
        assert a["under_provision_rate"] <= rate + 1e-12
        assert a["slack"] < b["slack"]


def test_interpolation_at_equal_rate():
    rates = [0.10, 0.05, 0.01, 0.0]
    slacks = [0.20, 0.30, 0.50, 0.70]
    assert interpolate_at_rate(rates, slacks, 0.02) == pytest.approx(0.45)
    assert interpolate_at_rate(rates, slacks, 0.05) == pytest.approx(0.30)
    assert math.isnan(interpolate_at_rate(rates, slacks, 0.5))  # no extrapolation


def test_curve_agrees_with_exact_solver():
    rng = np.random.default_rng(1)
    used = rng.lognormal(0, 1, 500)
    rec = used * rng.lognormal(0.2, 0.3, used.size)
    curve = tradeoff_curve(rec, used, np.linspace(0.5, 3, 400))
    exact = slack_at_rate(rec, used, 0.05)
    approx = interpolate_at_rate(curve["under_provision_rate"], curve["slack"], 0.05)
    assert approx == pytest.approx(exact["slack"], abs=0.01)


def test_best_percentile_and_last_two():
    rows = []
    t = 0.0
    rng = np.random.default_rng(2)
    for i in range(400):
        task = f"t{i % 5}"
        mem = (i % 5 + 1) * GiB * rng.uniform(0.8, 1.0)
        rows.append((task, t, t + 1.0, mem))
        t += 2.0
    frame = _jobs(rows)
    result = replay_many(frame, [PercentileBaseline()], score_fraction=0.5, block_size=20)
    best = best_percentile_at_rate(result, 0.02)
    assert best["variant"] is not None and best["slack"] < 0.25
    means = last_jobs_mean(frame.assign(tag=frame["task"]), column="peak_memory_bytes")
    # the third job of t0 averages the first two of t0
    t0 = frame.index[frame["task"] == "t0"]
    assert math.isnan(means[t0[0]])
    assert means[t0[2]] == pytest.approx(frame.loc[t0[:2], "peak_memory_bytes"].mean())


def test_last_jobs_mean_waits_for_the_job_to_finish():
    frame = pd.DataFrame({"tag": ["u"] * 3, "submitted_at": [0, 1, 50], "end_time": [100, 2, 200],
                          "duration_s": [100, 1, 150]})
    means = last_jobs_mean(frame)
    assert math.isnan(means[0]) and math.isnan(means[1]) and means[2] == 1.0


def test_requests_carry_features_and_drop_missing():
    frame = pd.DataFrame({"task": ["a", "b"], "tag": ["u1", None], "feature.n": [1.0, np.nan],
                          "feature.kind": ["x", None]})
    assert requests_from(frame) == [
        {"task": "a", "input_features": {"n": 1.0, "kind": "x"}, "tag": "u1"},
        {"task": "b", "input_features": {}},
    ]


class Accumulating(MaxSeen):
    """Learns only through ``extend`` between fits: it must see each finished job exactly once."""

    def __init__(self):
        super().__init__()
        self.rows_seen = 0

    def fit(self, frame):
        self.rows_seen = len(frame)
        return super().fit(frame)

    def extend(self, frame):
        self.rows_seen += len(frame)
        for task, peak in frame.groupby("task")["peak_memory_bytes"].max().items():
            self.seen[task] = max(self.seen.get(task, 0), peak)


def test_extend_gets_exactly_the_newly_finished_jobs():
    rng = np.random.default_rng(3)
    rows = [(f"t{i % 3}", float(i), float(i) + rng.uniform(0.5, 30), float(rng.integers(1, 100)))
            for i in range(300)]
    frame = _jobs(rows)
    acc = Accumulating()
    by_extend = replay(frame, AdvisorPredictor("toy", lambda: acc), block_size=7, refit_every=10**6)
    by_update = replay(frame, AdvisorPredictor("toy", MaxSeen), block_size=7, refit_every=10**6)
    assert (by_extend.scored["toy"] == by_update.scored["toy"]).all()
    last_block_start = (len(by_extend.scored) - 1) // 7 * 7
    last_cutoff = by_extend.scored["submitted_at"].iloc[last_block_start]
    assert acc.rows_seen == int((frame["end_time"] < last_cutoff).sum())
