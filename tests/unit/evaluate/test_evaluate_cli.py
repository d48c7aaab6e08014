"""``scalable evaluate`` on a small synthetic runs directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from scalable.cli.main import app
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.store import RunStore

GiB = 1024**3


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two tasks whose memory grows with an input feature, 8 runs of 30 tasks in time order."""
    root = tmp_path_factory.mktemp("runs")
    store = RunStore(root)
    rng = np.random.default_rng(0)
    t = 1_700_000_000.0
    for r in range(8):
        with store.open_run(workflow="demo", run_id=f"run-{r:02d}") as run:
            for i in range(30):
                task = "simulate" if i % 2 else "aggregate"
                nodes = int(rng.integers(100, 2000))
                peak = int((0.5 + nodes / 1000) * GiB * (2 if task == "simulate" else 1) * rng.uniform(0.9, 1.1))
                duration = nodes / 50 * rng.uniform(0.8, 1.2)
                run.append(TaskObservation(
                    run_id=f"run-{r:02d}", task=task, tag="workers",
                    input_features={"num_nodes": nodes, "scenario_type": ["a", "b"][i % 2 == 0]},
                    submitted_at=t, started_at=t + 1, finished_at=t + 1 + duration, duration_s=duration,
                    cpu_seconds=duration, peak_memory_bytes=peak,
                ))
                t += 60.0
    return root


def test_evaluate_writes_a_png_and_exits_0(runs_dir, tmp_path):
    plot = tmp_path / "tradeoff.png"
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(runs_dir), "--plot", str(plot),
                                      "--format", "json", "--block-size", "10", "--refit-every", "40"])
    assert result.exit_code == 0, result.output
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(result.stdout)
    assert summary["n_scored"] == 120
    assert set(summary["advisors"]) == {"LearnedAdvisor", "ResourceAdvisor"}
    for entry in summary["advisors"].values():
        assert 0 <= entry["as_is"]["under_provision_rate"] <= 1
        assert set(entry["at_rate"]) == {"0.01", "0.02", "0.05"}


def test_evaluate_prints_a_table(runs_dir, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(runs_dir), "--plot",
                                      str(tmp_path / "p.png"), "--block-size", "20"])
    assert result.exit_code == 0, result.output
    assert "LearnedAdvisor" in result.stdout and "ResourceAdvisor" in result.stdout
    assert "requested" in result.stdout and "best percentile" in result.stdout


def test_missing_runs_dir_is_a_user_mistake(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no runs directory at" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_empty_runs_dir_is_a_user_mistake(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "too few" in " ".join(result.output.split())


def test_unknown_model_type_is_a_user_mistake(runs_dir):
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(runs_dir), "--model-type", "xgb"])
    assert result.exit_code == 2
    assert "gradient_boosting" in result.output
