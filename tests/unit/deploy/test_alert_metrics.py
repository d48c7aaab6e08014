"""The two series the chart's alerts need beyond counters (templates/prometheusrule.yaml):
scalable_scaling_held (ScalableScalingHeld) and scalable_model_trained_timestamp_seconds
(ScalableModelStale), as /metrics shows them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from scalable.controller.advisor_model import _last_good_training
from scalable.controller.metrics import OperatorMetrics


def _samples(metrics: OperatorMetrics, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples if s.name == name}


def test_a_workflow_has_one_held_series_at_most_and_none_while_it_scales():
    m = OperatorMetrics()
    m.scaling_state("team", "wf", "NoMetrics")
    m.scaling_state("team", "other", "Paused")
    assert _samples(m, "scalable_scaling_held") == {
        (("namespace", "team"), ("reason", "NoMetrics"), ("workflow", "wf")): 1.0,
        (("namespace", "team"), ("reason", "Paused"), ("workflow", "other")): 1.0,
    }
    m.scaling_state("team", "wf", "ClusterNotFound")  # the reason changed: the old series goes
    assert (("namespace", "team"), ("reason", "ClusterNotFound"), ("workflow", "wf")) in _samples(m, "scalable_scaling_held")
    assert len(_samples(m, "scalable_scaling_held")) == 2
    m.scaling_state("team", "wf", None)  # scales again
    m.forget_workflow("team", "other", [])  # deleted
    assert _samples(m, "scalable_scaling_held") == {}


def test_the_trained_time_is_the_last_good_training_else_the_serving_models():
    trained = {"conditions": [{"type": "Trained", "status": "True"}]}
    failing = {"conditions": [{"type": "Trained", "status": "False", "reason": "TrainingFailed"}]}
    champion = {"version": "v3", "trained_at": 1000.0}
    assert _last_good_training(trained, 5000.0, champion) == 5000.0
    # trainedAt moves on failed trainings too: the serving model's time is the one that ages
    assert _last_good_training(failing, 5000.0, champion) == 1000.0
    assert _last_good_training(failing, 5000.0, None) is None
    m = OperatorMetrics()
    m.model_trained_at("team", "model", 1000.0)
    assert _samples(m, "scalable_model_trained_timestamp_seconds") == {(("model", "model"), ("namespace", "team")): 1000.0}
    m.forget_model("team", "model")
    assert _samples(m, "scalable_model_trained_timestamp_seconds") == {}
