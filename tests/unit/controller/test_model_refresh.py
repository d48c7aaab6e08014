"""Between retrains the operator's champion follows the namespace's history: its adaptive offset
moves with the misses of the runs finished since training, on a fresh copy swapped in whole.

Rerun: ``pytest tests/unit/controller/test_model_refresh.py -q``
"""

from __future__ import annotations

import asyncio

import pytest

from scalable.controller.storage import TelemetryRoot
from scalable.controller.training import AdvisorProvider, train_job
from tests.integration.harness import write_history

pytestmark = pytest.mark.slow


def test_the_served_model_follows_runs_that_need_more_between_retrains(tmp_path):
    root = TelemetryRoot(tmp_path)
    runs = root.runs_dir("team-a", create=True)
    write_history(runs, n=120, peak_gib=1.0, spread=0.05)
    result = train_job({"runs_dir": str(runs), "model_dir": str(root.model_dir("team-a", "am", create=True)),
                        "min_history": 5})
    assert result["outcome"] == "promoted"
    provider = AdvisorProvider(None, root, history_ttl_s=0.0)
    first, version = asyncio.run(provider.learned("team-a", "am"))
    before = first.recommend("simulate", {"size": 102}).memory_bytes
    assert first.adaptive_.observed == 0

    for batch in range(6):  # runs needing 60% more, finished after the training
        write_history(runs, n=20, peak_gib=1.6, spread=0.05, start=1.8e9 + batch * 10_000)
        served, again = asyncio.run(provider.learned("team-a", "am"))
    assert again == version, "the same champion, refreshed, not retrained"
    assert served is not first, "a fresh copy is swapped in; the one in use is never changed under it"
    assert first.recommend("simulate", {"size": 102}).memory_bytes == before
    after = served.recommend("simulate", {"size": 102})
    assert served.adaptive_.observed == 120 and served.adaptive_.offset > 0
    assert after.memory_bytes > before and "adaptive offset" in after.basis
