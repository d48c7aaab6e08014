"""One rule and one wording for the same argument everywhere (issue 14 point 9): coverage is
(0, 1) in the constructors, recommend() and the CLI; a missing runs directory is an error in
from_history and the CLI; --format text|json, --model-type a choice, shell completion on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from scalable import LearnedAdvisor, ResourceAdvisor
from scalable.advising.arguments import existing_runs_dir
from scalable.advising.learned_advisor import MODEL_TYPES
from scalable.cli.main import app
from scalable.cli.options import ModelType
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.store import RunStore

COVERAGE_WORDING = "must be between 0 and 1, exclusive (e.g. 0.95)"


def _text(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with RunStore(root).open_run(workflow="w", run_id="run-0") as run:
        for i in range(12):
            run.append(TaskObservation(run_id="run-0", task="t", submitted_at=1_700_000_000.0 + 10 * i,
                                       duration_s=1.0, peak_memory_bytes=100_000_000 + i))
    return root


@pytest.mark.parametrize("advisor", [ResourceAdvisor, LearnedAdvisor])
def test_from_history_of_a_missing_runs_dir_is_an_error_with_the_clis_wording(advisor, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as raised:
        advisor.from_history(missing)
    assert str(raised.value).startswith(f"no runs directory at {missing}")
    for argv in (["advise", "--task", "t"], ["evaluate"], ["train", "--model-dir", str(tmp_path / "m")],
                 ["session", "decide", "--queued", "1", "--workers", "1"]):
        result = CliRunner().invoke(app, [*argv, "--runs-dir", str(missing)])
        assert result.exit_code == 2, (argv, result.output)
        assert str(raised.value) in _text(result), argv


@pytest.mark.parametrize("coverage", [1.0, 0.0, 1.5])
def test_coverage_is_the_open_interval_everywhere(coverage, runs):
    with pytest.raises(ValueError, match=r"between 0 and 1, exclusive"):
        ResourceAdvisor(coverage=coverage).fit(_frame(runs))
    with pytest.raises(ValueError, match=r"between 0 and 1, exclusive"):
        ResourceAdvisor.from_history(runs).recommend("t", coverage=coverage)
    with pytest.raises(ValueError, match=r"between 0 and 1, exclusive"):
        LearnedAdvisor(coverage=coverage).fit(_frame(runs))
    for argv in (["advise", "--task", "t"], ["advise", "--task", "t", "--advisor", "percentile"], ["evaluate"]):
        result = CliRunner().invoke(app, [*argv, "--runs-dir", str(runs), "--coverage", str(coverage)])
        assert result.exit_code == 2, (argv, result.output)
        assert f"--coverage {COVERAGE_WORDING}" in _text(result), argv


def _frame(runs):
    from scalable.telemetry.loader import load_tasks

    return load_tasks(runs).frame


def test_the_same_missing_dir_message_from_the_api_and_the_cli(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        existing_runs_dir(tmp_path / "x")
    assert "scalable telemetry import" in str(raised.value)


@pytest.mark.parametrize("argv", [["advise", "--task", "t", "--advisor", "percentile"],
                                  ["session", "decide", "--queued", "4", "--workers", "1"]])
def test_format_json_everywhere_and_json_kept_as_a_hidden_alias(argv, runs):
    extra = ["--runs-dir", str(runs)] if argv[0] == "advise" else []
    result = CliRunner().invoke(app, [*argv, *extra, "--format", "json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    if argv[0] == "session":
        alias = CliRunner().invoke(app, [*argv, "--json"])
        assert alias.exit_code == 0 and json.loads(alias.stdout) == json.loads(result.stdout)
        assert "--json" not in CliRunner().invoke(app, ["session", "decide", "--help"]).output


@pytest.mark.parametrize("argv", [["advise", "--task", "t"], ["evaluate"], ["train", "--model-dir", "m"],
                                  ["session", "decide", "--queued", "1", "--workers", "1"]])
def test_a_bad_format_is_refused_in_one_wording(argv):
    result = CliRunner().invoke(app, [*argv, "--format", "xml"])
    assert result.exit_code == 2
    assert "Invalid value for '--format' / '-f'" in _text(result) and "'text', 'json'" in _text(result)


@pytest.mark.parametrize("argv", [["advise", "--task", "t"], ["evaluate"], ["train", "--model-dir", "m"]])
def test_model_type_is_a_choice_of_the_real_model_types(argv):
    assert tuple(m.value for m in ModelType) == MODEL_TYPES
    result = CliRunner().invoke(app, [*argv, "--model-type", "xgb"])
    assert result.exit_code == 2
    assert "Invalid value for '--model-type'" in _text(result)
    assert all(m in _text(result) for m in MODEL_TYPES)


def test_shell_completion_is_on():
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output
