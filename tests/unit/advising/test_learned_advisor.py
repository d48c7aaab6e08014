"""LearnedAdvisor: calibrated coverage, meaningful confidence, fallback, robustness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalable import LearnedAdvisor, Recommendation
from tests.unit.advising.synthetic import make_frame

FEATURES = {"num_nodes": 1200, "scenario_type": "peak_demand"}


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return make_frame(n_tasks=6, runs_per_task=500, noise=0.15, noisy_tasks=(5,), noisy_sigma=0.7, seed=1)


@pytest.fixture(scope="module")
def future() -> pd.DataFrame:
    frame = make_frame(n_tasks=6, runs_per_task=500, noise=0.15, noisy_tasks=(5,), noisy_sigma=0.7, seed=2,
                       t0=1.7e9 + 3000 * 60.0 + 3600)
    return frame


@pytest.fixture(scope="module")
def advisor(history) -> LearnedAdvisor:
    return LearnedAdvisor(coverage=0.98).fit(history)


def requests(frame: pd.DataFrame) -> list[dict]:
    return [
        {"task": t, "input_features": {"num_nodes": n, "scenario_type": s}}
        for t, n, s in zip(frame["task"], frame["feature.num_nodes"], frame["feature.scenario_type"])
    ]


def under_provision(advisor: LearnedAdvisor, frame: pd.DataFrame, coverage: float) -> tuple[float, np.ndarray]:
    recs = advisor.recommend_batch([{**r, "coverage": coverage} for r in requests(frame)])
    memory = np.array([r.memory_bytes for r in recs], dtype=float)
    learned = np.array([r.method == "learned" for r in recs])
    used = frame["peak_memory_bytes"].to_numpy()
    return float(np.mean(memory[learned] < used[learned])), learned


def test_coverage_is_calibrated_on_future_runs(advisor, future):
    rate, learned = under_provision(advisor, future, 0.98)
    assert learned.mean() > 0.6  # the steady tasks are answered by the model
    assert 0.005 <= rate <= 0.04, rate


def test_a_different_coverage_works_without_refitting(advisor, future):
    rate_90, _ = under_provision(advisor, future, 0.90)
    rate_98, _ = under_provision(advisor, future, 0.98)
    assert 0.05 <= rate_90 <= 0.16, rate_90
    assert rate_90 > rate_98
    low = advisor.recommend("task_1", FEATURES, coverage=0.8)
    high = advisor.recommend("task_1", FEATURES, coverage=0.99)
    assert low.memory_bytes <= high.memory_bytes


def test_measured_quality_is_kept(advisor):
    memory = advisor.quality["memory"]
    assert memory["coverage_promised"] == 0.98
    assert 0.9 <= memory["coverage_measured"] <= 1.0
    assert 0 < memory["slack"] < 1 and memory["mae_bytes"] > 0
    assert "duration" in advisor.quality and "cpus" in advisor.quality


def test_recommendation_shape(advisor):
    rec = advisor.recommend(task="task_1", input_features=FEATURES)
    assert isinstance(rec, Recommendation) and rec.method == "learned"
    assert set(rec.resources) == {"cpus", "memory"} and rec.memory.endswith(("Mi", "Gi"))
    assert 0 < rec.confidence <= 1 and rec["confidence"] == rec.confidence
    assert rec.predicted_duration_s > 0
    lower, upper = rec.interval
    assert lower <= rec.details["predicted_median_memory_bytes"] <= upper == rec.memory_bytes
    assert repr(rec).startswith("{'cpus': ")


def test_input_features_change_the_answer(advisor):
    small = advisor.recommend("task_2", {"num_nodes": 100, "scenario_type": "low_demand"})
    large = advisor.recommend("task_2", {"num_nodes": 1900, "scenario_type": "peak_demand"})
    assert large.memory_bytes > 2 * small.memory_bytes


def test_unseen_category_and_missing_features_work(advisor):
    for features in ({"num_nodes": 500, "scenario_type": "never_seen"}, {}, None, {"unknown": "x", "num_nodes": "n/a"}):
        rec = advisor.recommend("task_1", features)
        assert rec.memory_bytes > 0 and rec.method in ("learned", "percentile")


def test_confidence_is_lower_for_noisy_tasks(advisor):
    steady = advisor.recommend("task_1", FEATURES)
    noisy = advisor.recommend("task_5", FEATURES)
    assert noisy.confidence < steady.confidence


def test_confidence_is_lower_with_little_history(history):
    few = history[(history["task"] != "task_3") | (history.groupby("task").cumcount() < 8)]
    advisor = LearnedAdvisor(coverage=0.95, min_history=5).fit(few)
    assert advisor.recommend("task_3", FEATURES).confidence < advisor.recommend("task_1", FEATURES).confidence


def test_short_history_falls_back_to_the_resource_advisor(history):
    few = history[(history["task"] != "task_3") | (history.groupby("task").cumcount() < 3)]
    advisor = LearnedAdvisor(min_history=5).fit(few)
    rec = advisor.recommend("task_3", FEATURES)
    assert rec.method == "percentile"
    assert "min_history" in rec.basis and "ResourceAdvisor" in rec.basis
    unknown = advisor.recommend("brand_new", FEATURES)
    assert unknown.method == "percentile" and "no history" in unknown.basis


def test_low_confidence_falls_back(advisor):
    strict = LearnedAdvisor(coverage=0.98, confidence_threshold=0.99)
    strict.__dict__.update({k: v for k, v in advisor.__dict__.items() if k.endswith("_")})
    strict._reset_caches()
    rec = strict.recommend("task_1", FEATURES)
    assert rec.method == "percentile" and "confidence" in rec.basis
    assert rec.details["model_confidence"] < 0.99


def test_batch_matches_single(advisor, future):
    reqs = requests(future.iloc[:40])
    batch = advisor.recommend_batch(reqs)
    single = [advisor.recommend(r["task"], r["input_features"]) for r in reqs]
    assert [r.memory_bytes for r in batch] == [r.memory_bytes for r in single]
    assert [r.confidence for r in batch] == [r.confidence for r in single]
    assert [r.method for r in batch] == [r.method for r in single]


def test_update_refreshes_history_without_refitting(history):
    advisor = LearnedAdvisor(min_history=5).fit(history[history["task"] != "task_4"])
    assert advisor.recommend("task_4", FEATURES).method == "percentile"
    models = dict(advisor.models_)
    advisor.update(history)
    assert advisor.models_ == models
    rec = advisor.recommend("task_4", FEATURES)
    assert rec.details["history"] == 500


def test_unknown_model_type_names_the_valid_ones(history):
    with pytest.raises(ValueError) as info:
        LearnedAdvisor(model_type="xgboost").fit(history)
    for name in ("gradient_boosting", "random_forest", "quantile_regression"):
        assert name in str(info.value)
    with pytest.raises(ValueError):
        LearnedAdvisor.from_history("/nonexistent", model_type="xgboost")


@pytest.mark.parametrize("model_type", ["random_forest", "quantile_regression"])
def test_other_model_types(model_type):
    frame = make_frame(n_tasks=3, runs_per_task=150, seed=3)
    advisor = LearnedAdvisor(model_type=model_type, coverage=0.9).fit(frame)
    rec = advisor.recommend("task_1", FEATURES)
    assert rec.memory_bytes > 0 and rec.model_version is None
    assert advisor.metadata()["model_type"] == model_type


def test_oom_floor_and_minimum_apply_to_learned_answers(history):
    frame = history.copy()
    last = frame.index[frame["task"] == "task_0"][-1]
    frame.loc[last, ["state", "peak_memory_bytes"]] = ["oom_killed", 40.0 * 1024**3]
    rec = LearnedAdvisor().fit(frame).recommend("task_0", FEATURES)
    assert rec.memory_bytes >= 1.2 * 40 * 1024**3


def test_extend_with_new_runs_equals_update_with_everything():
    frame = make_frame(n_tasks=3, runs_per_task=80, seed=9).sort_values("end_time").reset_index(drop=True)
    updated = LearnedAdvisor().fit(frame.iloc[:150])
    extended = LearnedAdvisor().fit(frame.iloc[:150])
    updated.update(frame)
    for start in range(150, len(frame), 30):
        extended.extend(frame.iloc[start:start + 30])
    for group in ("task", "tag", "config"):
        a, b = updated.history_[group], extended.history_[group]
        assert set(a.index) == set(b.index)
        for key in a.index:
            assert np.allclose(a.row(key), b.row(key), equal_nan=True)
    reqs = requests(frame.iloc[-40:])
    # the adaptive offset sees the runs in the batches they arrived in (one batch against five),
    # so it may differ; what the history statistics give does not
    for advisor in (updated, extended):
        advisor.adaptive_.offset = 0.0
        advisor._reset_caches()
    assert [r.memory_bytes for r in updated.recommend_batch(reqs)] == [r.memory_bytes for r in extended.recommend_batch(reqs)]
    assert updated.adaptive_.observed == extended.adaptive_.observed == len(frame) - 150


def test_a_task_and_tag_never_seen_get_the_known_peaks_quantile_not_the_fixed_default(advisor, history):
    rec = advisor.recommend("never_seen_task", FEATURES, tag="never_seen_tag", coverage=0.98)
    peaks = np.sort(history["peak_memory_bytes"].dropna().to_numpy())
    expected = peaks[int(np.ceil((peaks.size + 1) * 0.98)) - 1]
    assert rec.method == "percentile"
    assert rec.memory_bytes == max(int(np.ceil(expected)), 250 * 2**20)
    assert rec.memory_bytes < 4 * 2**30 or expected >= 4 * 2**30
    assert "known runs" in rec.basis and "never_seen_task" in rec.basis
    assert rec.details["fallback_method"] == "all_runs"
    batch = advisor.recommend_batch([{"task": "never_seen_task", "tag": "never_seen_tag", "coverage": 0.98}])[0]
    assert batch.memory_bytes == rec.memory_bytes


def test_spread_power_scales_the_score_and_stays_calibrated(history, future, advisor):
    assert "memory_spread" not in advisor.models_  # default: one log-width per task, no spread model
    scaled = LearnedAdvisor(coverage=0.98, spread_power=0.5).fit(history)
    assert "memory_spread" in scaled.models_
    rate, learned = under_provision(scaled, future, 0.98)
    assert learned.mean() > 0.6
    assert 0.005 <= rate <= 0.05, rate


def test_history_without_memory_still_gets_the_learned_duration():
    """Traces that log times but no memory (CTC-SP2) train a duration model; the memory answer
    comes from the ResourceAdvisor's default and says why, the duration from the model."""
    frame = make_frame(n_tasks=3, runs_per_task=150)
    frame["peak_memory_bytes"] = np.nan
    advisor = LearnedAdvisor(coverage=0.9).fit(frame)
    assert not advisor.ready
    assert "no memory model" in advisor.unavailable_reason_

    small = advisor.recommend("task_2", {"num_nodes": 200, "scenario_type": "baseline"}, target="duration")
    large = advisor.recommend("task_2", {"num_nodes": 1900, "scenario_type": "baseline"}, target="duration")
    assert small.method == "percentile"
    assert "model: predicted duration" in small.basis
    # the synthetic duration grows with num_nodes: a model sees it, a per-task median cannot
    assert large.predicted_duration_s > 2 * small.predicted_duration_s
    truth = 30 + 1900 * 0.05 * 3
    assert abs(large.predicted_duration_s - truth) / truth < 0.3
    memory = advisor.recommend("task_2", {"num_nodes": 1900, "scenario_type": "baseline"})
    assert memory.memory == "4Gi" and "no memory usage recorded: default 4Gi" in memory.basis
    assert memory.predicted_duration_s == pytest.approx(large.predicted_duration_s)

    batch = advisor.recommend_batch([{"task": "task_2", "input_features": {"num_nodes": 1900, "scenario_type": "baseline"},
                                      "target": "duration"}])
    assert batch[0].predicted_duration_s == pytest.approx(large.predicted_duration_s, rel=1e-5)
    # a task never seen has no model duration to trust: the ResourceAdvisor (its tag) answers
    unseen = advisor.recommend("task_new", {"num_nodes": 1900}, tag="group-0", target="duration")
    assert "model: predicted duration" not in unseen.basis
