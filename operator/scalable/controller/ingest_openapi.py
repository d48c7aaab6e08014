"""The ingestion endpoint described as OpenAPI 3.0, served at ``/openapi.json``.

Clients (and ``schemathesis`` in tests/unit/controller/test_ingest_fuzz.py) learn from it what
the operator accepts. The record schemas are the telemetry library's own JSON Schemas
(``scalable.telemetry.jsonschema``), so the description cannot drift from what is validated.

:func:`json_errors` is an aiohttp middleware that turns every refusal aiohttp makes on its own
(unknown path 404, wrong method 405, body too large 413) into the same JSON shape the handler
uses, ``{"error": "..."}``, and an unexpected exception into a 500 with a short JSON message
(never a stack trace to the client; the trace goes to the operator's log). Every failure a
client or a dependency causes has its own 4xx or 503 (the responses below say which), so a 500
is a bug of the operator.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from aiohttp import web

__all__ = ["openapi_spec", "add_openapi_route", "json_errors"]

log = logging.getLogger(__name__)

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}


def _error_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"error": {"type": "string"}}
    props.update(extra or {})
    return {"type": "object", "required": ["error"], "properties": props}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _record_schemas() -> dict[str, Any]:
    """task/worker/scaling_decision record schemas from the telemetry library, as components."""
    from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES  # the layer below: telemetry

    out = {}
    for kind in sorted(RECORD_FILES):
        schema = _openapi30(RECORD_TYPES[kind].model_json_schema(mode="validation"))
        # the operator fills run_id in from the run; a record may leave it out
        schema["required"] = [r for r in schema.get("required", []) if r != "run_id"]
        out[kind] = schema
    return out


def _openapi30(schema: Any) -> Any:
    """JSON Schema (draft 2020-12, as pydantic writes it) to the OpenAPI 3.0 dialect:
    ``$defs`` inlined, ``anyOf [X, null]`` as ``nullable``, ``const`` as a one-value enum."""
    defs = schema.pop("$defs", {}) if isinstance(schema, dict) else {}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and node["$ref"].startswith("#/$defs/"):
            return walk(copy.deepcopy(defs[node["$ref"].split("/")[-1]]))
        node = {k: walk(v) for k, v in node.items() if k not in ("$schema", "$id", "title")}
        if "const" in node:
            node["enum"] = [node.pop("const")]
        any_of = node.get("anyOf")
        if isinstance(any_of, list):
            rest = [s for s in any_of if s not in ({"type": "null"}, {"nullable": True})]
            if len(rest) < len(any_of):
                node.pop("anyOf")
                if len(rest) == 1:
                    node.update(rest[0])
                else:
                    node["anyOf"] = rest
                node["nullable"] = True
        if node.get("type") == "null":
            node.pop("type")
            node["nullable"] = True
        if isinstance(node.get("type"), list):
            types = [t for t in node["type"] if t != "null"]
            if len(types) < len(node["type"]):
                node["nullable"] = True
            node["type"] = types[0] if len(types) == 1 else node["type"]
        return node

    return walk(schema)


def openapi_spec() -> dict[str, Any]:
    records = _record_schemas()
    record_refs = [{"$ref": f"#/components/schemas/{name}"} for name in sorted(records)]
    body = {
        "type": "object",
        "required": ["records"],
        "properties": {
            "run": {
                "type": "object",
                "description": "The run the records belong to; run_id optional (a new one is made). "
                "workflow, namespace are set by the operator.",
                "properties": {
                    "run_id": {"type": "string", "pattern": r"^[A-Za-z0-9_:@+][A-Za-z0-9._:@+-]*$", "maxLength": 200},
                    "started_at": {"type": "number"},
                    "finished_at": {"type": "number", "nullable": True},
                    "host": {"type": "string", "nullable": True},
                    "source": {"type": "string", "description": "who recorded the run (default: client)"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "records": {"type": "array", "maxItems": 100_000, "items": {"anyOf": record_refs}},
        },
    }

    def _refusal(why: str) -> dict[str, Any]:
        return _json({"$ref": "#/components/schemas/Error"}, why)

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Scalable operator telemetry ingestion",
            "version": "1",
            "description": "Workflow clients push runs of telemetry records. Authenticate with the "
            "ServiceAccount token; the caller must be allowed to update the ScalableWorkflow.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/v1/namespaces/{namespace}/scalableworkflows/{name}/runs": {
                "post": {
                    "operationId": "pushRun",
                    "summary": "Append telemetry records to a run of a ScalableWorkflow",
                    "description": "Idempotent: a record is keyed by the SHA-256 of its canonical JSON, and a "
                    "record the run holds already is not stored again, so a client may retry or replay a "
                    "batch (at-least-once delivery). 4xx: the request cannot succeed as sent (408 and 429 "
                    "excepted); 5xx: retry later, nothing partial was stored.",
                    "security": [{"serviceAccountToken": []}],
                    "parameters": [
                        {"name": "namespace", "in": "path", "required": True, "schema": dict(_NAME, maxLength=63)},
                        {"name": "name", "in": "path", "required": True, "schema": _NAME},
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                    "responses": {
                        "200": _json(
                            {"type": "object", "required": ["run_id", "accepted"],
                             "properties": {
                                 "run_id": {"type": "string"},
                                 "accepted": {"type": "integer", "minimum": 0,
                                              "description": "records this request stored (new to the run)"},
                                 "duplicates": {"type": "integer", "minimum": 0,
                                                "description": "records the run held already (or repeated in the "
                                                "batch): not stored again"}}},
                            "stored: the run and how many records were new; a replay answers accepted 0",
                        ),
                        "400": _json(_error_schema({"refused": {"type": "array", "items": {
                            "type": "object", "properties": {"index": {"type": "integer"}, "reason": {"type": "string"}}}}}),
                            "invalid path (a name with a newline, say), a body that is not UTF-8 JSON or does not "
                            "decode as its Content-Encoding says, or invalid records: each refused record's index and "
                            "a reason naming the field (a number not finite, or beyond the schema's maxima: 1 PiB of "
                            "memory, ten years of duration, the year 9999); nothing was stored"),
                        "401": _refusal("no token, a token that is not RFC 6750 characters (non-ASCII), or one the "
                                        "API server does not accept"),
                        "403": _refusal("the caller may not update this ScalableWorkflow"),
                        "404": _refusal("no such ScalableWorkflow"),
                        "408": _refusal("the body did not arrive within the body timeout; retry"),
                        "409": _refusal("the run belongs to another workflow, or its run.json is missing or invalid "
                                        "(whose it is cannot be told), or it is not a plain directory"),
                        "413": _refusal("more than 16 MiB or 100,000 records; split into batches with the same run_id"),
                        "415": _refusal("a Content-Encoding other than identity, gzip or deflate"),
                        "429": _refusal("too many token reviews from this address (unknown tokens); retry after "
                                        "Retry-After seconds"),
                        "503": _refusal("the API server cannot be reached or failed (retry after Retry-After), or "
                                        "the server has too many open connections"),
                        "507": _refusal("the telemetry volume is full; nothing was stored"),
                    },
                }
            },
            "/healthz": {
                "get": {"operationId": "healthz", "security": [],
                        "responses": {"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}}}
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "security": [],
                        "responses": {"200": _json({"type": "object"}, "this description")}}
            },
        },
        "components": {
            "securitySchemes": {"serviceAccountToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _error_schema(), **records},
        },
    }


def add_openapi_route(app: web.Application) -> None:
    spec = openapi_spec()

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", serve)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        return web.json_response({"error": exc.reason if not exc.text or exc.text.startswith(f"{exc.status}:") else exc.text},
                                 status=exc.status, headers=headers)
    except Exception:  # noqa: BLE001 - the client gets a short answer, the log the trace
        log.exception("ingestion request %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error; the operator's log has the details"}, status=500)
