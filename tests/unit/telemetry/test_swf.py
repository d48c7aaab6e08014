from __future__ import annotations

import gzip
from collections import Counter

import pytest

from scalable.telemetry.importers.swf import import_swf, parse_swf
from scalable.telemetry.loader import load_tasks
from scalable.telemetry.store import RunStore

SNIPPET = """\
; Version: SWF v2
; UnixStartTime: 1000000000
;
    1    10   5   100   4   80.5   2048   8   3600   4096   1   7   3   42   2   1  -1  -1
    2    20  -1    50   2     -1     -1  -1     -1     -1   0   9  -1   -1  -1  -1  -1  -1
    3    30   0    -1   1      1      1   1      1      1   1   7   3   42   1   1  -1  -1
    4    40   1     0   1      0      1   1    600     -1   5   7   3   -1  -1   3  -1  -1
    5    50   2     9   1    9.5    512   1    600    inf   1   -1  -1   -1  -1   -1  -1  -1
this is not a job
    6    60   0
"""


@pytest.fixture
def jobs():
    skipped = Counter()
    return list(parse_swf(SNIPPET.splitlines(True), "run-1", skipped)), skipped


def test_fully_known_job(jobs):
    job = jobs[0][0]
    assert job.task == "exe-42" and job.tag == "user-7" and job.key == "1"
    assert job.input_features == {
        "requested_procs": 8, "requested_time_s": 3600, "requested_memory_bytes": 4096 * 1024,
        "user": 7, "group": 3, "queue": 2, "partition": 1,
    }
    assert job.duration_s == 100
    assert job.cpu_seconds == 80.5
    assert job.peak_memory_bytes == 2048 * 1024
    assert job.submitted_at == 1_000_000_010
    assert job.started_at == 1_000_000_015
    assert job.finished_at == 1_000_000_115
    assert job.state == "succeeded"
    assert job.worker_resources.cpus == 4
    assert job.requested.cpus == 8 and job.requested.memory_bytes == 4096 * 1024


def test_unknown_fields_become_none_and_are_omitted(jobs):
    job = jobs[0][1]
    assert job.task == "user-9" and job.tag == "user-9"
    assert job.input_features == {"user": 9}
    assert job.cpu_seconds is None and job.peak_memory_bytes is None
    assert job.started_at is None and job.finished_at is None
    assert job.end_time == 1_000_000_020 + 50
    assert job.state == "erred"
    assert job.requested.cpus is None and job.requested.memory_bytes is None


def test_status_and_unknown_user(jobs):
    cancelled, anonymous = jobs[0][2], jobs[0][3]
    assert cancelled.state == "cancelled" and cancelled.task == "user-7" and cancelled.duration_s == 0
    assert "partition" in cancelled.input_features and "queue" not in cancelled.input_features
    assert anonymous.task == "unknown" and anonymous.tag is None
    assert anonymous.cpu_seconds == 9.5 and anonymous.input_features == {"requested_procs": 1, "requested_time_s": 600}


def test_skips_are_counted(jobs):
    assert len(jobs[0]) == 4
    assert jobs[1] == Counter({"unknown_run_time": 1, "corrupt_line": 2})


def test_import_gzip_into_a_store(tmp_path):
    path = tmp_path / "trace.swf.gz"
    path.write_bytes(gzip.compress(SNIPPET.encode()))
    seen = []
    result = import_swf(path, RunStore(tmp_path / "runs"), progress=lambda done, total: seen.append((done, total)))
    assert result.imported == 4 and result.skipped_total == 3
    assert "imported 4 jobs into run" in result.summary() and "unknown run time" in result.summary()
    assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
    table = load_tasks(tmp_path / "runs")
    assert table.frame["key"].tolist() == ["1", "2", "4", "5"]
    assert table.frame["peak_memory_bytes"][0] == 2048 * 1024
    info = RunStore(tmp_path / "runs").run_info(result.run_id)
    assert info.source == "swf" and info.labels == {"trace": "trace.swf.gz"} and info.workflow == "trace"
    assert info.started_at == 1_000_000_010 and info.finished_at == 1_000_000_115


def test_plain_file_and_header_without_start_time(tmp_path):
    path = tmp_path / "plain.swf"
    path.write_text("; Version: 2\n1 5 0 10 1 -1 -1 1 -1 -1 1 1 -1 -1 -1 -1 -1 -1\n")
    result = import_swf(path, tmp_path / "runs")
    frame = load_tasks(tmp_path / "runs").frame
    assert result.imported == 1 and frame["submitted_at"][0] == 5.0 and frame["finished_at"][0] == 15.0
