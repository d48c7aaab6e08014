from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from scalable.cli.main import app

from .test_nextflow import HUMAN, tsv
from .test_sacct import HEADER, ROWS
from .test_swf import SNIPPET

runner = CliRunner()


@pytest.fixture
def swf(tmp_path):
    path = tmp_path / "t.swf.gz"
    path.write_bytes(gzip.compress(SNIPPET.encode()))
    return path


def test_import_swf_and_report(tmp_path, swf):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["telemetry", "import", "--format", "swf", str(swf), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert "imported 4 jobs into run" in result.output and "skipped 3" in result.output
    report = runner.invoke(app, ["telemetry", "report", "--runs-dir", str(runs), "--format", "json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    assert data["runs"] == 1 and data["task_records"] == 4
    assert data["top_tasks"][0]["task"] == "exe-42" and data["top_tasks"][0]["count"] == 1
    text = runner.invoke(app, ["telemetry", "report", "--runs-dir", str(runs)])
    assert text.exit_code == 0 and "exe-42" in text.output and "task records" in text.output


def test_import_sacct(tmp_path):
    path = tmp_path / "sacct.txt"
    path.write_text("\n".join([HEADER] + ROWS) + "\n")
    result = runner.invoke(app, ["telemetry", "import", "-f", "sacct", str(path), "--runs-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "imported 4 jobs" in result.output


def test_import_nextflow_reports_rows_read_imported_and_skipped(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text(tsv(HUMAN) + "broken\tline\n")
    runs = tmp_path / "r"
    result = runner.invoke(app, ["telemetry", "import", "-f", "nextflow", str(path), "--runs-dir", str(runs),
                                 "--timezone", "UTC"])
    assert result.exit_code == 0, result.output
    assert "read 10 rows, imported 7 tasks into run" in result.output
    assert "skipped 3 (1 unfinished task, 1 cached task, 1 corrupt line)" in result.output
    report = json.loads(runner.invoke(app, ["telemetry", "report", "--runs-dir", str(runs), "-f", "json"]).output)
    assert report["states"] == {"succeeded": 4, "oom_killed": 1, "erred": 1, "cancelled": 1}
    assert sorted(report["features"]) == ["attempt", "input_bytes", "requested_cpus", "requested_memory_bytes",
                                          "requested_time_s"]


def test_report_counts_skipped_lines(tmp_path, swf):
    runs = tmp_path / "runs"
    runner.invoke(app, ["telemetry", "import", "--format", "swf", str(swf), "--runs-dir", str(runs)])
    run_dir = next(p for p in runs.iterdir() if not p.name.startswith("."))
    with open(run_dir / "tasks.jsonl", "a") as fh:
        fh.write("{broken\n")
    data = json.loads(runner.invoke(app, ["telemetry", "report", "--runs-dir", str(runs), "-f", "json"]).output)
    assert data["skipped"] == {"corrupt_line": 1} and data["task_records"] == 4


@pytest.mark.parametrize("args,message", [
    (["import", "--format", "swf", "/no/such/file.swf"], "no such file"),
    (["import", "--format", "parquet", "{swf}"], "unknown format"),
    (["import", "--format", "swf", "{tmp}"], "not a file"),
    (["import", "--format", "sacct", "{swf}"], "no jobs imported"),
    (["import", "--format", "nextflow", "{swf}"], "no tasks imported"),
    (["import", "--format", "nextflow", "--timezone", "Mars/Olympus", "{swf}"], "unknown time zone"),
    (["import", "--format", "swf", "--timezone", "UTC", "{swf}"], "--timezone applies to --format nextflow only"),
    (["report", "--runs-dir", "/no/such/runs"], "no runs directory"),
    (["report", "--runs-dir", "{tmp}", "--format", "xml"], "unknown format"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, swf, args, message):
    args = [a.format(swf=swf, tmp=tmp_path) for a in args]
    if args[0] == "import":
        args += ["--runs-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, ["telemetry", *args])
    assert result.exit_code == 2, result.output
    output = result.output.strip()
    assert message in output and "Traceback" not in output
    assert len(output.splitlines()) == 1
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]
