"""``scalable advise`` and ``scalable train``: output, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from scalable.cli.main import app
from scalable.units import parse_memory
from tests.unit.advising.synthetic import make_frame, write_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "runs"
    write_runs(root, make_frame(n_tasks=3, runs_per_task=80, seed=21))
    return root


def test_advise_text(runs_dir):
    result = runner.invoke(app, ["advise", "--task", "task_1", "--input", "num_nodes=1200",
                                 "--input", "scenario_type=peak_demand", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, result.output
    assert "memory" in result.output and "confidence" in result.output and "num_nodes=1200" in result.output


def test_advise_json_percentile(runs_dir):
    result = runner.invoke(app, ["advise", "--task", "task_2", "--runs-dir", str(runs_dir), "--format", "json",
                                 "--advisor", "percentile", "--coverage", "0.9"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["method"] == "percentile" and data["basis"].startswith("p90 of 80") and data["memory"]


def test_numbers_in_input_are_numbers():
    from scalable.cli.advise import parse_input

    assert parse_input(["n=1200", "x=1.5", "s=peak", "e=1e3"]) == {"n": 1200, "x": 1.5, "s": "peak", "e": 1000.0}


@pytest.mark.parametrize(
    "args, message",
    [
        (["advise", "--task", "t", "--input", "novalue"], "key=value"),
        (["advise", "--task", "t", "--model-type", "xgboost"], "gradient_boosting"),
        (["advise", "--task", "t", "--coverage", "1.5"], "coverage"),
        (["advise", "--task", "t", "--format", "yaml"], "format"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(runs_dir, args, message):
    result = runner.invoke(app, [*args, "--runs-dir", str(runs_dir)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_missing_runs_dir_is_a_user_mistake(tmp_path):
    result = runner.invoke(app, ["advise", "--task", "t", "--runs-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no runs directory" in result.output


def test_train_then_advise_from_the_stored_model(runs_dir, tmp_path):
    models = tmp_path / "models"
    result = runner.invoke(app, ["train", "--runs-dir", str(runs_dir), "--model-dir", str(models), "--coverage", "0.9"])
    assert result.exit_code == 0, result.output
    assert "v1" in result.output and "coverage_measured" in result.output
    result = runner.invoke(app, ["advise", "--task", "task_0", "--model-dir", str(models), "--runs-dir",
                                 str(runs_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model_version"] == "v1"


def test_advise_with_a_tampered_model_warns_and_falls_back(runs_dir, tmp_path):
    models = tmp_path / "models"
    assert runner.invoke(app, ["train", "--runs-dir", str(runs_dir), "--model-dir", str(models)]).exit_code == 0
    (models / "default" / "v1" / "model.skops").write_bytes(b"garbage")
    result = runner.invoke(app, ["advise", "--task", "task_0", "--model-dir", str(models), "--runs-dir",
                                 str(runs_dir), "--format", "json"])
    assert result.exit_code == 0
    assert '"method": "percentile"' in result.output


def test_advise_answers_from_the_cached_model_while_the_telemetry_is_unchanged(tmp_path):
    root = tmp_path / ".scalable" / "runs"
    write_runs(root, make_frame(n_tasks=2, runs_per_task=60, seed=5))
    args = ["advise", "--task", "task_1", "--runs-dir", str(root), "--format", "json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    cache = tmp_path / ".scalable" / "models" / "advise-gradient_boosting-0.95"
    (version,) = [p.name for p in cache.iterdir() if p.name.startswith("v")]
    assert runner.invoke(app, args).output == first.output
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("v")) == [version], "the cached model answered"
    write_runs(root, make_frame(n_tasks=2, runs_per_task=5, seed=6))
    assert runner.invoke(app, args).exit_code == 0
    (retrained,) = [p.name for p in cache.iterdir() if p.name.startswith("v")]
    assert retrained != version, "new telemetry retrains (and the older version is pruned)"


def test_advise_sizes_the_retry_after_an_oom_kill(runs_dir):
    base = ["advise", "--task", "task_1", "--runs-dir", str(runs_dir), "--format", "json"]
    plain = json.loads(runner.invoke(app, base).output)
    retry = runner.invoke(app, base + ["--failed-memory", plain["memory"]])
    assert retry.exit_code == 0, retry.output
    assert "OOM-killed at" in json.loads(retry.output)["basis"]
    refused = runner.invoke(app, base + ["--failed-memory", "lots"])
    assert refused.exit_code == 2 and "--failed-memory" in refused.output
    percentile = runner.invoke(app, base + ["--advisor", "percentile", "--failed-memory", "1Gi"])
    assert percentile.exit_code == 0, percentile.output
    answer = json.loads(percentile.output)
    assert "OOM-killed at 1Gi" in answer["basis"], answer
    assert parse_memory(answer["memory"]) >= 2 * 2**30, "at least double what was killed"


def test_advise_offers_only_the_advisors_there_are(runs_dir):
    wrong = runner.invoke(app, ["advise", "--task", "task_1", "--runs-dir", str(runs_dir), "--advisor", "lerned"])
    assert wrong.exit_code == 2 and "learned" in wrong.output and "percentile" in wrong.output, wrong.output
