"""An input recorded only on runs a model does not learn from must not break training."""

from __future__ import annotations

import numpy as np

from scalable.advising.learned_advisor import LearnedAdvisor
from tests.unit.advising.test_trend import _history


def test_an_input_present_only_on_failed_runs_trains_and_answers():
    frame = _history(300)
    failed = frame.index % 10 == 0
    frame.loc[failed, "state"] = "erred"
    frame.loc[failed, "peak_memory_bytes"] = np.nan
    frame.loc[failed, "duration_s"] = np.nan
    frame["feature.exit_reason_code"] = np.where(failed, 1.0, np.nan)  # a trace's failed tasks alone carry it
    advisor = LearnedAdvisor().fit(frame)
    assert advisor.ready
    assert advisor.recommend("sim", input_features={"size": 500}).method == "learned"


def test_a_task_nobody_ran_gets_the_memory_its_request_asks_for():
    advisor = LearnedAdvisor().fit(_history(300))
    asked = advisor.recommend("never_seen", input_features={"requested_memory_bytes": 16 * 2**30})
    assert asked.memory == "16Gi" and "the memory the request asks for" in asked.basis
    assert asked.details["fallback_method"] == "request"
    unasked = advisor.recommend("never_seen")
    assert unasked.details["fallback_method"] == "all_runs" and unasked.memory_bytes < 16 * 2**30
