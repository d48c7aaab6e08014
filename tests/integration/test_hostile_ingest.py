"""Issue 15, points 2, 3, 6, 7 and 8: a hostile tenant against the real ingestion server.

Everything here runs the operator (``run_operator``: kopf, the Lease, the ingestion server)
against the local API server, with real ServiceAccount tokens, TokenReview and
SubjectAccessReview, and talks to it over real sockets; the API server's own ``/metrics``
counts the TokenReviews the operator asked for.

* Poisoned numbers (``10^400``, ``Infinity``, ``NaN``, beyond the schema's maxima) are refused
  with a 400 naming the field, and nothing is stored (point 2, 6).
* A run directory whose ``run.json`` has a null ``started_at`` cannot be taken over (point 6).
* A non-ASCII token, a wrong ``Content-Encoding``, a body that is not UTF-8, a newline in a
  name or run id: 4xx, never a 500 (point 7, 8).
* Silent and trickling connections are closed at the header deadline, connections beyond the
  limit are refused at once, and the operator's file descriptors stay bounded (point 3).
* 200 junk tokens cost at most the review budget in TokenReviews (the rest 429), and a
  revoked RoleBinding stops a client within the cache TTL (point 3, 8).

Rerun: ``pytest tests/integration/test_hostile_ingest.py -q``
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
import urllib.parse

import aiohttp
import kr8s
import pytest

from scalable.controller.ingest import AUTH_TTL_S, REVIEWS_PER_PEER
from scalable.controller.ingest_server import IngestLimits
from tests.integration.harness import create, operator_options, running_operator, scalable_workflow
from tests.integration.test_ingest import _grant_update, _push, _task, _token
from tests.integration.test_tenancy import _client

LIMITS = IngestLimits()


async def _workflow_and_token(kube_api, namespace, sa_kubeconfig):
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token = _token(await sa_kubeconfig("client"))
    await _grant_update(kube_api, namespace, "client")
    return token


def _stored_lines(root) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in root.rglob("*.jsonl"))


async def _raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as bytes (headers aiohttp's client would refuse to send); the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _post(path: str, token: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
            b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra +
            b"Connection: close\r\n\r\n" + body)


async def test_poisoned_numbers_are_refused_by_field_and_a_null_start_cannot_take_a_run_over(
        kube_api, namespace, sa_kubeconfig, tmp_path):
    token = await _workflow_and_token(kube_api, namespace, sa_kubeconfig)
    runs = tmp_path / namespace / "runs"
    async with running_operator(operator_options(namespace, tmp_path)) as op, aiohttp.ClientSession() as session:
        port = op.ports["ingest"]
        path = f"/v1/namespaces/{namespace}/scalableworkflows/wf/runs"
        poisons = {
            "peak_memory_bytes": b'"peak_memory_bytes": 1' + b"0" * 400,
            "duration_s": b'"duration_s": Infinity',
            "cpu_seconds": b'"cpu_seconds": NaN',
            "submitted_at": b'"submitted_at": -Infinity',
            "input_features": b'"input_features": {"size": 1e400}',
        }
        for field, text in poisons.items():
            record = json.dumps({k: v for k, v in _task(1).items() if k != field})[:-1].encode() + b", " + text + b"}"
            body = b'{"run": {"run_id": "poison"}, "records": [' + json.dumps(_task(0)).encode() + b", " + record + b"]}"
            status, answer = await _raw(port, _post(path, token.encode(), body))
            answer = json.loads(answer)
            assert status == 400, (field, status, answer)
            assert answer["refused"][0]["index"] == 1 and field in answer["refused"][0]["reason"], (field, answer)
        # beyond the schema's maxima, as plain JSON numbers
        for field, value in [("peak_memory_bytes", 2**51), ("duration_s", 1e10)]:
            status, answer = await _push(session, op.ingest_url, namespace, "wf", token,
                                         {"run": {"run_id": "poison"}, "records": [_task(0, **{field: value})]})
            assert status == 400 and field in answer["refused"][0]["reason"], (field, answer)
        assert _stored_lines(tmp_path) == 0 and not (runs / "poison").exists(), "a refused batch stores nothing"

        # a run directory whose run.json cannot say whose it is (null started_at) is nobody's to join
        (runs / "orphan").mkdir(parents=True)
        (runs / "orphan" / "run.json").write_text(json.dumps({"run_id": "orphan", "workflow": "other", "started_at": None}))
        status, answer = await _push(session, op.ingest_url, namespace, "wf", token, {"run": {"run_id": "orphan"}, "records": [_task(1)]})
        assert status == 409 and "run.json" in answer["error"], answer
        assert not (runs / "orphan" / "tasks.jsonl").exists()
        assert json.loads((runs / "orphan" / "run.json").read_text())["workflow"] == "other", "run.json untouched"

        status, answer = await _push(session, op.ingest_url, namespace, "wf", token, {"run": {"run_id": "good"}, "records": [_task(1)]})
        assert (status, answer["accepted"]) == (200, 1)


async def test_client_faults_are_4xx_never_500(kube_api, namespace, sa_kubeconfig, tmp_path):
    token = (await _workflow_and_token(kube_api, namespace, sa_kubeconfig)).encode()
    async with running_operator(operator_options(namespace, tmp_path)) as op:
        port = op.ports["ingest"]
        path = f"/v1/namespaces/{namespace}/scalableworkflows/wf/runs"
        body = json.dumps({"records": [_task(1)]}).encode()
        cases = {
            "non-ASCII token": (_post(path, "tökén".encode(), body), 401),
            "Latin-1 token bytes": (_post(path, b"\xff\xfe" + token, body), 401),
            "gzip that is not gzip": (_post(path, token, body, b"Content-Encoding: gzip\r\n"), 400),
            "unknown Content-Encoding": (_post(path, token, body, b"Content-Encoding: x-snappy\r\n"), 415),
            "body not UTF-8": (_post(path, token, b'{"records": ["\xff\xfe"]}'), 400),
            "newline in the name": (_post(f"/v1/namespaces/{namespace}/scalableworkflows/wf%0A/runs", token, body), 400),
            "newline in the namespace": (_post(f"/v1/namespaces/{namespace}%0A/scalableworkflows/wf/runs", token, body), 400),
            "newline in the run id": (_post(path, token, json.dumps({"run": {"run_id": "run\n"}, "records": [_task(1)]}).encode()), 400),
        }
        for what, (request, expected) in cases.items():
            status, answer = await _raw(port, request)
            assert status < 500, (what, status, answer[:300])
            assert b"Traceback" not in answer
            assert status == expected, (what, status, answer[:300])
            assert isinstance(json.loads(answer).get("error"), str), what
        assert _stored_lines(tmp_path) == 0
        assert not any("\n" in p.name for p in tmp_path.rglob("*")), "no directory named with a newline"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server sent before closing the connection; fails if it stays open ``within`` s."""
    data = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(4096):
                data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the server kept a connection open {within:.0f} s (got {data[:60]!r})")
    return data


async def test_slow_and_idle_clients_are_cut_off_and_cannot_exhaust_descriptors(kube_api, namespace, sa_kubeconfig, tmp_path):
    """The operator runs in this process (and event loop), so /proc/self/fd counts its
    descriptors too, and every client socket here is asyncio's, never a blocking one."""
    token = await _workflow_and_token(kube_api, namespace, sa_kubeconfig)
    async with running_operator(operator_options(namespace, tmp_path)) as op, aiohttp.ClientSession() as session:
        port = op.ports["ingest"]
        before = _fd_count()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # admitted first: the trickler
        trickle_started = opened = time.monotonic()
        attackers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections_per_peer * 3)]
        await asyncio.sleep(1.0)
        # the server holds at most its per-address limit of them (each of ours is one fd of this process too)
        assert _fd_count() - before <= len(attackers) + 1 + LIMITS.max_connections_per_peer + 8
        # one byte every half second does not keep a header block alive: the deadline is for all of it
        for byte in b"POST /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
            if reader.at_eof() or writer.is_closing():
                break
            try:
                writer.write(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                break
            await asyncio.sleep(0.5)
            if time.monotonic() - trickle_started > LIMITS.header_timeout_s + 3:
                break
        assert not await _closed_by_server(reader, 1.0)
        assert time.monotonic() - trickle_started <= LIMITS.header_timeout_s + 3, "the trickler was not cut off"
        writer.close()
        refused = 0
        for attacker_reader, attacker_writer in attackers:  # the silent ones were closed too: 503 at once, or at the deadline
            data = await _closed_by_server(attacker_reader, max(1.0, opened + LIMITS.header_timeout_s + 2 - time.monotonic()))
            refused += data.startswith(b"HTTP/1.1 503")
            attacker_writer.close()
        assert refused >= len(attackers) - LIMITS.max_connections_per_peer, f"only {refused} refused beyond the limit"
        # and a legitimate push goes through at once
        started = time.monotonic()
        status, answer = await _push(session, op.ingest_url, namespace, "wf", token, {"records": [_task(1)]})
        assert status == 200 and time.monotonic() - started < 5
        await asyncio.sleep(0.5)
        assert _fd_count() <= before + 8, "descriptors were given back"


def _token_reviews(kubeconfig: str) -> float:
    with _client(kubeconfig, _token(kubeconfig)) as admin:
        text = admin.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(
        r'^apiserver_request_total\{[^}]*resource="tokenreviews"[^}]*verb="POST"[^}]*\} ([0-9.e+]+)$', text, re.M))


async def test_junk_tokens_cannot_hammer_the_api_server_and_revocation_is_prompt(
        kube_api, kubeconfig, namespace, sa_kubeconfig, tmp_path):
    token = await _workflow_and_token(kube_api, namespace, sa_kubeconfig)
    # at most 32 connections at once: fewer than one address may hold (LIMITS.max_connections_per_peer)
    async with running_operator(operator_options(namespace, tmp_path)) as op, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        body = {"records": [_task(1)]}
        before = _token_reviews(kubeconfig)
        started = time.monotonic()
        answers = await asyncio.gather(*(_push(session, op.ingest_url, namespace, "wf", secrets.token_urlsafe(24), body)
                                         for _ in range(200)))
        elapsed = time.monotonic() - started
        reviews = _token_reviews(kubeconfig) - before
        statuses = [s for s, _ in answers]
        rate, burst = REVIEWS_PER_PEER
        assert set(statuses) <= {401, 429} and statuses.count(429) > 0, statuses
        assert reviews <= burst + rate * elapsed + 2, f"{reviews} TokenReviews for 200 junk tokens in {elapsed:.1f} s"
        assert statuses.count(401) == reviews or abs(statuses.count(401) - reviews) <= 2

        await asyncio.sleep(burst / rate)  # the junk's budget refills
        status, _ = await _push(session, op.ingest_url, namespace, "wf", token, body)
        assert status == 200
        binding = await kr8s.asyncio.objects.RoleBinding.get("push-telemetry-client", namespace=namespace, api=kube_api)
        await binding.delete()
        revoked = time.monotonic()
        while True:
            status, answer = await _push(session, op.ingest_url, namespace, "wf", token, {"records": [_task(2)]})
            if status == 403:
                break
            assert status == 200 and time.monotonic() - revoked < AUTH_TTL_S + 3, (status, answer)
            await asyncio.sleep(0.5)
        assert time.monotonic() - revoked <= AUTH_TTL_S + 3
