"""The telemetry volume fills up: ingestion answers 507 and stores nothing partial.

Two ways a volume is full: the free-space check before writing sees it (the common case), or
another writer takes the space between that check and the write, and the kernel writes part of
the batch, then fails with ENOSPC. The second is injected at the file-write layer of the run
store (``store._write_all`` writes half the buffer for real, then raises ENOSPC, as a full disk
does). Either way: 507 with a JSON reason, no partial line or partial batch on disk, and the
telemetry already there, and a model store, stay readable.

Rerun: ``pytest tests/unit/controller/test_ingest_disk_full.py -q``
"""

from __future__ import annotations

import errno
import json
import os
import urllib.error
import urllib.request
import warnings

import pytest

from scalable.telemetry import store as store_module
from scalable.telemetry.loader import load_tasks
from tests.unit.controller.test_ingest_fuzz import GOOD_TOKEN, _Server

URL = "/v1/namespaces/team-a/scalableworkflows/wf/runs"


@pytest.fixture
def server(tmp_path):
    s = _Server(tmp_path).start()
    yield s
    s.stop()


def _push(server, run_id, n, size=0):
    records = [{"task": "simulate", "submitted_at": 1.7e9 + i, "duration_s": 1.0, "peak_memory_bytes": 2**30,
                "input_features": {"pad": "x" * size, "i": i}} for i in range(n)]
    data = json.dumps({"run": {"run_id": run_id}, "records": records}).encode()
    request = urllib.request.Request(server.url + URL, data=data, method="POST",
                                     headers={"Authorization": f"Bearer {GOOD_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _state(server):
    runs = server.root / "team-a" / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(runs, cache=False)
    files = {str(p.relative_to(runs)): p.read_bytes() for p in sorted(runs.rglob("*.jsonl"))}
    return len(table.frame), table.skipped.total, files


def _model_store(server):
    models = server.root / "team-a" / "models" / "am"
    models.mkdir(parents=True)
    (models / "champion.json").write_text('{"version": "v1"}\n')
    return models


def test_free_space_check_refuses_before_writing(server):
    assert _push(server, "run-1", 50)[0] == 200
    models = _model_store(server)
    before = _state(server)
    server.rt.root.free_bytes = lambda: 1024  # the volume is (nearly) full
    status, body = _push(server, "run-1", 50)
    assert status == 507 and "full" in body["error"]
    status, body = _push(server, "run-2", 5)
    assert status == 507
    assert _state(server) == before == (50, 0, before[2])
    assert not (server.root / "team-a" / "runs" / "run-2").exists()
    assert json.loads((models / "champion.json").read_text()) == {"version": "v1"}


def test_enospc_in_the_middle_of_a_batch_leaves_no_partial_batch(server, monkeypatch):
    assert _push(server, "run-1", 50)[0] == 200
    models = _model_store(server)
    before = _state(server)
    real = store_module._write_all

    def disk_fills_up(fd, data):
        os.write(fd, data[: len(data) // 2 + 7])  # the kernel writes what fits: part of a line
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_write_all", disk_fills_up)
    status, body = _push(server, "run-1", 400, size=200)  # joins the existing run
    assert status == 507 and "full" in body["error"], body
    status, body = _push(server, "run-3", 400, size=200)  # a new run
    assert status == 507, body
    monkeypatch.setattr(store_module, "_write_all", real)
    after = _state(server)
    assert after[:2] == (50, 0), f"records {after[0]}, skipped lines {after[1]}: a partial batch was left behind"
    assert after[2] == before[2]
    assert json.loads((models / "champion.json").read_text()) == {"version": "v1"}
    # new records (pad "x"): the first three of the first push again would be duplicates, not stored
    assert _push(server, "run-1", 3, size=1) == (200, {"run_id": "run-1", "accepted": 3, "duplicates": 0}), \
        "once space is back, the same run takes records again"
    assert _state(server)[:2] == (53, 0)
    assert _push(server, "run-1", 3, size=1) == (200, {"run_id": "run-1", "accepted": 0, "duplicates": 3})
    assert _state(server)[:2] == (53, 0)
