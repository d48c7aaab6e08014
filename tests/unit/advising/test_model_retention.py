"""Issue 15, point 5: old model versions are pruned; the champion and the newest N stay.

Real skops files in a real directory: every training saves a version, and before this nothing
was ever removed, so ``retrainInterval: 0s`` filled the shared volume. ``train_job`` (the
operator's training process) prunes after each training and never removes the champion,
even when it is older than the newest N.

Rerun: ``pytest tests/unit/advising/test_model_retention.py -q``
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from scalable.advising.model_store import ModelStore
from scalable.controller.training import CHAMPION_FILE, KEEP_VERSIONS, MODEL_NAME, read_champion, train_job
from tests.integration.harness import write_history


def _save(store, n):
    for i in range(n):
        store.save("default", {"weights": np.arange(4.0) + i}, {"i": i})


def test_prune_keeps_the_newest_n_and_the_protected(tmp_path):
    store = ModelStore(tmp_path)
    _save(store, 9)
    removed = store.prune("default", keep=3, protect={"v2"})
    assert removed == ["v1", "v3", "v4", "v5", "v6"]
    assert store.versions("default") == [2, 7, 8, 9]
    assert not [p for p in (tmp_path / "default").iterdir() if p.name.startswith(".")], "nothing half-deleted left"
    _save(store, 1)  # numbering goes on after the newest, never reuses a pruned number
    assert store.latest("default") == 10
    assert store.load_model("default", "v2")[1]["i"] == 1
    with pytest.raises(ValueError):
        store.prune("default", keep=0)


def test_training_prunes_but_never_the_champion(tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "models"
    write_history(runs, n=60, peak_gib=3.0, spread=0.3)
    request = {"runs_dir": str(runs), "model_dir": str(models), "min_history": 5, "keep_versions": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train_job(request)
    assert first["outcome"] == "promoted" and first["champion"]["version"] == "v1"
    # pretend v1 is unbeatable, so later challengers are kept but never promoted
    champion = read_champion(models)
    champion["quality"] = {"memory": {"coverage_promised": 0.9, "coverage_measured": 1.0, "slack": 0.0}}
    (models / CHAMPION_FILE).write_text(json.dumps(champion))
    pruned = []
    for _ in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train_job(request)
        pruned += result["pruned"]
    assert ModelStore(models).versions(MODEL_NAME) == [1, 4, 5], "the champion and the newest 2"
    assert pruned == ["v2", "v3"]
    assert read_champion(models)["version"] == "v1"
    assert KEEP_VERSIONS >= 2
