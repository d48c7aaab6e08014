"""cross_validate: time-ordered folds, no leakage, the promised scores per target."""

from __future__ import annotations

import numpy as np
import pytest

from scalable import cross_validate
from scalable.advising import validation
from tests.unit.advising.synthetic import make_frame


def test_scores_per_target():
    result = cross_validate(make_frame(n_tasks=3, runs_per_task=120, seed=6), n_splits=3, coverage=0.9)
    assert set(result.summary.index) == {"memory", "cpus", "duration"}
    for column in ("mae", "coverage", "under_provision_rate", "slack"):
        assert column in result.summary.columns
    memory = result.summary.loc["memory"]
    assert memory["coverage"] + memory["under_provision_rate"] == pytest.approx(1.0)
    assert 0.75 <= memory["coverage"] <= 1.0 and 0 < memory["slack"] < 1
    assert result.settings["folds_scored"] == 3
    assert result.to_dict()["summary"]


def test_folds_never_train_on_runs_that_end_after_the_test_block(monkeypatch):
    frame = make_frame(n_tasks=2, runs_per_task=80, seed=7)
    seen = []
    original = validation.ResourceAdvisor.fit

    def spy(self, train, y=None):
        seen.append(train["end_time"].max())
        return original(self, train)

    monkeypatch.setattr(validation.ResourceAdvisor, "fit", spy)
    result = cross_validate(frame, advisor="percentile", n_splits=4, min_train_runs=10)
    submitted = np.sort(frame["submitted_at"].to_numpy())
    folds = result.folds[result.folds["target"] == "memory"]
    assert len(seen) == len(folds) >= 3
    n = len(frame)
    test_size = n // 5
    for end, fold in zip(seen, folds["fold"]):
        first_test_submit = submitted[n - (4 - fold) * test_size]
        assert end < first_test_submit


def test_slack_and_rate_definitions():
    scores = validation.score(np.array([10.0, 10.0, 4.0]), np.array([5.0, 10.0, 5.0]), np.array([5.0, 9.0, 5.0]))
    assert scores["under_provision_rate"] == pytest.approx(1 / 3)
    assert scores["slack"] == pytest.approx(5 / 20)
    assert scores["mae"] == pytest.approx(1 / 3)


def test_rejects_bad_arguments():
    frame = make_frame(n_tasks=1, runs_per_task=20)
    with pytest.raises(ValueError, match="gradient_boosting"):
        cross_validate(frame, model_type="nope")
    with pytest.raises(ValueError):
        cross_validate(frame.head(3), n_splits=5)
