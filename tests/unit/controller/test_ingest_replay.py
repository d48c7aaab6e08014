"""Issue 15, point 4: a replayed batch stores nothing new, and the answer says how many were new.

Against the real ingestion app (aiohttp on loopback, the scripted API server of the fuzz test
for TokenReview/SAR): the same batch pushed twice, and a batch of 10 lines with 5 distinct
records, leave each record once on disk; a run written before (by another process, or before
the operator restarted) is deduplicated against what its files hold.

Rerun: ``pytest tests/unit/controller/test_ingest_replay.py -q``
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.unit.controller.test_ingest_fuzz import GOOD_TOKEN, _Server

URL = "/v1/namespaces/team-a/scalableworkflows/wf/runs"


@pytest.fixture
def server(tmp_path):
    s = _Server(tmp_path).start()
    yield s
    s.stop()


def _push(server, body):
    request = urllib.request.Request(server.url + URL, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {GOOD_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _records(n, start=0):
    return [{"task": "simulate", "submitted_at": 1.7e9 + i, "duration_s": 2.0, "peak_memory_bytes": 2**30 + i,
             "input_features": {"i": i}} for i in range(start, start + n)]


def _lines(server, run_id):
    return (server.root / "team-a" / "runs" / run_id / "tasks.jsonl").read_text().splitlines()


def test_the_same_batch_pushed_twice_is_stored_once(server):
    body = {"run": {"run_id": "run-1"}, "records": _records(5)}
    assert _push(server, body) == (200, {"run_id": "run-1", "accepted": 5, "duplicates": 0})
    assert _push(server, body) == (200, {"run_id": "run-1", "accepted": 0, "duplicates": 5})
    # a batch overlapping what is stored: only the new ones go in
    assert _push(server, {"run": {"run_id": "run-1"}, "records": _records(4, start=3)}) == (
        200, {"run_id": "run-1", "accepted": 2, "duplicates": 2})
    assert [json.loads(x)["input_features"]["i"] for x in _lines(server, "run-1")] == [0, 1, 2, 3, 4, 5, 6]


def test_ten_lines_five_distinct_store_five(server):
    records = _records(5) * 2
    assert _push(server, {"run": {"run_id": "run-2"}, "records": records}) == (
        200, {"run_id": "run-2", "accepted": 5, "duplicates": 5})
    assert len(_lines(server, "run-2")) == 5


def test_a_run_written_before_is_deduplicated_against_its_files(server):
    assert _push(server, {"run": {"run_id": "run-3"}, "records": _records(3)})[0] == 200
    # a fresh app (the operator restarted) has no memory of the run: it reads the files
    server.stop()
    fresh = _Server(server.root).start()
    try:
        assert _push(fresh, {"run": {"run_id": "run-3"}, "records": _records(4)}) == (
            200, {"run_id": "run-3", "accepted": 1, "duplicates": 3})
        assert len(_lines(fresh, "run-3")) == 4
    finally:
        fresh.stop()
        server.stop = lambda: None
