"""The Nextflow trace importer: both of Nextflow's forms, the fixed mapping, bad lines, real nf-core traces.

Rerun: ``pytest tests/unit/telemetry/test_nextflow.py -q``
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from scalable.telemetry.importers.nextflow import canonical_field, import_nextflow, parse_nextflow
from scalable.telemetry.loader import load_tasks

UTC = ZoneInfo("UTC")
FIELDS = ("task_id name status exit attempt process tag cpus memory time submit start complete duration "
          "realtime %cpu peak_rss rchar").split()

#: a default-style trace (tab-separated, human-readable), with a retry after an OOM kill and "-" fields
HUMAN = [
    "1  ALIGN (s1)  COMPLETED  0  1  ALIGN  s1  2  4 GB  1h  2024-03-01 12:00:00.123  2024-03-01 12:00:01.000  "
    "2024-03-01 12:03:05.000  3m 5s  3m 4s  85.3%  1.5 GB  512 MB",
    "2  SORT (s1)  FAILED  137  1  SORT  s1  1  2 GB  30m  2024-03-01 12:05:00.000  2024-03-01 12:05:00.500  "
    "2024-03-01 12:05:05.000  5s  4.5s  99.0%  2 GB  2 KB",
    "3  SORT (s1)  COMPLETED  0  2  SORT  s1  1  4 GB  1h 2m 3s  2024-03-01 12:05:06.000  2024-03-01 12:05:07.000  "
    "2024-03-01 12:06:07.000  1m 1s  1m  100.0%  3.1 GB  -",
    "4  QC (s2)  COMPLETED  0  1  QC  s2  -  -  -  2024-03-02 08:00:00.000  2024-03-02 08:00:00.250  "
    "2024-03-02 08:00:00.370  370ms  120ms  0.0%  0  0",
    "5  LONG (x)  COMPLETED  0  1  LONG  x  8  64 GB  2d  2024-03-02 09:00:00.000  2024-03-02 09:00:10.000  "
    "2024-03-03 11:00:10.000  1d 2h  1d 2h  712.5%  512 B  1 TB",
    "6  QC (s3)  FAILED  1  1  QC  s3  1  1 GB  1h  2024-03-02 08:00:00.000  2024-03-02 08:00:00.250  "
    "2024-03-02 08:00:02.250  2.3s  2s  -  -  -",
    "7  QC (s4)  ABORTED  -  1  QC  s4  1  1 GB  1h  2024-03-02 09:00:00.000  2024-03-02 09:00:00.000  -  -  10s  "
    "50.0%  10 MB  -",
    "8  QC (s5)  RUNNING  -  1  QC  s5  1  1 GB  1h  2024-03-02 09:00:00.000  -  -  -  -  -  -  -",
    "9  QC (s6)  CACHED  0  1  QC  s6  1  1 GB  1h  2024-03-01 09:00:00.000  2024-03-01 09:00:00.000  "
    "2024-03-01 09:00:01.000  1s  1s  10.0%  1 MB  1 MB",
]
#: the same rows as ``trace.raw = true`` writes them: bytes, milliseconds, epoch milliseconds
RAW = [
    "1  ALIGN (s1)  COMPLETED  0  1  ALIGN  s1  2  4294967296  3600000  1709294400123  1709294401000  1709294585000  "
    "185000  184000  85.3  1610612736  536870912",
    "2  SORT (s1)  FAILED  137  1  SORT  s1  1  2147483648  1800000  1709294700000  1709294700500  1709294705000  "
    "5000  4500  99.0  2147483648  2048",
    "3  SORT (s1)  COMPLETED  0  2  SORT  s1  1  4294967296  3723000  1709294706000  1709294707000  1709294767000  "
    "61000  60000  100.0  3328599654  -",
    "4  QC (s2)  COMPLETED  0  1  QC  s2  -  -  -  1709366400000  1709366400250  1709366400370  370  120  0.0  0  0",
    "5  LONG (x)  COMPLETED  0  1  LONG  x  8  68719476736  172800000  1709370000000  1709370010000  1709463610000  "
    "93610000  93600000  712.5  512  1099511627776",
    "6  QC (s3)  FAILED  1  1  QC  s3  1  1073741824  3600000  1709366400000  1709366400250  1709366402250  "
    "2250  2000  -  -  -",
    "7  QC (s4)  ABORTED  -  1  QC  s4  1  1073741824  3600000  1709370000000  1709370000000  -  -  10000  50.0  "
    "10485760  -",
    "8  QC (s5)  RUNNING  -  1  QC  s5  1  1073741824  3600000  1709370000000  -  -  -  -  -  -  -",
    "9  QC (s6)  CACHED  0  1  QC  s6  1  1073741824  3600000  1709283600000  1709283600000  1709283601000  "
    "1000  1000  10.0  1048576  1048576",
]
SKIPPED = Counter({"unfinished_task": 1, "cached_task": 1})


def tsv(rows: list[str], fields=FIELDS) -> str:
    return "\n".join(["\t".join(fields)] + [row.replace("  ", "\t") for row in rows]) + "\n"


def parse(text: str, zone=UTC) -> tuple[dict[tuple, object], Counter]:
    """Observations by (key, attempt): a retry has its first attempt's key (the task's name)."""
    skipped: Counter = Counter()
    observations = {(o.key, o.input_features.get("attempt")): o
                    for o in parse_nextflow(io.StringIO(text), "r", skipped, timezone=zone)}
    return observations, skipped


@pytest.fixture
def human():
    return parse(tsv(HUMAN))


def test_completed_task_maps_every_field(human):
    align = human[0]["ALIGN (s1)", 1]
    assert align.task == "ALIGN" and align.tag == "ALIGN" and align.state == "succeeded"
    assert align.peak_memory_bytes == 1536 * 1024**2
    assert align.duration_s == 184.0 and align.cpu_seconds == pytest.approx(0.853 * 184)
    assert align.submitted_at == 1709294400.123 and align.started_at == 1709294401.0
    assert align.finished_at == 1709294585.0
    assert align.input_features == {
        "input_bytes": 512 * 1024**2, "requested_cpus": 2, "requested_memory_bytes": 4 * 1024**3,
        "requested_time_s": 3600, "attempt": 1,
    }
    assert align.requested.cpus == 2 and align.requested.memory_bytes == 4 * 1024**3
    assert align.worker_resources.cpus is None


def test_oom_killed_attempt_and_its_retry_are_two_observations(human):
    sort = [o for o in human[0].values() if o.task == "SORT"]
    assert [(o.input_features["attempt"], o.state) for o in sort] == [(1, "oom_killed"), (2, "succeeded")]
    assert sort[0].peak_memory_bytes == 2 * 1024**3 and sort[0].duration_s == 4.5
    assert sort[1].peak_memory_bytes == 3328599654  # 3.1 GB, rounded to the byte as Nextflow does
    assert sort[1].input_features["requested_time_s"] == 3723
    assert "input_bytes" not in sort[1].input_features  # rchar "-"


def test_dashes_are_omitted_and_states_follow_status_and_exit(human):
    observations, skipped = human
    qc = observations["QC (s2)", 1]
    assert qc.input_features == {"input_bytes": 0, "attempt": 1}
    assert qc.requested.cpus is None and qc.requested.memory_bytes is None
    assert qc.duration_s == 0.12 and qc.peak_memory_bytes == 0 and qc.cpu_seconds == 0
    assert observations["LONG (x)", 1].duration_s == 26 * 3600 and observations["LONG (x)", 1].peak_memory_bytes == 512
    assert observations["LONG (x)", 1].input_features["input_bytes"] == 1024**4
    failed = observations["QC (s3)", 1]
    assert failed.state == "erred" and failed.peak_memory_bytes is None and failed.cpu_seconds is None
    aborted = observations["QC (s4)", 1]
    assert aborted.state == "cancelled" and aborted.finished_at is None and aborted.end_time == 1709370010.0
    assert skipped == SKIPPED


def test_raw_numbers_give_identical_observations(human):
    raw, skipped = parse(tsv(RAW))
    assert skipped == SKIPPED
    assert {k: o.model_dump() for k, o in raw.items()} == {k: o.model_dump() for k, o in human[0].items()}


def test_csv_export_with_other_column_order_and_names_reads_alike(human):
    order = list(reversed(range(len(FIELDS))))
    renamed = {"peak_rss": "peakRss", "%cpu": "pcpu", "task_id": "Task_ID"}
    header = "," + ",".join(f'"{renamed.get(FIELDS[i], FIELDS[i])}"' for i in order)  # and an unnamed index
    lines = [header] + [f"{n}," + ",".join(row.split("  ")[i] for i in order) for n, row in enumerate(RAW)]
    lines[1] = ",".join(f'"{value}"' for value in lines[1].split(","))  # quoted values read alike
    exported, skipped = parse("\n".join(lines) + "\n")
    assert skipped == SKIPPED
    assert {k: o.model_dump() for k, o in exported.items()} == {k: o.model_dump() for k, o in human[0].items()}


def test_dates_are_read_in_the_zone_given():
    berlin, _ = parse(tsv(HUMAN[:1]), zone=ZoneInfo("Europe/Berlin"))
    assert berlin["ALIGN (s1)", 1].submitted_at == 1709294400.123 - 3600  # CET is UTC+1 in March


def test_nextflow_default_fields_without_process_or_start():
    fields = "task_id hash native_id name status exit submit duration realtime %cpu peak_rss peak_vmem rchar wchar".split()
    row = "7\t4d/5d2be1\t2032\tNFCORE:FASTQC (DA188_L1)\tCOMPLETED\t0\t2024-03-01 12:00:00.000\t1m 5s\t30s\t35.7%\t152.8 MB\t428.1 MB\t192.7 MB\t1 MB"
    observations, skipped = parse(tsv([row], fields))
    fastqc = observations["NFCORE:FASTQC (DA188_L1)", None]
    assert fastqc.task == "NFCORE:FASTQC" and not skipped
    assert fastqc.started_at is None and fastqc.finished_at == 1709294400.0 + 65  # submit + duration
    assert fastqc.peak_memory_bytes == round(152.8 * 1024**2) and fastqc.input_features == {"input_bytes": 202060595}  # 192.7 x 1024**2, rounded


def test_corrupt_lines_are_skipped_and_counted(tmp_path):
    good = tsv(HUMAN[:3]).splitlines()
    lines = [
        "this is not a trace header",  # before any header
        *good,
        "\t".join(HUMAN[3].split("  ")[:9]),  # truncated
        HUMAN[3].replace("  ", "\t") + "\textra",  # one field too many
        "\x00\xff\xfe binary",
        HUMAN[4].replace("  ", "\t").replace("512 B", "1.2 XB"),  # unreadable peak_rss
        HUMAN[4].replace("  ", "\t").replace("2024-03-02 09:00:00.000", "yesterday"),  # unreadable submit
        good[0],  # a second header (concatenated traces) is a header, not a line
        HUMAN[5].replace("  ", "\t")[:-20],  # the last line, cut short
    ]
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(lines), errors="surrogateescape")
    result = import_nextflow(path, tmp_path / "runs", timezone="UTC")
    assert result.imported == 3
    assert result.skipped == Counter({"corrupt_line": 5, "unreadable_peak_rss": 1, "unreadable_submit": 1})
    assert result.read == 3 + 7
    assert result.summary().startswith("read 10 rows, imported 3 tasks into run ")
    assert "5 corrupt line" in result.summary()
    assert len(load_tasks(tmp_path / "runs").frame) == 3


def test_no_header_is_counted(tmp_path):
    skipped: Counter = Counter()
    assert list(parse_nextflow(io.StringIO("a\tb\n1\t2\n"), "r", skipped)) == []
    assert skipped == Counter({"corrupt_line": 2, "missing_header": 1})


@pytest.mark.parametrize("header,field", [
    ("peak_rss", "peak_rss"), ("peakRss", "peak_rss"), (' "Peak_RSS" ', "peak_rss"), ("%CPU", "%cpu"),
    ("pcpu", "%cpu"), ("readBytes", "read_bytes"), ("exitStatus", "exit"), ("task_id", "task_id"),
])
def test_column_names(header, field):
    assert canonical_field(header) == field


def test_of_two_columns_for_one_field_the_first_counts():
    fields = ["exit", *FIELDS[:3], "exitStatus", *FIELDS[4:]]
    row = HUMAN[1].split("  ")
    observations, _ = parse(tsv(["  ".join(["137", *row[:3], "0", *row[4:]])], fields))
    assert observations["SORT (s1)", 1].state == "oom_killed"


def test_gzip_and_the_run_record(tmp_path):
    path = tmp_path / "trace.txt.gz"
    path.write_bytes(gzip.compress(tsv(HUMAN).encode()))
    result = import_nextflow(path, tmp_path / "runs", timezone="Europe/Berlin")
    assert result.imported == 7 and result.source == "nextflow"
    from scalable.telemetry.loader import load_run_infos

    (info,), _ = load_run_infos(tmp_path / "runs")
    assert info.source == "nextflow" and info.workflow == "trace"
    assert info.labels == {"file": "trace.txt.gz", "timezone": "Europe/Berlin"}


def test_unknown_timezone_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="unknown time zone"):
        import_nextflow(tmp_path / "absent.txt", tmp_path / "runs", timezone="Mars/Olympus")


# -- the real nf-core traces in ../shared/data/nextflow ------------------------------------------

NEXTFLOW_DATA = Path(os.environ.get("SCALABLE_NEXTFLOW_DIR", Path(__file__).resolve().parents[3].parent / "shared" / "data" / "nextflow"))
#: rows per file, as ../shared/data/nextflow/README.md lists them
SHARED_TRACES = {"trace_chipseq.csv.gz": 2938, "trace_eager.csv.gz": 1576, "trace_methylseq.csv.gz": 1083}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    assert NEXTFLOW_DATA.is_dir(), (
        f"the nf-core traces are missing: no directory {NEXTFLOW_DATA} (set SCALABLE_NEXTFLOW_DIR to where "
        "trace_chipseq.csv.gz, trace_eager.csv.gz and trace_methylseq.csv.gz are)"
    )
    root = tmp_path_factory.mktemp("nextflow")
    imported = {}
    for name in SHARED_TRACES:
        assert (NEXTFLOW_DATA / name).is_file(), f"missing shared trace {NEXTFLOW_DATA / name}"
        result = import_nextflow(NEXTFLOW_DATA / name, root / name, timezone="UTC")
        imported[name] = (result, load_tasks(root / name).frame.set_index("key"))
    return imported


def raw_rows(name: str) -> list[dict[str, str]]:
    with gzip.open(NEXTFLOW_DATA / name, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", sorted(SHARED_TRACES))
def test_shared_trace_imports_every_row(shared, name):
    result, frame = shared[name]
    rows = raw_rows(name)
    assert len(rows) == SHARED_TRACES[name]
    assert result.read == len(rows) and result.imported == len(rows) and not result.skipped
    assert len(frame) == len(rows) and frame["task"].nunique() == len({r["process"] for r in rows})


@pytest.mark.parametrize("name", sorted(SHARED_TRACES))
def test_shared_trace_values_match_the_raw_text(shared, name):
    _, frame = shared[name]
    rows = raw_rows(name)
    picks = [rows[0], rows[len(rows) // 2], rows[-1]]
    picks += [r for r in rows if r["status"] == "FAILED"][:1] + [r for r in rows if r["attempt"] != "1"][:1]
    for row in picks:
        got = frame.loc[row["name"]]
        assert got["task"] == row["process"] == got["tag"]
        assert got["duration_s"] == int(row["realtime"]) / 1000
        assert got["submitted_at"] == int(row["submit"]) / 1000 and got["finished_at"] == int(row["complete"]) / 1000
        assert got["feature.requested_memory_bytes"] == int(row["memory"])
        assert got["feature.requested_cpus"] == int(row["cpus"]) and got["feature.attempt"] == int(row["attempt"])
        assert got["feature.requested_time_s"] == int(row["time"]) / 1000
        if row["peak_rss"] == "-":
            assert got["peak_memory_bytes"] != got["peak_memory_bytes"] and got["cpu_seconds"] != got["cpu_seconds"]
        else:
            assert got["peak_memory_bytes"] == int(row["peak_rss"])
            assert got["feature.input_bytes"] == int(row["rchar"])
            assert got["cpu_seconds"] == pytest.approx(float(row["%cpu"]) / 100 * int(row["realtime"]) / 1000)
        assert got["state"] == {"COMPLETED": "succeeded", "FAILED": "erred"}[row["status"]]
