"""Recommendation: attribute and mapping access, printing, Kubernetes resources, immutability."""

from __future__ import annotations

import dataclasses

import pytest

from scalable.advising.recommendation import Recommendation

GiB = 1024**3


def percentile_rec() -> Recommendation:
    return Recommendation(cpus=4, memory_bytes=16 * GiB, confidence=0.71, method="percentile",
                          basis="p95 of 50 historical runs", predicted_duration_s=12.0, task="run_simulation")


def learned_rec() -> Recommendation:
    return Recommendation(cpus=2, memory_bytes=8 * GiB, confidence=0.87, method="learned", basis="model",
                          predicted_duration_s=42.5, interval=(6 * GiB, 8 * GiB), coverage=0.95)


def test_percentile_recommendation_prints_like_the_documentation():
    assert repr(percentile_rec()) == "{'cpus': 4, 'memory': '16Gi', 'basis': 'p95 of 50 historical runs'}"
    assert str(percentile_rec()) == repr(percentile_rec())


def test_learned_recommendation_prints_its_confidence_first():
    text = repr(learned_rec())
    assert text.startswith("{'cpus': 2, 'memory': '8Gi', 'confidence': 0.87, ")
    assert "'method': 'learned'" in text


def test_attribute_and_mapping_access_agree():
    rec = learned_rec()
    assert rec.resources == {"cpus": 2, "memory": "8Gi"}
    assert rec["memory"] == rec.memory == "8Gi"
    assert rec["confidence"] == rec.confidence == 0.87
    assert rec.memory_bytes == 8 * GiB and rec.interval == (6 * GiB, 8 * GiB)
    assert dict(rec) == {k: rec[k] for k in rec.keys()}
    assert list(rec) == list(rec.keys())
    assert percentile_rec()["confidence"] == 0.71  # reachable by key though not printed
    with pytest.raises(KeyError):
        rec["nonsense"]


def test_to_k8s_gives_requests_and_limits():
    assert learned_rec().to_k8s() == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    }


def test_immutable_and_validated():
    rec = learned_rec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.cpus = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        Recommendation(cpus=1, memory_bytes=1, confidence=1.5, method="learned", basis="")
    with pytest.raises(ValueError):
        Recommendation(cpus=1, memory_bytes=1, confidence=0.5, method="guess", basis="")


def test_as_dict_is_json_ready():
    import json

    data = json.loads(json.dumps(learned_rec().as_dict()))
    assert data["memory"] == "8Gi" and data["interval"] == [6 * GiB, 8 * GiB]
