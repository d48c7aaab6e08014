"""Hostile files: the telemetry loader and the SWF / sacct / Nextflow importers never raise on what they read.

Property-based (hypothesis): valid records mixed with garbage bytes, JSON of the wrong shape,
out-of-range numbers and truncated lines. What must hold:

* ``load_tasks`` returns exactly the valid records and counts every bad line (cold and cached);
* ``parse_swf`` accounts for every job line once: imported or skipped with a reason;
* ``parse_sacct`` / ``import_sacct`` never raise, and what they import loads back whole;
* ``parse_nextflow`` accounts for every line that is not a header once, and what it imports loads back whole.

Rerun: ``pytest tests/unit/telemetry/test_hostile_files.py -q``
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalable.telemetry.importers.nextflow import import_nextflow, parse_nextflow
from scalable.telemetry.importers.sacct import import_sacct, parse_sacct
from scalable.telemetry.importers.swf import parse_swf
from scalable.telemetry.loader import load_run_infos, load_tasks
from scalable.telemetry.schema import MAX_BYTES, MAX_SECONDS, TaskObservation
from scalable.telemetry.store import RunStore

_SETTINGS = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_valid = st.builds(
    dict,
    task=st.text(min_size=1, max_size=12),
    duration_s=st.floats(0, MAX_SECONDS),
    peak_memory_bytes=st.none() | st.integers(0, MAX_BYTES),
    input_features=st.dictionaries(st.text(max_size=6), st.integers(-2**53, 2**53) | st.text(max_size=6) | st.booleans(), max_size=3),
)

_BAD_FIELDS = st.sampled_from([
    ("duration_s", -1), ("duration_s", "NaN"), ("duration_s", "fast"), ("peak_memory_bytes", -5), ("peak_memory_bytes", 1.5),
    ("task", ""), ("task", None), ("task", 5), ("schema_version", 99), ("schema_version", "1"), ("submitted_at", [1]),
    ("input_features", [1, 2]), ("state", "exploded"), ("worker_resources", {"cpus": -1}), ("surprise", 1),
    ("peak_memory_bytes", 10**400), ("duration_s", float("inf")), ("duration_s", MAX_SECONDS * 2),
    ("input_features", {"x": float("-inf")}), ("input_features", {"x": 10**400}),
])


@st.composite
def _hostile_line(draw) -> bytes:
    """A non-blank line that is not a valid task record."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        raw = draw(st.binary(min_size=1, max_size=120)).replace(b"\n", b"").replace(b"\r", b"")
        # guard: random bytes that happen to be a JSON object could be valid; make them not JSON
        return b"\x00" + raw
    if kind == 1:  # JSON, but not an object
        return json.dumps(draw(st.lists(st.integers(), max_size=3) | st.text(max_size=10) | st.integers() | st.none())).encode()
    if kind == 2:  # a record with one field wrong
        record = dict(draw(_valid), run_id="r", submitted_at=1.0)
        field, value = draw(_BAD_FIELDS)
        record[field] = value
        return json.dumps(record).encode()
    if kind == 3:  # out of range numbers JSON can carry
        return b'{"run_id": "r", "task": "t", "submitted_at": 1, "duration_s": 1e999, "peak_memory_bytes": 1e999}'
    nested = "[" * 5000 + "]" * 5000  # deep nesting
    return f'{{"run_id": "r", "task": "t", "submitted_at": 1, "duration_s": 1, "input_features": {{"x": {nested}}}}}'.encode()


@_SETTINGS
@given(valid=st.lists(_valid, max_size=8), hostile=st.lists(_hostile_line(), max_size=8), order=st.randoms(use_true_random=False),
       truncated=st.booleans())
def test_the_loader_returns_the_valid_records_and_counts_every_bad_line(tmp_path_factory, valid, hostile, order, truncated):
    root = tmp_path_factory.mktemp("runs")
    store = RunStore(root)
    with store.open_run(workflow="wf") as writer:
        run_id = writer.run_id
    lines = [json.dumps(dict(v, run_id=run_id, submitted_at=float(i))).encode() for i, v in enumerate(valid)]
    mixed = [(True, line) for line in lines] + [(False, line) for line in hostile]
    order.shuffle(mixed)
    data = b"\n".join(line for _, line in mixed) + b"\n"
    if truncated:
        data += b'{"run_id": "' + run_id.encode() + b'", "task": "cut'  # a write interrupted mid-line
    (root / run_id / "tasks.jsonl").write_bytes(data)
    (root / run_id / "run.json").write_bytes(b"\x00not json")  # its run.json damaged as well
    expected_bad = len(hostile) + int(truncated)
    for cache in (False, True, True):  # exact, then cold cache, then warm cache
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = load_tasks(root, cache=cache)
        assert len(table.frame) == len(valid), table.skipped.as_dict()
        assert table.skipped.total == expected_bad, table.skipped.as_dict()
        assert sorted(table.frame["task"]) == sorted(v["task"] for v in valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_run_infos(root)  # never raises either


_number = st.integers(-10, 10**12).map(str) | st.sampled_from(["-1", "inf", "-inf", "nan", "1e999", "0.5", "x", "1e-400"])


@_SETTINGS
@given(lines=st.lists(
    st.lists(_number, min_size=18, max_size=18).map(lambda p: "  ".join(p))
    | st.lists(_number, max_size=20).map(" ".join)
    | st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ").replace("\x0b", " ").replace("\x0c", " ")
                                                  .replace("\x1c", " ").replace("\x1d", " ").replace("\x1e", " ")
                                                  .replace("\x85", " ").replace("\u2028", " ").replace("\u2029", " "))
    | st.sampled_from(["; UnixStartTime: 1e999", "; UnixStartTime: -5", ";"]),
    max_size=30,
))
def test_swf_every_job_line_is_imported_or_skipped_with_a_reason(lines):
    skipped: Counter = Counter()
    jobs = list(parse_swf(io.StringIO("\n".join(lines) + "\n"), "run-1", skipped))
    job_lines = [line for line in lines if line.strip() and not line.strip().startswith(";")]
    assert len(jobs) + sum(skipped.values()) == len(job_lines), skipped
    for job in jobs:
        TaskObservation.model_validate(job.model_dump())


_HEADER = "JobID|JobName|User|Group|Partition|Submit|Start|End|Elapsed|State|AllocCPUS|ReqCPUS|ReqMem|MaxRSS|TotalCPU|Timelimit|NNodes"
_sacct_field = st.sampled_from([
    "", "100", "100.batch", "100.0", "sim", "2024-01-01T10:00:00", "2024-13-45T99:99:99", "9999-12-31T23:59:59", "Unknown",
    "00:10:00", "1-02:03:04", "99999-99:99:99", "-00:01:00", "COMPLETED", "OUT_OF_MEMORY", "CANCELLED by 0", "4", "0", "-3",
    "2Gc", "64Gn", "1e999G", "0n", "4000M", "1048576K", "-5M", "xK", "UNLIMITED", "1e309", "nan",
]) | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="|\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=12)


@_SETTINGS
@given(rows=st.lists(st.lists(_sacct_field, min_size=17, max_size=17).map("|".join) | st.lists(_sacct_field, max_size=20).map("|".join),
                     max_size=25),
       header=st.booleans())
def test_sacct_never_raises_and_what_it_imports_loads_back(tmp_path_factory, rows, header):
    text = ((_HEADER + "\n") if header else "") + "\n".join(rows) + "\n"
    skipped: Counter = Counter()
    jobs = list(parse_sacct(io.StringIO(text), "r", skipped))
    assert all(v >= 0 for v in skipped.values())
    root = tmp_path_factory.mktemp("sacct")
    path = root / "sacct.txt"
    path.write_text(text)
    result = import_sacct(path, root / "runs")
    assert result.imported == len(jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(root / "runs", cache=False)
    assert len(table.frame) == result.imported and table.skipped.total == 0


_NEXTFLOW_HEADER = "task_id\tname\tprocess\tstatus\texit\tattempt\tcpus\tmemory\ttime\tsubmit\tstart\tcomplete\tduration\trealtime\t%cpu\tpeak_rss\trchar"
_nextflow_field = st.sampled_from([
    "", "-", "1", "0", "137", "-1", "ALIGN", "ALIGN (s1)", "COMPLETED", "FAILED", "ABORTED", "CACHED", "RUNNING", "OOM",
    "1.2 GB", "0", "512 B", "1e999 GB", "99999999999999999999999 ZB", "3m 4s", "1d 2h", "120ms", "-5s", "4.5s",
    "85.3%", "-3%", "nan", "inf", "2024-03-01 12:00:00.123", "9999-12-31 23:59:59.999", "0001-01-01 00:00:00.000",
    "2024-02-30 12:00:00.000", "1709294400123", "1e30", "253402300800000",
]) | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=12)


@_SETTINGS
@given(rows=st.lists(st.lists(_nextflow_field, min_size=17, max_size=17).map("\t".join)
                     | st.lists(_nextflow_field, max_size=20).map("\t".join), max_size=25),
       header=st.booleans())
def test_nextflow_every_line_is_imported_or_skipped_and_loads_back(tmp_path_factory, rows, header):
    text = ((_NEXTFLOW_HEADER + "\n") if header else "") + "\n".join(rows) + "\n"
    skipped: Counter = Counter()
    tasks = list(parse_nextflow(io.StringIO(text), "r", skipped))
    lines = [row for row in rows if row.strip() and row != _NEXTFLOW_HEADER]
    assert len(tasks) + sum(skipped.values()) - skipped["missing_header"] == len(lines), skipped
    root = tmp_path_factory.mktemp("nextflow")
    path = root / "trace.txt"
    path.write_text(text)
    result = import_nextflow(path, root / "runs", timezone="UTC")
    assert result.imported == len(tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(root / "runs", cache=False)
    assert len(table.frame) == result.imported and table.skipped.total == 0
