"""Input trends: learning from five runs, and following input size beyond the sizes seen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalable.advising.learned_advisor import LearnedAdvisor
from scalable.advising.trend import InputTrend
from scalable.units import MiB


def _history(n: int, seed: int = 0, sizes=(100.0, 1000.0), per_unit_mib: float = 0.8, noise: float = 0.05) -> pd.DataFrame:
    """One task whose peak grows linearly with its input ``size`` (a 50 MiB base)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(*sizes, n)
    peak = (50 + per_unit_mib * size) * MiB * rng.lognormal(0.0, noise, n)
    start = 1.7e9 + 60.0 * np.arange(n)
    return pd.DataFrame({
        "task": "sim", "tag": "t", "state": "succeeded", "peak_memory_bytes": peak, "cpu_seconds": 10.0,
        "duration_s": 10.0, "submitted_at": start, "start_time": start, "end_time": start + 10, "feature.size": size,
        "feature.seed": rng.integers(0, 10**6, n).astype(float),
    })


def test_five_runs_with_an_informative_input_give_a_learned_answer_that_follows_it():
    advisor = LearnedAdvisor().fit(_history(5))
    small, large = (advisor.recommend("sim", input_features={"size": s}) for s in (200, 900))
    assert small.method == large.method == "learned", small.basis
    assert large.memory_bytes > 2 * small.memory_bytes
    assert "~ size" in small.basis and "5 runs" in small.basis and "t prediction interval" in small.basis
    assert small.memory_bytes >= (50 + 0.8 * 200) * MiB, "an upper bound, not the median"


def test_an_uninformative_input_is_not_taken_for_a_trend():
    frame = _history(30)
    frame["peak_memory_bytes"] = 300 * MiB * np.random.default_rng(1).lognormal(0, 0.05, 30)
    trend = InputTrend().fit(frame["task"].to_numpy(dtype=object), frame[["feature.size"]].rename(columns=lambda c: c[8:]),
                             np.log(frame["peak_memory_bytes"].to_numpy()))
    line = trend.trends_["sim"]
    assert line.feature is None or line.slope < 0.1


def test_a_shrinking_input_never_gets_more_than_a_flat_answer():
    frame = _history(40)
    frame["peak_memory_bytes"] = (2000 - frame["feature.size"]) * MiB
    trend = InputTrend().fit(frame["task"].to_numpy(dtype=object), frame[["feature.size"]].rename(columns=lambda c: c[8:]),
                             np.log(frame["peak_memory_bytes"].to_numpy()))
    assert trend.trends_["sim"].slope == 0.0 or trend.trends_["sim"].feature is None
    assert trend.extrapolation("sim", {"size": 5000})[0] == 0.0


@pytest.mark.parametrize("n", [30, 200])
def test_twice_the_largest_input_ever_seen_follows_the_trend_not_the_largest_peak(n):
    frame = _history(n)
    advisor = LearnedAdvisor().fit(frame)
    largest_seen = frame["feature.size"].max()
    at_edge = advisor.recommend("sim", input_features={"size": float(largest_seen)})
    beyond = advisor.recommend("sim", input_features={"size": float(2 * largest_seen)})
    true_median = (50 + 0.8 * 2 * largest_seen) * MiB
    assert beyond.method == "learned"
    assert beyond.memory_bytes > frame["peak_memory_bytes"].max() * 1.5, "never capped at the largest peak seen"
    assert beyond.memory_bytes >= 0.95 * true_median, (beyond.memory, true_median / MiB)
    assert beyond.memory_bytes > 1.6 * at_edge.memory_bytes
    assert "the largest this task ran with" in beyond.basis and "continues its trend" in beyond.basis


def test_the_trend_survives_save_and_load(tmp_path):
    advisor = LearnedAdvisor().fit(_history(200))
    before = advisor.recommend("sim", input_features={"size": 3000.0})
    advisor.save(tmp_path)
    loaded = LearnedAdvisor.load(tmp_path)
    assert loaded.recommend("sim", input_features={"size": 3000.0}).memory_bytes == before.memory_bytes


def test_a_floor_that_decides_is_said():
    advisor = LearnedAdvisor(min_memory="4Gi").fit(_history(5))
    rec = advisor.recommend("sim", input_features={"size": 200})
    assert rec.memory_bytes == 4 * 1024 * MiB and "raised to the minimum 4Gi (the model said" in rec.basis


@pytest.mark.parametrize("n", [5, 200])
def test_after_an_oom_kill_the_next_attempt_is_above_the_failure_and_at_most_double(n):
    advisor = LearnedAdvisor().fit(_history(n))
    plain = advisor.recommend("sim", input_features={"size": 500})
    retry = advisor.recommend("sim", input_features={"size": 500}, failed_memory=plain.memory_bytes)
    assert plain.memory_bytes < retry.memory_bytes <= 2 * plain.memory_bytes
    assert "OOM-killed at" in retry.basis and retry.details["failed_memory_bytes"] == plain.memory_bytes
    far = advisor.recommend("sim", input_features={"size": 500}, failed_memory="64Gi")
    assert far.memory == "128Gi" and "doubled" in far.basis
