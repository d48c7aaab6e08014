"""Issue 15, points 2 and 6: one poisoned record must never stop a namespace.

Each line below was accepted before (or raised ``OverflowError`` in the loader, which aborted
sizing, scaling and training of every workflow reading the namespace): ``10^400`` as a peak,
``Infinity``/``NaN``/``1e400`` as a duration, an infinite or astronomically large input feature,
strings and nested junk where numbers belong. Written straight into a run's files (as a tenant
with write access to the volume, or an older operator, would), the loader returns the good
record, skips the bad one and counts it, cold and from its cache, for every record kind.
Training on 200 identical records without input features says "insufficient" instead of
raising sklearn's "Found array with 0 feature(s)".

Rerun: ``pytest tests/unit/telemetry/test_poison_numbers.py -q``
"""

from __future__ import annotations

import json
import warnings

import pytest

from scalable.controller.training import train_job
from scalable.telemetry.loader import load_decisions, load_run_infos, load_tasks, load_workers
from scalable.telemetry.schema import MAX_BYTES, MAX_EPOCH_S, MAX_SECONDS, TaskObservation
from scalable.telemetry.store import RunStore

GOOD = {"task": "t", "run_id": "r1", "submitted_at": 1.7e9, "duration_s": 3.0, "peak_memory_bytes": 2**30}
_HEAD = '{"task":"t","run_id":"r1","submitted_at":1.7e9,'

POISON_TASK_LINES = {
    "peak 10^400": _HEAD + '"duration_s":3,"peak_memory_bytes":1' + "0" * 400 + "}",
    "peak beyond 1 PiB": _HEAD + f'"duration_s":3,"peak_memory_bytes":{MAX_BYTES + 1}}}',
    "duration NaN": _HEAD + '"duration_s":NaN}',
    "duration Infinity": _HEAD + '"duration_s":Infinity}',
    "duration 1e400": _HEAD + '"duration_s":1e400}',
    "duration beyond ten years": _HEAD + f'"duration_s":{MAX_SECONDS * 2}}}',
    "cpu seconds -Infinity": _HEAD + '"duration_s":3,"cpu_seconds":-Infinity}',
    "submitted after year 9999": '{"task":"t","run_id":"r1","duration_s":3,"submitted_at":' + f"{MAX_EPOCH_S * 10}}}",
    "feature 10^400": _HEAD + '"duration_s":3,"input_features":{"x":1' + "0" * 400 + "}}",
    "feature Infinity": _HEAD + '"duration_s":3,"input_features":{"x":Infinity}}',
    "feature 1e300": _HEAD + '"duration_s":3,"input_features":{"x":1e300}}',
    "string time": '{"task":"t","run_id":"r1","submitted_at":"soon","duration_s":3}',
    "nested cpus": _HEAD + '"duration_s":3,"worker_resources":{"cpus":[[[{}]]]}}',
    "nested memory": _HEAD + '"duration_s":3,"requested":{"memory_bytes":{"a":{"b":[1e400]}}}}',
    "worker cpus Infinity": _HEAD + '"duration_s":3,"worker_resources":{"cpus":Infinity}}',
}


def _write(tmp_path, name: str, lines: list[str]) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True, exist_ok=True)
    (run / name).write_text("".join(line + "\n" for line in lines))


def _quiet(load, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(*args, **kwargs)


@pytest.mark.parametrize("poison", sorted(POISON_TASK_LINES))
def test_a_poisoned_task_line_is_skipped_and_counted_never_raised(tmp_path, poison):
    _write(tmp_path, "tasks.jsonl", [json.dumps(GOOD), POISON_TASK_LINES[poison], json.dumps({**GOOD, "duration_s": 4.0})])
    for use_cache in (True, True, False):  # cold, then from the cache, then without it
        table = _quiet(load_tasks, tmp_path / "runs", cache=use_cache)
        assert table.frame["duration_s"].tolist() == [3.0, 4.0], poison
        assert table.skipped["invalid_record"] == 1, (poison, table.skipped.counts)
        numbers = table.frame.select_dtypes("number").to_numpy()
        assert not (abs(numbers[~(numbers != numbers)]) == float("inf")).any(), "no infinity may reach the advisors"


def test_the_fast_parser_checks_ranges_across_many_files(tmp_path):
    """Many clean files go to pyarrow together; one poisoned file among them is still caught."""
    for i in range(20):
        run = tmp_path / "runs" / f"r{i:02d}"
        run.mkdir(parents=True)
        line = POISON_TASK_LINES["duration Infinity"] if i == 7 else json.dumps(GOOD)
        (run / "tasks.jsonl").write_text(line.replace('"r1"', f'"r{i:02d}"') + "\n")
    table = _quiet(load_tasks, tmp_path / "runs")
    assert len(table) == 19 and table.skipped["invalid_record"] == 1


@pytest.mark.parametrize("line", [
    '{"run_id":"r1","time":1.7e9,"worker":"w","memory_bytes":1' + "0" * 400 + "}",
    '{"run_id":"r1","time":Infinity,"worker":"w"}',
    '{"run_id":"r1","time":1.7e9,"worker":"w","cpu_fraction":NaN}',
    '{"run_id":"r1","time":1.7e9,"worker":"w","tasks_executing":[1]}',
])
def test_a_poisoned_worker_line_is_skipped(tmp_path, line):
    good = {"run_id": "r1", "time": 1.7e9, "worker": "w", "memory_bytes": 2**30}
    _write(tmp_path, "workers.jsonl", [json.dumps(good), line])
    frame = _quiet(load_workers, tmp_path / "runs")
    assert frame["memory_bytes"].tolist() == [2**30]
    assert frame.attrs["skipped"]["counts"] == {"invalid_record": 1}


@pytest.mark.parametrize("field,value", [("predicted_load", "Infinity"), ("utilisation", "NaN"), ("to_workers", "1" + "0" * 400)])
def test_a_poisoned_decision_line_is_skipped(tmp_path, field, value):
    good = {"run_id": "r1", "time": 1.7e9, "tag": "default", "action": "hold", "from_workers": 1, "to_workers": 1, "reason": "x"}
    bad = json.dumps(good)[:-1] + f', "{field}": {value}}}'
    _write(tmp_path, "decisions.jsonl", [json.dumps(good), bad])
    frame = _quiet(load_decisions, tmp_path / "runs")
    assert len(frame) == 1 and frame.attrs["skipped"]["counts"] == {"invalid_record": 1}


@pytest.mark.parametrize("text", ['{"run_id":"r1","started_at":Infinity}', '{"run_id":"r1","started_at":1' + "0" * 400 + "}",
                                  '{"run_id":"r1","started_at":null}', "[[[[]]]]", '"run"'])
def test_a_poisoned_run_json_is_skipped(tmp_path, text):
    _write(tmp_path, "run.json", [text])
    infos, report = _quiet(load_run_infos, tmp_path / "runs")
    assert infos == [] and report.total == 1


def test_the_schema_refuses_what_json_cannot_carry_back():
    """What Python's json writes for inf/nan (``Infinity``/``NaN``) is not JSON; the schema
    refuses it by field instead of storing null."""
    for field, value in [("duration_s", float("inf")), ("duration_s", float("nan")), ("submitted_at", float("-inf")),
                         ("peak_memory_bytes", 10**400), ("cpu_seconds", float("nan"))]:
        with pytest.raises(ValueError, match=field):
            TaskObservation.model_validate({**GOOD, field: value})


def test_200_identical_records_without_features_do_not_make_training_raise(tmp_path):
    writer = RunStore(tmp_path / "runs").open_run(run_id="r1", workflow="wf")
    writer.append_many([dict(GOOD) for _ in range(200)])
    writer.close()
    result = _quiet(train_job, {"runs_dir": str(tmp_path / "runs"), "model_dir": str(tmp_path / "models")})
    assert result["outcome"] == "insufficient" and "input features" in result["message"]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.skops")), "nothing was saved"


def test_a_trailing_newline_is_not_a_valid_name():
    """Issue 15 point 8: ``^...$`` with ``re.match`` accepts ``"run\\n"`` (``$`` matches before a
    final newline); every name check of the volume uses fullmatch."""
    from scalable.advising.model_store import ModelStore, ModelStoreError
    from scalable.controller.storage import StorageError, validate_name, validate_namespace
    from scalable.telemetry.store import is_run_dir_name

    assert is_run_dir_name("run") and not is_run_dir_name("run\n")
    with pytest.raises(ValueError):
        RunStore("/nonexistent").open_run(run_id="run\n")
    for check, value in [(validate_name, "wf\n"), (validate_namespace, "team-a\n")]:
        with pytest.raises(StorageError):
            check(value)
    with pytest.raises(ModelStoreError):
        ModelStore("/nonexistent").versions("default\n")
    with pytest.raises(ModelStoreError):
        ModelStore("/nonexistent").path("default", "v1\n")
