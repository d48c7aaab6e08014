"""The Python API examples of docs (../shared/design.md, "The Python API users already know"),
run against telemetry written through the RunStore exactly as a user's runs are."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.advising.synthetic import GiB, make_frame, write_runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scalable") / "runs"
    simulation = make_frame(n_tasks=1, runs_per_task=50, seed=11)
    simulation["task"] = "run_simulation"
    simulation["tag"] = "demeter"
    simulation["peak_memory_bytes"] = np.minimum(np.linspace(12, 17, 50), 16) * GiB
    simulation["cpu_seconds"] = simulation["duration_s"] * 3.5
    others = make_frame(n_tasks=3, runs_per_task=120, seed=12, t0=1.7e9 + 50 * 60)
    others["run_id"] = [f"run-b{i // 100}" for i in range(len(others))]
    others["key"] = [f"b{i}" for i in range(len(others))]
    write_runs(root, simulation)
    write_runs(root, others)
    return root


def test_resource_advisor_example(runs_dir, capsys):
    from scalable import ResourceAdvisor

    advisor = ResourceAdvisor.from_history(str(runs_dir))
    print(advisor.recommend(task="run_simulation"))
    assert capsys.readouterr().out.strip() == "{'cpus': 4, 'memory': '16Gi', 'basis': 'p95 of 50 historical runs'}"


def test_learned_advisor_example(runs_dir, capsys):
    from scalable import LearnedAdvisor

    advisor = LearnedAdvisor.from_history(str(runs_dir), model_type="gradient_boosting")
    rec = advisor.recommend(task="run_simulation",
                            input_features={"num_nodes": 1200, "scenario_type": "peak_demand"})
    print(rec)
    out = capsys.readouterr().out.strip()
    assert out.startswith("{'cpus': ") and "'memory': '" in out and "'confidence': " in out
    resources, confidence = rec.resources, rec.confidence
    assert set(resources) == {"cpus", "memory"} and isinstance(resources["cpus"], int)
    assert 0.0 <= confidence <= 1.0 and rec["confidence"] == confidence
    assert rec["memory"] == resources["memory"] == rec.memory
    assert rec.method in ("learned", "percentile")
    learned = advisor.recommend(task="task_1", input_features={"num_nodes": 1200, "scenario_type": "peak_demand"})
    assert learned.method == "learned" and learned.model_version is None


@pytest.mark.parametrize("model_type", ["gradient_boosting", "random_forest", "quantile_regression"])
def test_every_documented_model_type_is_accepted(runs_dir, model_type):
    from scalable import LearnedAdvisor

    rec = LearnedAdvisor.from_history(str(runs_dir), model_type=model_type).recommend(task="task_0")
    assert rec.memory_bytes > 0


def test_scaler_accepts_the_advisor_and_threads_its_history_as_the_readme_shows(runs_dir):
    from scalable import AdaptiveScaler, ResourceAdvisor, ScalingHistory

    advisor = ResourceAdvisor.from_history(str(runs_dir))
    scaler = AdaptiveScaler(advisor=advisor, min_workers={"demeter": 2}, max_workers={"demeter": 20},
                            scale_up_threshold=0.8, scale_down_threshold=0.3, cooldown_seconds=60)
    history = ScalingHistory()
    decision = scaler.evaluate({"demeter": {"queued": 40, "processing": 2, "workers": 2}}, history=history)
    history = decision.commit(decision.changes)
    assert decision.changes == ["demeter"] and history.of("demeter").last_action == "scale_up"
