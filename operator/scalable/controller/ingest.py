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

Hostile callers (issue 15): a token that is not RFC 6750 characters is 401 without asking the
API server; who a token is and what it may do is cached for :data:`AUTH_TTL_S` seconds (so a
revoked token or RoleBinding stops working within that time), and the TokenReviews that cache
misses cost are rate-limited per caller address and in total (:class:`_ReviewBudget`; over it,
429 with ``Retry-After``), so junk tokens cannot hammer the API server. The API server
unreachable or failing is 503 at every step; a body not sent within the body timeout is 408; a
body that cannot be decoded (wrong ``Content-Encoding``, not UTF-8) is 400 or 415. Slow and
idle connections are closed by :mod:`scalable.controller.ingest_server`. A run directory whose
``run.json`` is missing or invalid belongs to nobody that can be verified: 409, not joined.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import stat
import shutil
import threading
import time
from collections import OrderedDict
from typing import Any

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pydantic
from aiohttp import web

from scalable.controller.ingest_server import LIMITS_KEY, IngestLimits, answered
from scalable.controller.kube import KubeError
from scalable.controller.storage import StorageError, validate_name, validate_namespace
from scalable.telemetry.dedupe import RunKeys, model_key
from scalable.telemetry.schema import RECORD_FILES, RECORD_TYPES, RunInfo
from scalable.telemetry.store import RUN_INFO_FILE, RunStore, is_run_dir_name, new_run_id

__all__ = ["ingest_app", "AUTH_TTL_S", "MAX_BODY_BYTES", "MAX_RECORDS", "REVIEWS_PER_PEER", "REVIEWS_TOTAL"]

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_RECORDS = 100_000
#: how long a TokenReview + SubjectAccessReview answer is reused: a revoked token, ServiceAccount
#: or RoleBinding stops working within this many seconds
AUTH_TTL_S = 5.0
#: TokenReviews (cache misses) per second and burst, per caller address and for all callers
REVIEWS_PER_PEER = (5.0, 20)
REVIEWS_TOTAL = (50.0, 100)
#: a bearer token as RFC 6750 defines it (b64token), and no longer than any real JWT
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN = 16 * 1024
#: the Content-Encodings aiohttp decodes (anything else would reach the JSON parser as bytes)
_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
#: what the API server client raises when the API server cannot be reached or answers badly
_API_DOWN = (KubeError, httpx.HTTPError, OSError, asyncio.TimeoutError)
#: runs whose record keys stay in memory between batches (older ones are read again when needed)
_KEY_CACHE_RUNS = 256


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="scalable"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


class _Bucket:
    """A token bucket: ``rate`` per second, at most ``burst`` at once."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _ReviewBudget:
    """How many TokenReviews the ingestion may ask for: per caller address and in total."""

    def __init__(self, per_peer: tuple[float, int] = REVIEWS_PER_PEER, total: tuple[float, int] = REVIEWS_TOTAL) -> None:
        self.per_peer = per_peer
        self.total = _Bucket(*total)
        self.peers: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, peer: str) -> bool:
        bucket = self.peers.pop(peer, None) or _Bucket(*self.per_peer)
        self.peers[peer] = bucket
        while len(self.peers) > 4096:
            self.peers.popitem(last=False)
        return bucket.take() and self.total.take()


class _Authorizer:
    """TokenReview + SubjectAccessReview with a short cache (a client pushes many batches) and
    a budget of reviews, so neither a busy client nor junk tokens hammer the API server."""

    def __init__(self, kube: Any, audiences: list[str] | None = None) -> None:
        self.kube = kube
        self.audiences = audiences
        self.budget = _ReviewBudget()
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, int, str]] = OrderedDict()

    async def check(self, token: str, namespace: str, name: str, peer: str = "?") -> tuple[int, str]:
        """(200, username), or (401/403/429, why); raises what the API client raises when the
        API server cannot answer."""
        key = (hashlib.sha256(token.encode()).hexdigest(), namespace, name)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < AUTH_TTL_S:
            return cached[1], cached[2]
        if not self.budget.take(peer):
            return 429, "too many token reviews from this address; retry in a second"
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
        self._cache.pop(key, None)
        self._cache[key] = (time.monotonic(), *result)
        while len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return result


class _RunLocks:
    """One asyncio lock per run, dropped when nobody holds or waits for it.

    Counting holders and waiters (not asking ``lock.locked()``) matters: between a release and
    the wake-up of the next waiter the lock is briefly unlocked, and dropping it then would let
    a third request create a new lock and write the run alongside the woken waiter.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


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


RUN_LOCKS_KEY = web.AppKey("run_locks", _RunLocks)


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _claim_run(runs_dir: Any, run_id: str, name: str, run: dict[str, Any]) -> tuple[str | None, bool]:
    """Create the run, or check that an existing one is this workflow's: (None if it may be
    written, else why not; whether it was created here). Holds an exclusive ``flock`` on the namespace's runs directory, so
    two requests (in two processes) creating the same run cannot both think it new, and a run
    directory whose ``run.json`` is missing or invalid (null ``started_at``, junk) is never
    joined: whose it is cannot be told, so it is nobody's to write."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(runs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        store = RunStore(runs_dir)
        try:
            st = os.stat(run_id, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            store.open_run(run_id=run_id, **run)  # run.json now; the writer has opened no file yet
            return None, True
        if not stat.S_ISDIR(st.st_mode):
            return f"run {run_id!r} exists but is not a directory", False
        existing = store.run_info(run_id)
        if existing is None:
            return f"run {run_id!r} exists but its {RUN_INFO_FILE} is missing or invalid; push to a new run_id", False
        if existing.workflow != name:
            return f"run {run_id!r} belongs to workflow {existing.workflow!r}", False
        return None, False
    finally:
        os.close(dir_fd)  # releases the flock


def ingest_app(rt: Any, audiences: list[str] | None = None, limits: IngestLimits | None = None) -> web.Application:
    """The aiohttp app; with ``audiences``, only tokens bound to one of them are accepted (a
    projected token for "scalable" cannot be replayed against the API server, and vice versa).
    ``limits`` carries the body timeout for the handler and the connection deadlines for
    :func:`scalable.controller.ingest_server.serve_ingest`."""
    limits = limits or IngestLimits()
    authorizer = _Authorizer(rt.kube, audiences)
    key_cache = _KeyCache()
    run_locks = _RunLocks()

    async def api(call: Callable[[], Awaitable[Any]], what: str) -> Any:
        try:
            return await call()
        except _API_DOWN as exc:
            raise web.HTTPServiceUnavailable(text=f"cannot {what}: the API server did not answer ({type(exc).__name__}); retry later",
                                             headers={"Retry-After": "5"}) from exc

    async def read_body(request: web.Request) -> Any:
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                data = await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(text=f"the body did not arrive within {limits.body_timeout_s:g} s") from None
        except (web.RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            # a body that does not decode as its Content-Encoding says (not gzip, a bomb cut off)
            raise web.HTTPBadRequest(text="the body could not be read as its Content-Encoding says; "
                                          "send it plain, gzip or deflate") from exc
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise web.HTTPBadRequest(text="the body must be UTF-8 JSON, nested no deeper than Python's recursion limit: "
                                          "{\"run\": {...}, \"records\": [...]}") from None

    async def push(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            validate_namespace(namespace)
            validate_name(name)
        except StorageError as exc:
            return _error(400, str(exc))
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        if not token:
            return _error(401, "send the ServiceAccount token as 'Authorization: Bearer <token>'")
        if len(token) > _MAX_TOKEN or not _BEARER.fullmatch(token):
            rt.metrics.records.labels(namespace, "unauthorized").inc()
            return _error(401, "the bearer token is not a token: RFC 6750 characters only (A-Z a-z 0-9 - . _ ~ + / =)")
        status, who = await api(lambda: authorizer.check(token, namespace, name, _peer(request)), "verify the caller")
        if status != 200:
            rt.metrics.records.labels(namespace, "unauthorized").inc()
            if status == 429:
                return web.json_response({"error": who}, status=429, headers={"Retry-After": "1"})
            return _error(status, who)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in _ENCODINGS:
            return _error(415, f"Content-Encoding {encoding[:40]!r} is not understood; send {', '.join(sorted(_ENCODINGS))}")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, f"at most {MAX_BODY_BYTES} bytes per request; send several batches with the same run_id")
        body = await read_body(request)
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
            first = exc.errors()[0]
            return _error(400, f"invalid run: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        valid, refused = _validate(run_id, records)
        if refused:
            rt.metrics.records.labels(namespace, "refused").inc(len(refused))
            return _error(400, f"{len(refused)} of {len(records)} records are invalid; nothing was stored", refused=refused[:100])
        workflow = await api(lambda: rt.kube.get("ScalableWorkflow", namespace, name), "look the workflow up")
        if workflow is None:
            return _error(404, f"ScalableWorkflow {name!r} not found in namespace {namespace!r}")
        needed = (request.content_length or 0) * 2 + rt.config.min_free_bytes
        runs_dir = rt.root.runs_dir(namespace)
        if rt.root.free_bytes() < needed:
            rt.metrics.records.labels(namespace, "refused").inc(len(valid))
            return _error(507, "the telemetry volume is full; nothing was stored")

        def store() -> tuple[int, int, str | None]:
            refusal, new_run = _claim_run(runs_dir, run_id, name, run)
            if refusal is not None:
                return -1, 0, refusal
            run_dir = runs_dir / run_id
            sizes = {f: (run_dir / f).stat().st_size for f in set(RECORD_FILES.values()) if (run_dir / f).exists()}
            try:
                writer = RunStore(runs_dir).open_run(run_id=run_id, **run)
                try:
                    dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
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

        try:
            async with run_locks.hold((namespace, run_id)):  # one batch at a time per run, so a roll-back cuts only its own lines
                accepted, duplicates, refusal = await asyncio.to_thread(store)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return _error(507, "the telemetry volume is full; nothing was stored")
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EFBIG):
                return _error(409, f"run {run_id!r} is not a plain run directory on the volume; push to a new run_id")
            raise
        if accepted < 0:
            return _error(409, refusal or f"run {run_id!r} cannot be joined")
        rt.metrics.records.labels(namespace, "accepted").inc(accepted)
        if duplicates:
            rt.metrics.records.labels(namespace, "duplicate").inc(duplicates)
        return web.json_response({"run_id": run_id, "accepted": accepted, "duplicates": duplicates})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    from scalable.controller.ingest_openapi import add_openapi_route, json_errors

    @web.middleware
    async def tell_the_guard(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            answered(request)  # the connection's next request is due within the idle timeout

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[tell_the_guard, json_errors])
    app[LIMITS_KEY] = limits
    app.router.add_post("/v1/namespaces/{namespace}/scalableworkflows/{name}/runs", push)
    app.router.add_get("/healthz", healthz)
    add_openapi_route(app)  # GET /openapi.json
    app[RUN_LOCKS_KEY] = run_locks  # for tests: no lock outlives its users
    return app
