"""Between retrains the operator's champion follows the namespace's history: its adaptive offset
moves with the misses of the runs finished since training, on a fresh copy swapped in whole.

Rerun: ``pytest tests/unit/controller/test_model_refresh.py -q``
"""

from __future__ import annotations

import asyncio

import pytest

from scalable.advising.adaptive_checkpoint import CHECKPOINT_FILE, load_checkpoint
from scalable.controller.storage import TelemetryRoot
from scalable.controller.training import MODEL_NAME, AdvisorProvider, train_job
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


def test_a_restarted_operator_goes_on_from_the_checkpointed_offset(tmp_path):
    root = TelemetryRoot(tmp_path)
    runs = root.runs_dir("team-a", create=True)
    write_history(runs, n=120, peak_gib=1.0, spread=0.05)
    model_dir = root.model_dir("team-a", "am", create=True)
    assert train_job({"runs_dir": str(runs), "model_dir": str(model_dir), "min_history": 5})["outcome"] == "promoted"
    provider = AdvisorProvider(None, root, history_ttl_s=0.0)
    for batch in range(6):
        write_history(runs, n=20, peak_gib=1.6, spread=0.05, start=1.8e9 + batch * 10_000)
        served, version = asyncio.run(provider.learned("team-a", "am"))
    assert served.adaptive_.observed == 120
    checkpoint = load_checkpoint(model_dir, MODEL_NAME, version)
    assert checkpoint is not None and checkpoint[0] == served.adaptive_

    restarted = AdvisorProvider(None, root, history_ttl_s=0.0)  # a new process: nothing in memory
    again, same = asyncio.run(restarted.learned("team-a", "am"))
    assert same == version
    assert again.adaptive_ == served.adaptive_, "six steps kept, not replayed as one batch"
    assert again.recommend("simulate", {"size": 102}).memory_bytes == served.recommend("simulate", {"size": 102}).memory_bytes

    # without the checkpoint the same restart starts the offset again from the version as trained
    (model_dir / MODEL_NAME / CHECKPOINT_FILE).unlink()
    cold, _ = asyncio.run(AdvisorProvider(None, root, history_ttl_s=0.0).learned("team-a", "am"))
    assert cold.adaptive_.offset < served.adaptive_.offset
