"""Model store: versions, metadata, atomic writes, and refusing anything it cannot trust."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalable import LearnedAdvisor
from scalable.advising.model_store import MODEL_FILE, ModelStore, ModelStoreError
from tests.unit.advising.synthetic import make_frame

FEATURES = {"num_nodes": 800, "scenario_type": "baseline"}


@pytest.fixture(scope="module")
def frame():
    return make_frame(n_tasks=3, runs_per_task=120, seed=4)


@pytest.fixture(scope="module")
def trained(frame):
    return LearnedAdvisor(coverage=0.9).fit(frame)


def test_save_and_load_give_the_same_answers(tmp_path, trained):
    version_dir = trained.save(tmp_path)
    assert version_dir == tmp_path / "default" / "v1"
    loaded = LearnedAdvisor.load(tmp_path)
    original = trained.recommend("task_1", FEATURES)
    again = loaded.recommend("task_1", FEATURES)
    assert again.memory_bytes == original.memory_bytes and again.confidence == original.confidence
    assert again.model_version == "v1"
    assert LearnedAdvisor.load(version_dir).model_version == "v1"
    assert LearnedAdvisor.load(tmp_path / "default").model_version == "v1"


def test_versions_metadata_and_latest(tmp_path, trained):
    store = ModelStore(tmp_path)
    trained.save(tmp_path)
    trained.save(tmp_path)
    assert store.versions() == [1, 2] and store.latest() == 2
    meta = store.metadata()
    assert meta["version"] == "v2" and meta["format"] == "skops"
    for key in ("schema_version", "libraries", "feature_names", "training_data_digest", "quality", "created_at",
                "model_sha256"):
        assert meta[key], key
    assert meta["libraries"]["scikit-learn"]
    assert meta["quality"]["memory"]["coverage_promised"] == 0.9
    assert LearnedAdvisor.load(tmp_path, version=1).model_version == "v1"
    assert not list((tmp_path / "default").glob(".staging-*"))


def test_tampered_model_file_is_refused(tmp_path, trained):
    version_dir = trained.save(tmp_path)
    path = version_dir / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="sha256"):
        LearnedAdvisor.load(tmp_path)


def test_untrusted_types_are_refused_even_with_a_matching_digest(tmp_path):
    import hashlib
    import os

    import skops.io as sio
    from sklearn.pipeline import FunctionTransformer

    store = ModelStore(tmp_path)
    version_dir = store.save("default", {"models": {"x": np.zeros(2)}}, {"params": {}})
    path = version_dir / MODEL_FILE
    sio.dump({"models": {"evil": FunctionTransformer(func=os.system)}}, path)
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (version_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelStoreError, match="untrusted"):
        store.load_model()


def test_corrupt_and_missing_files_fail_closed(tmp_path, trained):
    with pytest.raises(ModelStoreError, match="no model"):
        LearnedAdvisor.load(tmp_path)
    version_dir = trained.save(tmp_path)
    (version_dir / "metadata.json").write_text("{not json")
    with pytest.raises(ModelStoreError):
        LearnedAdvisor.load(tmp_path)
    (version_dir / "metadata.json").unlink()
    with pytest.raises(ModelStoreError):
        LearnedAdvisor.load(tmp_path)


def test_a_refused_model_falls_back_to_the_resource_advisor(tmp_path, trained, frame):
    version_dir = trained.save(tmp_path)
    (version_dir / MODEL_FILE).write_bytes(b"PK\x03\x04 not a model")
    advisor = LearnedAdvisor.load(tmp_path, on_error="fallback", history=frame)
    rec = advisor.recommend("task_1", FEATURES)
    assert rec.method == "percentile" and "sha256" in rec.basis and "ResourceAdvisor" in rec.basis
    empty = LearnedAdvisor.load(tmp_path / "nothing", on_error="fallback")
    assert empty.recommend("task_1").method == "percentile"


def test_invalid_names_are_rejected(tmp_path):
    with pytest.raises(ModelStoreError):
        ModelStore(tmp_path).versions("../escape")
