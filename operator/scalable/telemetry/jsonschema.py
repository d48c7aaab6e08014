"""JSON Schema files of the telemetry records, so tools in any language can write telemetry.

    python -m scalable.telemetry.jsonschema operator/scalable/schemas

writes ``<kind>.schema.json`` for every record kind (run, task, worker, scaling_decision).
The output is deterministic, so a test can compare the committed files with a fresh export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES, SCHEMA_VERSION

__all__ = ["SCHEMA_DIR", "render_schemas", "write_schemas"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_BASE_ID = "https://scalable-operator.dev/schemas/telemetry"


def render_schemas() -> dict[str, str]:
    """File name -> text of each record kind's JSON Schema."""
    files = {}
    for kind, model in RECORD_TYPES.items():
        schema = model.model_json_schema(mode="validation")
        where = RECORD_FILES.get(kind, "run.json")
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{_BASE_ID}/v{SCHEMA_VERSION}/{kind}.schema.json",
            **schema,
            "$comment": f"scalable telemetry schema version {SCHEMA_VERSION}; records of kind "
            f"{kind!r} live in {where} of a run directory, one JSON object per line for .jsonl files",
        }
        files[f"{kind}.schema.json"] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return files


def write_schemas(directory: str | Path = SCHEMA_DIR) -> list[Path]:
    """Write the schema files into ``directory`` (created if needed); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m scalable.telemetry.jsonschema [DIR]", file=sys.stderr)
        return 2
    for path in write_schemas(args[0] if args else SCHEMA_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
