from __future__ import annotations

from collections import Counter

import pytest

from scalable.telemetry.importers.sacct import import_sacct, parse_duration, parse_sacct, parse_slurm_memory
from scalable.telemetry.loader import load_tasks

HEADER = "JobID|JobName|User|Group|Partition|Submit|Start|End|Elapsed|State|AllocCPUS|ReqCPUS|ReqMem|MaxRSS|TotalCPU|Timelimit|NNodes"
ROWS = [
    "100|sim|alice|sci|normal|2024-01-01T10:00:00|2024-01-01T10:01:00|2024-01-01T10:11:00|00:10:00|COMPLETED|4|4|2Gc||00:30:00.500|01:00:00|1",
    "100.batch|batch|||||2024-01-01T10:01:00|2024-01-01T10:11:00|00:10:00|COMPLETED|4|4|2Gc|1048576K|00:20:00||1",
    "100.0|sim|||||2024-01-01T10:02:00|2024-01-01T10:10:00|00:08:00|COMPLETED|4|4|2Gc|3000M|00:10:00.500||1",
    "101|big|bob|sci|bigmem|2024-01-01T11:00:00|2024-01-01T11:00:05|2024-01-02T13:03:09|1-02:03:04|FAILED|8|8|64Gn||1-00:00:00|2-00:00:00|2",
    "101.batch|batch|||||2024-01-01T11:00:05|2024-01-01T12:00:05|01:00:00|OUT_OF_MEMORY|8|8|64Gn|68000000K|23:59:59||2",
    "102|pending|bob|sci|normal|2024-01-01T11:00:00|Unknown|Unknown|00:00:00|PENDING|0|1|4000M|||UNLIMITED|1",
    "103|broken|bob|sci",
    "104|cancel|carol|sci|normal|2024-01-01T11:00:00|2024-01-01T11:00:00|2024-01-01T11:00:30|00:00:30|CANCELLED by 1000|1|1|4000M||00:00.100|30:00|1",
    "105.batch|orphan|||||2024-01-01T12:00:00|2024-01-01T12:00:10|00:00:10|TIMEOUT|1|1|1G|10M|00:05|5|1",
]


@pytest.fixture
def parsed():
    skipped = Counter()
    jobs = {o.key: o for o in parse_sacct([HEADER + "\n"] + [r + "\n" for r in ROWS], "r", skipped)}
    return jobs, skipped


def test_job_with_steps_folds_into_one_observation(parsed):
    job = parsed[0]["100"]
    assert job.task == "sim" and job.tag == "user-alice"
    assert job.peak_memory_bytes == 3000 * 1024**2  # max over steps
    assert job.duration_s == 600 and job.cpu_seconds == 1800.5
    assert job.submitted_at == 1704103200.0 and job.started_at == 1704103260.0 and job.finished_at == 1704103860.0
    assert job.state == "succeeded"
    assert job.input_features == {
        "requested_procs": 4, "requested_time_s": 3600, "requested_memory_bytes": 8 * 1024**3,
        "user": "alice", "group": "sci", "partition": "normal",
    }
    assert job.worker_resources.cpus == 4 and job.requested.memory_bytes == 8 * 1024**3


def test_out_of_memory_step_marks_the_job(parsed):
    job = parsed[0]["101"]
    assert job.state == "oom_killed"
    assert job.peak_memory_bytes == 68_000_000 * 1024
    assert job.duration_s == 86400 + 2 * 3600 + 3 * 60 + 4
    assert job.input_features["requested_memory_bytes"] == 2 * 64 * 1024**3
    assert job.input_features["requested_time_s"] == 2 * 86400 and job.cpu_seconds == 86400


def test_states_skips_and_orphan_steps(parsed):
    jobs, skipped = parsed
    assert set(jobs) == {"100", "101", "104", "105"}
    assert jobs["104"].state == "cancelled" and jobs["104"].peak_memory_bytes is None
    assert jobs["104"].cpu_seconds == pytest.approx(0.1) and jobs["104"].input_features["requested_time_s"] == 1800
    assert jobs["105"].state == "erred" and jobs["105"].peak_memory_bytes == 10 * 1024**2
    assert skipped == Counter({"unfinished_job": 1, "corrupt_line": 1})


@pytest.mark.parametrize("text,seconds", [
    ("00:10:00", 600), ("01:02:03.456", 3723.456), ("1-02:03:04", 93784), ("05:30", 330),
    ("00:00.100", 0.1), ("2-00", 172800), ("30", 1800), ("UNLIMITED", None), ("", None), ("Partition_Limit", None),
])
def test_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("text,cpus,nodes,expected", [
    ("4000M", None, None, 4000 * 1024**2), ("4Gn", 2, 3, 3 * 4 * 1024**3), ("2Gc", 4, 1, 8 * 1024**3),
    ("1234K", None, None, 1234 * 1024), ("0", None, None, 0), ("1.5G", None, None, int(1.5 * 1024**3)),
    ("2Gc", None, None, None), ("lots", None, None, None),
])
def test_memory(text, cpus, nodes, expected):
    assert parse_slurm_memory(text, cpus=cpus, nodes=nodes) == expected


def test_import_tolerates_trailing_pipes_and_garbage(tmp_path):
    path = tmp_path / "sacct.txt"
    lines = [HEADER + "|"] + [r + "|" for r in ROWS[:3]] + ["\x00\xff garbage", HEADER + "|"]
    path.write_text("\n".join(lines) + "\n", errors="surrogateescape")
    result = import_sacct(path, tmp_path / "runs")
    assert result.imported == 1 and result.skipped == Counter({"corrupt_line": 1})
    frame = load_tasks(tmp_path / "runs").frame
    assert frame["peak_memory_bytes"].tolist() == [3000 * 1024**2]
