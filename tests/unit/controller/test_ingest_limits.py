"""Issue 15, points 3, 7 and 9: the ingestion server's deadlines, a dead API server, the run lock.

The real ingestion app, served by ``serve_ingest`` on 127.0.0.1 exactly as the operator serves
it, with short limits so the deadlines can be watched in seconds; clients are real sockets.
The API server is a real kr8s client pointed at a port nothing listens on (the API server
down: every push must be 503 with Retry-After, never a 500), or, for the lock and body tests,
the scripted reviews of test_ingest_fuzz.py. The long deadlines of the defaults are exercised
against the operator in tests/integration/test_hostile_ingest.py.

Rerun: ``pytest tests/unit/controller/test_ingest_limits.py -q``
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import kr8s
from aiohttp import web

from scalable.controller.ingest import RUN_LOCKS_KEY, ingest_app
from scalable.controller.ingest_server import IngestLimits, serve_ingest
from scalable.controller.kube import KubeClient
from scalable.controller.metrics import OperatorMetrics
from scalable.controller.runtime import OperatorConfig
from scalable.controller.storage import TelemetryRoot
from tests.unit.controller.test_ingest_fuzz import GOOD_TOKEN, _ScriptedApiServer

LIMITS = IngestLimits(header_timeout_s=1.0, body_timeout_s=1.5, idle_timeout_s=1.0, max_connections=8, max_connections_per_peer=4)
PATH = "/v1/namespaces/team-a/scalableworkflows/wf/runs"


async def _serve(tmp_path, kube, limits=LIMITS):
    config = OperatorConfig(telemetry_path=str(tmp_path), min_free_bytes=1024 * 1024)
    rt = SimpleNamespace(kube=kube, metrics=OperatorMetrics(), config=config, root=TelemetryRoot(tmp_path))
    app = ingest_app(rt, limits=limits)
    runner, port = await serve_ingest(app, "127.0.0.1", 0)
    return runner, port, app


def _request(body: bytes, token: str = GOOD_TOKEN, keep_alive: bool = False) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode() + body


async def _answer(reader) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    return int(head.split(b" ")[1]), json.loads(body)


async def _closed_within(reader, seconds: float) -> float:
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - started


def _records(n=1):
    return {"run": {"run_id": "r1"}, "records": [{"task": "t", "submitted_at": 1.7e9 + i, "duration_s": 1.0} for i in range(n)]}


async def _api_server_that_went_away():
    """A kr8s client whose API server answered while it connected, then stopped listening."""
    async def version(request):
        return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.4"})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/version/", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = await kr8s.asyncio.api(url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    await runner.cleanup()
    return api


async def test_the_api_server_down_is_503_never_500(tmp_path):
    runner, port, _ = await _serve(tmp_path, KubeClient(await _api_server_that_went_away()))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(json.dumps(_records()).encode()))
        status, answer = await _answer(reader)
        writer.close()
        assert status == 503 and "API server" in answer["error"], answer
        assert not list(tmp_path.rglob("*.jsonl"))
    finally:
        await runner.cleanup()


async def test_header_body_and_idle_deadlines_close_slow_connections(tmp_path):
    runner, port, _ = await _serve(tmp_path, _ScriptedApiServer())
    try:
        # silent: closed at the header deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_within(reader, LIMITS.header_timeout_s + 2) <= LIMITS.header_timeout_s + 0.5
        writer.close()
        # headers sent, body trickled: 408 at the body deadline
        body = json.dumps(_records()).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(body)[: -len(body)] + body[:5])
        started = time.monotonic()
        status, answer = await asyncio.wait_for(_answer(reader), LIMITS.body_timeout_s + 2)
        assert status == 408 and "body" in answer["error"]
        assert time.monotonic() - started <= LIMITS.body_timeout_s + 0.5
        writer.close()
        # kept alive after an answer, then idle: closed at the idle deadline; a second request in time is served
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(body, keep_alive=True))
        assert (await _answer(reader))[0] == 200
        await asyncio.sleep(LIMITS.idle_timeout_s / 2)
        writer.write(_request(body, keep_alive=True))
        assert (await _answer(reader)) == (200, {"run_id": "r1", "accepted": 0, "duplicates": 1})
        assert await _closed_within(reader, LIMITS.idle_timeout_s + 2) <= LIMITS.idle_timeout_s + 0.5
        writer.close()
    finally:
        await runner.cleanup()


async def test_connections_beyond_the_limit_are_refused_at_once_and_given_back(tmp_path):
    runner, port, _ = await _serve(tmp_path, _ScriptedApiServer())
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections_per_peer)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, answer = await asyncio.wait_for(_answer(reader), 2)
        assert status == 503 and "connections" in answer["error"]
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the slots were given back
        writer.write(_request(json.dumps(_records()).encode()))
        assert (await _answer(reader))[0] == 200
        writer.close()
    finally:
        await runner.cleanup()


async def test_the_per_run_lock_is_not_dropped_while_a_waiter_wakes(tmp_path):
    """Three batches of one run at once: every batch is stored whole and once, and when all are
    answered no lock is left behind (before, the lock was dropped between a release and the
    woken waiter's acquire, and a third request got a lock of its own)."""
    runner, port, app = await _serve(tmp_path, _ScriptedApiServer(), IngestLimits())
    try:
        async def push(start):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = {"run": {"run_id": "r1"}, "records": [{"task": "t", "submitted_at": 1.7e9 + start + i, "duration_s": 1.0}
                                                        for i in range(2000)]}
            writer.write(_request(json.dumps(body).encode()))
            answer = await _answer(reader)
            writer.close()
            return answer

        answers = await asyncio.gather(*(push(k * 1000) for k in range(6)))  # overlapping halves
        assert all(status == 200 for status, _ in answers)
        assert sum(a["accepted"] for _, a in answers) == 7000
        lines = (tmp_path / "team-a" / "runs" / "r1" / "tasks.jsonl").read_text().splitlines()
        assert len(lines) == len(set(lines)) == 7000
        assert len(app[RUN_LOCKS_KEY]) == 0
    finally:
        await runner.cleanup()


async def test_a_run_linked_to_another_namespace_is_not_pushed_through(tmp_path):
    """Issue 15 point 9: a run directory of team-a that is a link into team-b's runs is 409,
    and nothing is written into team-b's run."""
    theirs = tmp_path / "team-b" / "runs" / "secret"
    theirs.mkdir(parents=True)
    (theirs / "run.json").write_text(json.dumps({"run_id": "secret", "workflow": "wf", "started_at": 1.7e9}))
    (tmp_path / "team-a" / "runs").mkdir(parents=True)
    (tmp_path / "team-a" / "runs" / "r1").symlink_to(theirs)
    runner, port, _ = await _serve(tmp_path, _ScriptedApiServer())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(json.dumps(_records()).encode()))
        status, answer = await _answer(reader)
        writer.close()
        assert status == 409 and "r1" in answer["error"], answer
        assert sorted(p.name for p in theirs.iterdir()) == ["run.json"]
    finally:
        await runner.cleanup()
