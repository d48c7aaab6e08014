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
