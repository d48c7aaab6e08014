"""The law of memory on input pooled over tasks, and the short-history answer it scales."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalable.advising.elasticity import Elasticity, pooled_elasticity
from scalable.advising.learned_advisor import LearnedAdvisor


def _fit(tasks, x, peak):
    return pooled_elasticity(np.asarray(tasks, dtype=object), pd.DataFrame({"input_bytes": x}), np.log(peak))


def test_the_exponent_shared_by_tasks_of_different_levels_is_recovered():
    rng = np.random.default_rng(0)
    tasks = np.repeat([f"t{i}" for i in range(6)], 30)
    level = np.repeat(rng.uniform(1e6, 1e9, 6), 30)
    x = rng.uniform(1e9, 1e11, tasks.size)
    law = _fit(tasks, x, level * (x / 1e9) ** 0.8 * rng.lognormal(0, 0.05, tasks.size))
    assert law.feature == "input_bytes"
    assert law.exponent == pytest.approx(0.8, abs=0.05)
    assert law.n_tasks == 6 and law.n_runs == 180


def test_tasks_that_differ_in_level_do_not_fake_a_slope():
    """Small task on small inputs, big task on big inputs, each flat in its input: across tasks
    memory rises with input, within each it does not, and only within counts."""
    rng = np.random.default_rng(1)
    tasks = np.repeat(["small", "big"], 40)
    x = np.r_[rng.uniform(1e6, 2e6, 40), rng.uniform(1e10, 2e10, 40)]
    peak = np.r_[np.full(40, 1e8), np.full(40, 1e10)] * rng.lognormal(0, 0.05, 80)
    law = _fit(tasks, x, peak)
    assert law.feature is None or law.exponent < 0.1


def test_too_few_runs_with_varying_inputs_give_no_law():
    law = _fit(["a"] * 5, np.arange(1, 6) * 1e9, np.arange(1, 6) * 1e8)
    assert law.feature is None and law.log_factor("a", {"input_bytes": 1e12}) == 0.0


def test_the_factor_needs_both_the_input_and_the_tasks_reference():
    law = Elasticity("input_bytes", 1.0, 3, 60, {"a": float(np.log(1e9))})
    assert np.exp(law.log_factor("a", {"input_bytes": 4e9})) == pytest.approx(4.0)
    assert law.log_factor("a", {}) == 0.0
    assert law.log_factor("unknown", {"input_bytes": 4e9}) == 0.0
    assert law.log_factor("a", {"input_bytes": "4e9 bytes"}) == 0.0
    assert Elasticity.from_state(law.to_state()) == law


def _history(rng: np.random.Generator) -> pd.DataFrame:
    """Forty tasks whose peak is proportional to the bytes they read, each at its own level,
    started one after another (so the time hold-out holds the first runs of the last ones),
    each run's input growing (the first runs to finish are the small ones); then 'late', of
    which only two small runs have finished."""
    frames = []
    for i, level in enumerate(rng.uniform(0.05, 0.2, 40)):
        n = 12
        begin = 1.7e9 + 600.0 * i + 300.0 * np.arange(n)
        x = np.sort(rng.uniform(1e9, 2e10, n))
        frames.append(pd.DataFrame({
            "task": f"t{i}", "tag": f"t{i}", "state": "succeeded", "peak_memory_bytes": level * x * rng.lognormal(0, 0.05, n),
            "cpu_seconds": 10.0, "duration_s": 10.0, "submitted_at": begin, "start_time": begin, "end_time": begin + 10,
            "feature.input_bytes": x}))
    begin = 1.7e9 + 600.0 * 41 + np.array([0.0, 60.0])
    frames.append(pd.DataFrame({
        "task": "late", "tag": "late", "state": "succeeded", "peak_memory_bytes": [1e8, 1.1e8], "cpu_seconds": 10.0,
        "duration_s": 10.0, "submitted_at": begin, "start_time": begin, "end_time": begin + 10,
        "feature.input_bytes": [1e9, 1.1e9]}))
    return pd.concat(frames, ignore_index=True)


def test_a_short_history_answer_follows_the_input_by_the_pooled_law():
    frame = _history(np.random.default_rng(2))
    advisor = LearnedAdvisor(min_memory="1Ki").fit(frame)
    small = advisor.recommend("late", input_features={"input_bytes": 1.1e9})
    large = advisor.recommend("late", input_features={"input_bytes": 8.8e9})
    assert large.method == small.method == "percentile"
    assert "scaled to this input by input_bytes^" in large.basis, large.basis
    # 8x the input: the pooled exponent is ~1, so about 8x the memory, and above 8x the true peak
    assert 6.0 < large.memory_bytes / small.memory_bytes < 10.0
    assert large.memory_bytes > 8 * 1.1e8


def test_the_scaled_short_history_answer_survives_save_and_load(tmp_path):
    frame = _history(np.random.default_rng(2))
    advisor = LearnedAdvisor(min_memory="1Ki").fit(frame)
    before = advisor.recommend("late", input_features={"input_bytes": 8.8e9})
    advisor.save(tmp_path)
    after = LearnedAdvisor.load(tmp_path).recommend("late", input_features={"input_bytes": 8.8e9})
    assert after.memory_bytes == before.memory_bytes and after.basis == before.basis
