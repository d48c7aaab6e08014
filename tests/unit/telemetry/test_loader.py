from __future__ import annotations

import json
import math
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalable.telemetry import loader
from scalable.telemetry.loader import TASK_COLUMNS, TelemetryWarning, load_decisions, load_tasks
from scalable.telemetry.schema import ScalingDecisionRecord, TaskObservation
from scalable.telemetry.store import RunStore

from .conftest import make_task, write_run


def _load(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_tasks(root, **kw)
    return table, [w for w in caught if issubclass(w.category, TelemetryWarning)]


def test_columns_types_and_values(store):
    with store.open_run() as writer:
        writer.append(make_task(writer.run_id, 0))
        writer.append(make_task(writer.run_id, 1, finished_at=None, started_at=None, submitted_at=50.0,
                                duration_s=7.0, peak_memory_bytes=None, state="oom_killed"))
        writer.append(make_task(writer.run_id, 2, finished_at=None, started_at=60.0, duration_s=3.0))
    table, caught = _load(store.root)
    frame = table.frame
    assert caught == []
    assert list(frame.columns) == TASK_COLUMNS + ["feature.num_nodes", "feature.scenario_type"]
    assert table.feature_columns == ["feature.num_nodes", "feature.scenario_type"]
    assert table.n_runs == 1 and len(table) == 3
    for column in ("peak_memory_bytes", "duration_s", "end_time", "worker_cpus", "requested_cpus", "feature.num_nodes"):
        assert frame[column].dtype == np.float64, column
    assert frame["end_time"].tolist() == [1011.0, 57.0, 63.0]
    assert math.isnan(frame["peak_memory_bytes"][1])
    assert frame["peak_memory_bytes"][0] == 1024**2
    assert frame["state"].tolist() == ["succeeded", "oom_killed", "succeeded"]
    assert frame["worker_memory_bytes"][0] == 8 * 1024**3
    assert frame["feature.scenario_type"].tolist() == ["base", "peak", "base"]
    assert frame["feature.num_nodes"].tolist() == [100.0, 101.0, 102.0]
    assert frame["run_id"].unique().tolist() == [writer.run_id]


def test_feature_types_numeric_bool_mixed_and_missing(store):
    with store.open_run() as writer:
        writer.append(make_task(writer.run_id, 0, input_features={"n": 3, "b": True, "mixed": 12, "only_first": 1.5}))
        writer.append(make_task(writer.run_id, 1, input_features={"n": 2.5, "b": False, "mixed": "high", "n#str": 1, "text.x": "t"}))
    with store.open_run() as other:
        other.append(make_task(other.run_id, 2, input_features={"mixed": 0.25, "n": 1}))
    frame = _load(store.root)[0].frame
    assert frame["feature.n"].tolist() == [3.0, 2.5, 1.0]
    assert frame["feature.b"].dtype == np.float64
    assert frame["feature.b"].tolist()[:2] == [1.0, 0.0] and math.isnan(frame["feature.b"][2])
    assert frame["feature.mixed"].tolist() == ["12", "high", "0.25"]
    assert frame["feature.only_first"].iloc[0] == 1.5 and frame["feature.only_first"].iloc[1:].isna().all()
    assert frame["feature.n#str"].iloc[1] == 1.0 and frame["feature.text.x"].iloc[1] == "t"


def _lines(records):
    return "".join(r.model_dump_json() + "\n" for r in records)


def test_bad_lines_and_files_are_skipped_counted_and_warned_once(store):
    good = write_run(store, 3)
    bad = store.open_run()
    bad.close()
    valid = [make_task(bad.run_id, i) for i in range(4)]
    unknown = json.loads(valid[0].model_dump_json()) | {"schema_version": 2, "new_field": 1}
    invalid = json.loads(valid[0].model_dump_json()) | {"duration_s": -5}
    text = (
        _lines(valid[:2])
        + "{not json\n"
        + "[1, 2, 3]\n"
        + json.dumps(unknown) + "\n"
        + json.dumps(invalid) + "\n"
        + json.dumps(json.loads(valid[0].model_dump_json()) | {"schema_version": "1"}) + "\n"
        + _lines(valid[2:])
        + "{\"not json either\n"
        + valid[3].model_dump_json()[:40]
    )
    (bad.path / "tasks.jsonl").write_text(text)
    unreadable = store.open_run()
    unreadable.close()
    (unreadable.path / "tasks.jsonl").mkdir()
    dangling = store.open_run()
    dangling.close()
    os.symlink(dangling.path / "nowhere", dangling.path / "tasks.jsonl")
    garbage = store.open_run()
    garbage.close()
    (garbage.path / "tasks.jsonl").write_bytes(bytes(range(256)).replace(b"\n", b"") * 20 + b"\n\x00\x00\xff\xfe\n")

    table, caught = _load(store.root)
    assert len(table) == 3 + 4
    assert set(table.frame["run_id"]) == {good, bad.run_id}
    counts = table.skipped.counts
    assert counts["corrupt_line"] == 3 + 2  # three in the bad run, two garbage lines
    assert counts["truncated_line"] == 1
    assert counts["unknown_schema_version"] == 2
    assert counts["invalid_record"] == 1
    assert counts["unreadable_file"] == 2
    reasons = [str(w.message) for w in caught]
    assert len(reasons) == 5
    for reason, count in counts.items():
        assert sum(f"skipped {count} " in m and loader.SKIP_REASONS[reason] in m for m in reasons) == 1

    warm, caught_warm = _load(store.root)
    assert warm.skipped.counts == counts and len(caught_warm) == 5
    pd.testing.assert_frame_equal(warm.frame, table.frame)


def test_garbage_binary_file_alone_never_raises(store):
    run = store.open_run()
    run.close()
    (run.path / "tasks.jsonl").write_bytes(os.urandom(4096).replace(b"\n", b"x"))
    table, caught = _load(store.root)
    assert len(table) == 0 and table.skipped.total == 1 and len(caught) == 1
    assert table.skipped["truncated_line"] == 1


def test_missing_runs_dir_is_an_empty_table(tmp_path):
    table, caught = _load(tmp_path / "nothing")
    assert len(table) == 0 and caught == [] and list(table.frame.columns) == TASK_COLUMNS


def test_fast_and_exact_parsers_agree(store):
    run_id = write_run(store, 20)
    fast = _load(store.root, cache=False)[0].frame
    path = store.root / run_id / "tasks.jsonl"
    path.write_bytes(path.read_bytes() + b"{corrupt\n")
    slow, caught = _load(store.root, cache=False)
    assert slow.skipped["corrupt_line"] == 1 and len(caught) == 1
    pd.testing.assert_frame_equal(fast, slow.frame)


feature_values = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(-1e12, 1e12, allow_nan=False), st.booleans(), st.text(max_size=8)
)
records = st.lists(
    st.builds(
        dict,
        task=st.sampled_from(["a", "b", "ü-task"]),
        duration_s=st.floats(0, 1e6, allow_nan=False),
        peak_memory_bytes=st.one_of(st.none(), st.integers(0, 2**50)),
        cpu_seconds=st.one_of(st.none(), st.floats(0, 1e6)),
        state=st.sampled_from(["succeeded", "erred", "oom_killed", "cancelled"]),
        input_features=st.dictionaries(st.sampled_from(["x", "y", "z"]), feature_values, max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records, corrupt=st.booleans())
def test_loaded_values_match_written_records(tmp_path_factory, records, corrupt):
    root = tmp_path_factory.mktemp("runs")
    store = RunStore(root)
    with store.open_run() as writer:
        written = [TaskObservation(run_id=writer.run_id, submitted_at=float(i), **r) for i, r in enumerate(records)]
        writer.append_many(written)
    if corrupt:
        with open(writer.path / "tasks.jsonl", "ab") as fh:
            fh.write(b"\x00garbage\n")
    frame = _load(root, cache=False)[0].frame
    assert len(frame) == len(written)
    for row, record in zip(frame.itertuples(index=False), written):
        row = row._asdict() if hasattr(row, "_asdict") else dict(zip(frame.columns, row))
        assert row["task"] == record.task and row["state"] == record.state
        assert row["duration_s"] == record.duration_s
        expected_peak = record.peak_memory_bytes
        assert (math.isnan(row["peak_memory_bytes"]) if expected_peak is None else row["peak_memory_bytes"] == float(expected_peak))
    for name in {n for r in written for n in r.input_features}:
        values = [r.input_features.get(name) for r in written]
        column = frame[f"feature.{name}"]
        if all(v is None or not isinstance(v, str) for v in values):
            assert column.dtype == np.float64
            assert [None if math.isnan(v) else v for v in column] == [None if v is None else float(v) for v in values]
        else:
            for got, want in zip(column, values):
                if want is None:
                    assert got is None or (isinstance(got, float) and math.isnan(got))
                elif isinstance(want, str):
                    assert got == want
                else:
                    assert float(got) == float(want)


class _ParseSpy:
    def __init__(self, monkeypatch):
        self.runs: list[str] = []
        real = loader._parse_runs

        def spy(files, report, per_run):
            self.runs.extend(f.run for f in files)
            return real(files, report, per_run)

        monkeypatch.setattr(loader, "_parse_runs", spy)


def test_cache_is_used_and_invalidated_per_run(store, monkeypatch):
    runs = [write_run(store, 5) for _ in range(4)]
    cold, _ = _load(store.root)
    assert (store.root / ".cache").is_dir() and cold.n_runs == 4
    spy = _ParseSpy(monkeypatch)

    warm, _ = _load(store.root)
    assert spy.runs == []
    pd.testing.assert_frame_equal(warm.frame, cold.frame)

    with store.open_run(run_id=runs[1]) as writer:
        writer.append(make_task(runs[1], 99, task="appended"))
    appended, _ = _load(store.root)
    assert spy.runs == [runs[1]]
    assert len(appended) == 21 and "appended" in set(appended.frame["task"])
    assert appended.frame["run_id"].tolist() == sorted(appended.frame["run_id"])  # run order kept

    spy.runs.clear()
    new_run = write_run(store, 2, input_features={"new_feature": "v"})
    added, _ = _load(store.root)
    assert spy.runs == [new_run] and len(added) == 23 and "feature.new_feature" in added.feature_columns

    spy.runs.clear()
    shutil.rmtree(store.root / runs[0])
    removed, _ = _load(store.root)
    assert spy.runs == [] and len(removed) == 18 and runs[0] not in set(removed.frame["run_id"])

    spy.runs.clear()
    again, _ = _load(store.root)
    assert spy.runs == []
    pd.testing.assert_frame_equal(again.frame, removed.frame)
    pd.testing.assert_frame_equal(again.frame, _load(store.root, cache=False)[0].frame)


def test_rewritten_file_of_the_same_size_is_noticed(store):
    run_id = write_run(store, 3)
    _load(store.root)
    path = store.root / run_id / "tasks.jsonl"
    text = path.read_text().replace('"run_simulation"', '"run_simulatioX"')
    os.unlink(path)
    path.write_text(text)
    assert set(_load(store.root)[0].frame["task"]) == {"run_simulatioX"}


@pytest.mark.parametrize("damage", ["segment", "manifest", "missing segment"])
def test_damaged_cache_is_rebuilt(store, damage):
    write_run(store, 3)
    _load(store.root)
    segment = next((store.root / ".cache").rglob("*.parquet"))
    if damage == "segment":
        segment.write_bytes(b"PAR1 not really")
    elif damage == "manifest":
        (segment.parent / "manifest.json").write_text('{"format": 2, "runs": ')
    else:
        segment.unlink()
    table, caught = _load(store.root)
    assert len(table) == 3 and caught == []
    assert len(_load(store.root)[0]) == 3


def test_many_small_changes_stay_correct_and_compact(store, monkeypatch):
    runs = [write_run(store, 3) for _ in range(3)]
    _load(store.root)
    for i in range(12):
        with store.open_run(run_id=runs[i % 3]) as writer:
            writer.append(make_task(writer.run_id, 100 + i))
        table = _load(store.root)[0]
        assert len(table) == 9 + i + 1
    segments = list((store.root / ".cache").rglob("*.parquet"))
    assert 1 <= len(segments) <= loader._MAX_SEGMENTS
    pd.testing.assert_frame_equal(_load(store.root)[0].frame, _load(store.root, cache=False)[0].frame)


def test_unwritable_cache_means_no_cache(store):
    write_run(store, 3)
    (store.root / ".cache").write_text("a file where the cache directory would go")
    table, caught = _load(store.root)
    assert len(table) == 3 and caught == []
    assert (store.root / ".cache").is_file()


def test_cache_false_touches_nothing(store):
    write_run(store, 2)
    assert len(_load(store.root, cache=False)[0]) == 2
    assert not (store.root / ".cache").exists()


def test_load_decisions(store):
    with store.open_run() as writer:
        for t, action in ((2.0, "scale_down"), (1.0, "scale_up")):
            writer.append(ScalingDecisionRecord(run_id=writer.run_id, time=t, tag="g", action=action,
                                                from_workers=2, to_workers=3, reason="r", confidence=0.5))
    with open(writer.path / "decisions.jsonl", "a") as fh:
        fh.write('{"schema_version": 1, "kind": "scaling_decision"\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_decisions(store.root)
    assert frame["action"].tolist() == ["scale_up", "scale_down"]
    assert frame["run_id"].tolist() == [writer.run_id] * 2
    assert frame.attrs["skipped"]["counts"] == {"truncated_line": 1} or frame.attrs["skipped"]["counts"] == {"corrupt_line": 1}
    assert len([w for w in caught if issubclass(w.category, TelemetryWarning)]) == 1


def test_nulls_mean_absent_in_both_parsers(store):
    run = store.open_run()
    run.close()
    record = {"run_id": run.run_id, "task": "t", "submitted_at": 1.0, "duration_s": 2.0, "schema_version": None,
              "kind": None, "input_features": {"a": None, "b": 1}, "worker_resources": None, "state": None}
    path = run.path / "tasks.jsonl"
    path.write_text(json.dumps(record) + "\n")
    fast = _load(store.root, cache=False)[0]
    path.write_text(json.dumps(record) + "\n{corrupt\n")
    slow = _load(store.root, cache=False)[0]
    assert len(fast) == len(slow) == 1 and fast.skipped.total == 0 and slow.skipped.total == 1
    pd.testing.assert_frame_equal(fast.frame, slow.frame)
    assert fast.frame["state"][0] == "succeeded" and fast.feature_columns == ["feature.b"]
