from __future__ import annotations

import json

import pytest

from scalable.telemetry.jsonschema import SCHEMA_DIR, main, render_schemas
from scalable.telemetry.schema import RECORD_TYPES


def test_committed_schemas_are_up_to_date():
    rendered = render_schemas()
    assert set(rendered) == {f"{kind}.schema.json" for kind in RECORD_TYPES}
    stale = [name for name, text in rendered.items()
             if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text]
    assert not stale, f"run `make schemas` and commit: {stale} out of date"


def test_schemas_describe_the_records():
    task = json.loads(render_schemas()["task.schema.json"])
    assert task["additionalProperties"] is False
    assert {"run_id", "task", "submitted_at", "duration_s"} <= set(task["required"])
    assert task["properties"]["schema_version"]["const"] == 1
    assert "peak_memory_bytes" in task["properties"]


def test_cli_writes_files(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_schemas())
    assert main(["a", "b"]) == 2


import jsonschema  # noqa: E402  (a test dependency: other tools validate our records with it)


def test_a_written_record_validates_against_its_schema(store):
    from .conftest import make_task

    record = json.loads(make_task("r1", 1).model_dump_json())
    schema = json.loads(render_schemas()["task.schema.json"])
    jsonschema.validate(record, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record | {"duration_s": -1}, schema)
