"""Telemetry ingestion: workflow clients inside the cluster push their runs to the operator.

``POST /v1/namespaces/{namespace}/scalableworkflows/{name}/runs`` with a JSON body::

    {"run": {"run_id": "...", "started_at": ..., "labels": {...}},      # run_id optional
     "records": [{"kind": "task", ...}, {"kind": "worker", ...}, ...]}

Who may write: the caller sends its ServiceAccount token (``Authorization: Bearer``). The
operator asks the API server who that is (TokenReview) and whether that identity may
``update`` this ScalableWorkflow (SubjectAccessReview) — the same permission that lets it
change the workflow's spec, so a pod of one namespace can never write another's telemetry.
No token or an invalid one: 401. Not allowed: 403. The API server unreachable: 503.

What is stored: every record is validated with the telemetry schema first; if any is
invalid, the whole request is refused (400) with the reason for each bad record and nothing
is written. A run that exists for another workflow is not joined (409). When the volume has
less free space than the request needs plus a reserve, 507, before anything is written.
Valid records are appended to ``<root>/<namespace>/runs/<run_id>/`` by the telemetry library.
The answer is ``{"run_id", "accepted", "duplicates"}``; a client pushes several batches into
one run by sending the same ``run_id``.

Idempotent: every record's key is the hash of its canonical JSON
(:func:`scalable.telemetry.dedupe.record_key`), and a record whose key the run already holds
(or that repeats one earlier in the same batch) is not stored again. ``accepted`` counts the
records this request stored (the new ones), ``duplicates`` those it did not because they were
there already; a replay of a batch answers 200 with ``accepted: 0``. Checking and appending
hold an exclusive ``flock`` on the run directory, so two operator processes sharing the volume
cannot both store the same record.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections import OrderedDict
from typing import Any

import pydantic
from aiohttp import web

from scalable.controller.kube import KubeError
from scalable.controller.storage import StorageError, validate_name, validate_namespace
from scalable.telemetry.dedupe import RunKeys, model_key
from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES, RunInfo
from scalable.telemetry.store import RunStore, is_run_dir_name, new_run_id

__all__ = ["ingest_app", "MAX_BODY_BYTES", "MAX_RECORDS"]

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_RECORDS = 100_000
_AUTH_TTL_S = 60.0
#: runs whose record keys stay in memory between batches (older ones are read again when needed)
_KEY_CACHE_RUNS = 256


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="scalable"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


class _Authorizer:
    """TokenReview + SubjectAccessReview with a short cache (a client pushes many batches)."""

    def __init__(self, kube: Any, audiences: list[str] | None = None) -> None:
        self.kube = kube
        self.audiences = audiences
        self._cache: dict[tuple[str, str, str], tuple[float, int, str]] = {}

    async def check(self, token: str, namespace: str, name: str) -> tuple[int, str]:
        key = (hashlib.sha256(token.encode()).hexdigest(), namespace, name)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < _AUTH_TTL_S:
            return cached[1], cached[2]
        review = await self.kube.token_review(token, self.audiences)
        if not review.get("authenticated"):
            result = (401, review.get("error") or "the token is not valid")
        else:
            user = review.get("user") or {}
            access = await self.kube.access_review(user, namespace, "update", "scalable.dev", "scalableworkflows", name)
            if access.get("allowed"):
                result = (200, user.get("username", ""))
            else:
                why = access.get("reason") or "no RBAC rule allows it"
                result = (403, f"{user.get('username')!r} may not update scalableworkflows/{name} in namespace {namespace!r}: {why}")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), *result)
        return result


def _validate(run_id: str, records: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    valid, refused = [], []
    for index, raw in enumerate(records):
        if not isinstance(raw, dict):
            refused.append({"index": index, "reason": "a record must be a JSON object"})
            continue
        data = dict(raw)
        kind = data.get("kind", "task")
        if not isinstance(kind, str) or kind not in RECORD_FILES:
            refused.append({"index": index, "reason": f"kind {kind!r} cannot be pushed; kinds: {sorted(RECORD_FILES)}"})
            continue
        if data.setdefault("run_id", run_id) != run_id:
            refused.append({"index": index, "reason": f"run_id {data['run_id']!r} differs from the run {run_id!r}"})
            continue
        try:
            valid.append(RECORD_TYPES[kind].model_validate(data))
        except pydantic.ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()[:5])
            refused.append({"index": index, "reason": reasons})
    return valid, refused


def _roll_back(run_dir: Any, new_run: bool, sizes: dict[str, int]) -> None:
    """Undo a batch the disk filled up in the middle of: a new run goes, an existing run's
    record files are cut back to their sizes before the batch (truncating needs no space)."""
    if new_run:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(RECORD_FILES.values()):
        path = run_dir / name
        if name in sizes:
            os.truncate(path, sizes[name])
        elif path.exists():
            path.unlink()


class _KeyCache:
    """The record keys of recently written runs, so a run's files are read once, then only
    what was appended since."""

    def __init__(self, size: int = _KEY_CACHE_RUNS) -> None:
        self._runs: OrderedDict[tuple[str, str], RunKeys] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, namespace: str, run_id: str, run_dir: Any) -> RunKeys:
        with self._lock:
            keys = self._runs.pop((namespace, run_id), None)
            if keys is None or keys.run_dir != run_dir:
                keys = RunKeys(run_dir, RECORD_FILES.values())
            self._runs[(namespace, run_id)] = keys
            while len(self._runs) > self._size:
                self._runs.popitem(last=False)
            return keys


def _new_records(valid: list[Any], stored: set[str]) -> list[Any]:
    """The records whose keys are neither stored nor earlier in the batch."""
    fresh, seen = [], set(stored)
    for record in valid:
        key = model_key(record)
        if key not in seen:
            seen.add(key)
            fresh.append(record)
    return fresh


def ingest_app(rt: Any, audiences: list[str] | None = None) -> web.Application:
    """The aiohttp app; with ``audiences``, only tokens bound to one of them are accepted (a
    projected token for "scalable" cannot be replayed against the API server, and vice versa)."""
    authorizer = _Authorizer(rt.kube, audiences)
    key_cache = _KeyCache()
    run_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def push(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            validate_namespace(namespace)
            validate_name(name)
        except StorageError as exc:
            return _error(400, str(exc))
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return _error(401, "send the ServiceAccount token as 'Authorization: Bearer <token>'")
        try:
            status, who = await authorizer.check(header[7:].strip(), namespace, name)
        except KubeError as exc:
            return _error(503, f"cannot verify the caller with the API server: {exc}")
        if status != 200:
            rt.metrics.records.labels(namespace, "unauthorized").inc()
            return _error(status, who)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, f"at most {MAX_BODY_BYTES} bytes per request; send several batches with the same run_id")
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            return _error(400, "the body must be JSON, nested no deeper than Python's recursion limit: "
                                "{\"run\": {...}, \"records\": [...]}")
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return _error(400, "the body must be a JSON object with a 'records' list")
        records = body["records"]
        if len(records) > MAX_RECORDS:
            return _error(413, f"at most {MAX_RECORDS} records per request")
        run = body.get("run") or {}
        if not isinstance(run, dict):
            return _error(400, "'run' must be a JSON object: {\"run_id\": ..., \"labels\": {...}}")
        run = dict(run)
        run_id = run.pop("run_id", None) or new_run_id()
        if not isinstance(run_id, str) or not is_run_dir_name(run_id):
            return _error(400, f"invalid run_id {run_id!r}: letters, digits and . _ : @ + -, not starting with . or -")
        run.update(workflow=name, namespace=namespace)
        run.setdefault("source", "client")
        try:
            RunInfo.model_validate({"run_id": run_id, **run})
        except pydantic.ValidationError as exc:
            return _error(400, f"invalid run: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
        valid, refused = _validate(run_id, records)
        if refused:
            rt.metrics.records.labels(namespace, "refused").inc(len(refused))
            return _error(400, f"{len(refused)} of {len(records)} records are invalid; nothing was stored", refused=refused[:100])
        workflow = await rt.kube.get("ScalableWorkflow", namespace, name)
        if workflow is None:
            return _error(404, f"ScalableWorkflow {name!r} not found in namespace {namespace!r}")
        needed = (request.content_length or 0) * 2 + rt.config.min_free_bytes
        runs_dir = rt.root.runs_dir(namespace)
        if rt.root.free_bytes() < needed:
            rt.metrics.records.labels(namespace, "refused").inc(len(valid))
            return _error(507, "the telemetry volume is full; nothing was stored")

        def store() -> tuple[int, int, str | None]:
            runs_dir.mkdir(parents=True, exist_ok=True)
            existing = RunStore(runs_dir).run_info(run_id)
            if existing is not None and existing.workflow != name:
                return -1, 0, existing.workflow
            run_dir = runs_dir / run_id
            new_run = not run_dir.exists()
            sizes = {f: (run_dir / f).stat().st_size for f in set(RECORD_FILES.values()) if (run_dir / f).exists()}
            try:
                writer = RunStore(runs_dir).open_run(run_id=run_id, **run)
                try:
                    dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
                    try:
                        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # check and append as one step, across processes too
                        fresh = _new_records(valid, key_cache.get(namespace, run_id, run_dir).refresh())
                        return writer.append_many(fresh), len(valid) - len(fresh), None
                    finally:
                        os.close(dir_fd)  # releases the flock
                finally:
                    writer.close()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    _roll_back(run_dir, new_run, sizes)
                raise

        lock = run_locks.setdefault((namespace, run_id), asyncio.Lock())
        try:
            async with lock:  # one batch at a time per run, so a roll-back cuts only its own lines
                accepted, duplicates, other = await asyncio.to_thread(store)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return _error(507, "the telemetry volume is full; nothing was stored")
            raise
        finally:
            if not lock.locked():
                run_locks.pop((namespace, run_id), None)
        if accepted < 0:
            return _error(409, f"run {run_id!r} belongs to workflow {other!r}")
        rt.metrics.records.labels(namespace, "accepted").inc(accepted)
        if duplicates:
            rt.metrics.records.labels(namespace, "duplicate").inc(duplicates)
        return web.json_response({"run_id": run_id, "accepted": accepted, "duplicates": duplicates})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    from scalable.controller.ingest_openapi import add_openapi_route, json_errors

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app.router.add_post("/v1/namespaces/{namespace}/scalableworkflows/{name}/runs", push)
    app.router.add_get("/healthz", healthz)
    add_openapi_route(app)  # GET /openapi.json
    return app
