"""Hostile input to the ingestion API: schemathesis against its own OpenAPI description.

The real aiohttp application (``ingest_app``) is served on 127.0.0.1 over real HTTP; only the
two API-server questions (TokenReview, SubjectAccessReview) and the workflow lookup are
scripted, as in test_ingest_auth.py (the real ones are exercised in
tests/integration/test_ingest.py). Every generated request, valid or not, must get either a
clear refusal (4xx with a JSON ``error``) or a correct result (200 whose ``accepted`` equals the
lines that appeared on the volume), never a 5xx, and a refusal stores nothing.

Rerun: ``pytest tests/unit/controller/test_ingest_fuzz.py -q``
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from scalable.controller.ingest import ingest_app
from scalable.controller.ingest_openapi import openapi_spec
from scalable.controller.metrics import OperatorMetrics
from scalable.controller.runtime import OperatorConfig
from scalable.controller.storage import TelemetryRoot

GOOD_TOKEN = "token-of-team-a-client"

pytestmark = pytest.mark.slow


class _ScriptedApiServer:
    """The token of team-a's client is valid and may update ScalableWorkflow team-a/wf only."""

    async def token_review(self, token, *audiences):
        if token != GOOD_TOKEN:
            return {"authenticated": False, "error": "token not recognised"}
        return {"authenticated": True, "user": {"username": "system:serviceaccount:team-a:client", "groups": []}}

    async def access_review(self, user, namespace, verb, group, resource, name):
        return {"allowed": (namespace, name, verb) == ("team-a", "wf", "update"), "reason": "RBAC: no rule"}

    async def get(self, kind, namespace, name):
        if (kind, namespace, name) == ("ScalableWorkflow", "team-a", "wf"):
            return {"metadata": {"name": name, "namespace": namespace}}
        return None


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> "_Server":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        config = OperatorConfig(telemetry_path=str(self.root), min_free_bytes=1024 * 1024)
        self.rt = rt = SimpleNamespace(kube=_ScriptedApiServer(), metrics=OperatorMetrics(), config=config, root=TelemetryRoot(self.root))
        self.runner = web.AppRunner(ingest_app(rt), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def stored_lines(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in self.root.rglob("*.jsonl"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = _Server(tmp_path_factory.mktemp("telemetry")).start()
    yield s
    s.stop()


_SCHEMA = schemathesis.openapi.from_dict(openapi_spec())
_PUSH = _SCHEMA["/v1/namespaces/{namespace}/scalableworkflows/{name}/runs"]["POST"]
_ALLOWED = {"path_parameters": {"namespace": "team-a", "name": "wf"}, "headers": {"Authorization": f"Bearer {GOOD_TOKEN}"}}
_FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _check_answer(server: _Server, case) -> None:
    before = server.stored_lines()
    response = case.call(base_url=server.url)
    after = server.stored_lines()
    status = response.status_code
    assert status < 500, f"{case.method} {case.formatted_path} -> {status}: {response.text[:500]}"
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", "")
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"{status} answered {content_type!r}: {response.text[:200]}"
    assert "Traceback" not in response.text
    body = response.json()
    if status == 200:
        assert after - before == body["accepted"], "200 must mean exactly the accepted records were stored"
        # every record is stored once: new ones now, the rest were there (or earlier in the batch)
        assert body["accepted"] + body["duplicates"] == len(case.body["records"])
    else:
        assert 400 <= status < 500 and isinstance(body.get("error"), str) and body["error"], (status, body)
        assert after == before, f"a {status} refusal stored {after - before} lines"


@_FUZZ
@given(case=_PUSH.as_strategy(GenerationMode.POSITIVE) | _PUSH.as_strategy(GenerationMode.NEGATIVE))
def test_any_caller_gets_a_json_refusal_never_a_crash(case, server):
    _check_answer(server, case)


@_FUZZ
@given(case=_PUSH.as_strategy(GenerationMode.POSITIVE, **_ALLOWED) | _PUSH.as_strategy(GenerationMode.NEGATIVE, **_ALLOWED))
def test_an_allowed_callers_requests_are_stored_exactly_or_refused_whole(case, server):
    _check_answer(server, case)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_record = st.fixed_dictionaries(
    {"task": st.text(max_size=5), "submitted_at": st.floats(allow_nan=False, allow_infinity=False), "duration_s": st.floats(allow_nan=False, allow_infinity=False)},
    optional={"kind": st.sampled_from(["task", "worker", "run", "scaling_decision"]) | _json, "run_id": _json,
              "peak_memory_bytes": _json, "input_features": _json, "state": _json},
)


@_FUZZ
@given(run=_json | st.dictionaries(st.sampled_from(["run_id", "labels", "started_at", "workflow", "namespace"]), _json),
       records=st.lists(_record | _json, max_size=4) | _json)
def test_shapes_outside_the_description_are_refused_whole(run, records, server):
    """Bodies built from arbitrary JSON: what schemathesis's negative mode may not reach."""
    case = _PUSH.Case(path_parameters=_ALLOWED["path_parameters"], headers=dict(_ALLOWED["headers"]),
                      body={"run": run, "records": records}, media_type="application/json")
    _check_answer(server, case)


def test_the_description_is_served_and_every_refusal_is_json(server):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/openapi.json", timeout=10) as r:
        assert json.loads(r.read()) == openapi_spec()
    for method, path, data in [
        ("GET", "/nowhere", None),
        ("DELETE", "/v1/namespaces/team-a/scalableworkflows/wf/runs", None),
        ("POST", "/v1/namespaces/team-a/scalableworkflows/wf/runs", b'{"records": ['),
        ("POST", "/v1/namespaces/team-a/scalableworkflows/wf/runs", b'{"records": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"),
    ]:
        request = urllib.request.Request(server.url + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {GOOD_TOKEN}", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert 400 <= caught.value.code < 500
        assert json.loads(caught.value.read())["error"]
