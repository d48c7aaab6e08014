"""The telemetry client against the real ingestion server (issue 14, point 1).

The operator runs in-process against the real kube-apiserver; the client authenticates with a
real ServiceAccount token (TokenRequest), checked by TokenReview and SubjectAccessReview. What
is shown, each against the real parts:

* an operator that is down: nothing is lost, every batch waits in the spool; a drain started
  while it is down delivers everything once it comes back (on the same port);
* an operator that answers 5xx (507 from a really full tmpfs volume): the batch stays spooled and
  goes once the volume has room again;
* a replay (``scalable telemetry push`` of the same runs again, the real CLI as a subprocess):
  the operator stores nothing new and says so, every record is on its volume once;
* permanent refusals: an invalid record is refused naming the field (the batch goes to
  ``failed/``, the others are delivered); a token that may not update the workflow stops the
  drain with a 403 and keeps everything spooled;
* TLS: the operator serves HTTPS with its certificate; the CLI verifies it with --ca-file, and
  without it refuses to go on.

Rerun: ``pytest tests/integration/test_telemetry_push.py -q``
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalable.telemetry.backoff import Backoff
from scalable.telemetry.batches import run_batches
from scalable.telemetry.credentials import TokenSource
from scalable.telemetry.loader import load_tasks
from scalable.telemetry.push import IngestClient
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.spool import Spool
from scalable.telemetry.store import RunStore
from tests.integration.harness import create, operator_options, running_operator, scalable_workflow
from tests.integration.test_ingest import _grant_update
from tests.support.kube import request_token
from tests.support.testenv import free_ports

pytestmark = pytest.mark.integration


def _write_runs(runs_dir: Path, runs: int, tasks: int, start: int = 0) -> list[str]:
    store = RunStore(runs_dir)
    ids = []
    for r in range(start, start + runs):
        with store.open_run(workflow="wf", source="test", run_id=f"run-{r:04d}") as writer:
            writer.append_many([TaskObservation(run_id=writer.run_id, task="simulate", tag="default",
                                                submitted_at=1.7e9 + r * 1000 + i, duration_s=1.0 + i % 3,
                                                peak_memory_bytes=2**28 + i, input_features={"run": r, "i": i})
                                for i in range(tasks)])
            ids.append(writer.run_id)
    return ids


def _stored(telemetry: Path, namespace: str) -> dict[str, int]:
    runs = telemetry / namespace / "runs"
    return {p.parent.name: len(p.read_text().splitlines()) for p in sorted(runs.glob("*/tasks.jsonl"))}


async def _client_token(kube_api, namespace: str, tmp_path: Path, sa: str = "client", grant: bool = True) -> Path:
    async with kube_api.call_api("POST", version="v1", namespace=namespace, url="serviceaccounts",
                                 content=json.dumps({"metadata": {"name": sa}})):
        pass
    if grant:
        await _grant_update(kube_api, namespace, sa)
    path = tmp_path / f"{sa}.token"
    path.write_text(await request_token(kube_api, namespace, sa))
    return path


def _cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalable.cli.main", "telemetry", "push", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def _spool_runs(spool: Spool, runs_dir: Path, ids: list[str], max_records: int = 100) -> int:
    for run_id in ids:
        spool.add(run_batches(runs_dir / run_id, max_records=max_records))
    return len(spool.pending())


def _push_args(runs_dir: Path, url: str, namespace: str, token_file: Path, spool_dir: Path, *extra: str) -> list[str]:
    return ["--runs-dir", str(runs_dir), "--url", url, "--workflow", f"{namespace}/wf", "--token-file", str(token_file),
            "--spool-dir", str(spool_dir), *extra]


async def test_an_operator_that_is_down_then_back_loses_nothing_and_a_replay_stores_nothing_new(
        kube_api, namespace, tmp_path):
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    runs_dir = tmp_path / "client" / "runs"
    ids = _write_runs(runs_dir, runs=12, tasks=150)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    spool = Spool(tmp_path / "spool", url, namespace, "wf")
    batches = _spool_runs(spool, runs_dir, ids)
    assert batches == 12 * 2
    client = IngestClient(url, namespace, "wf", token=TokenSource(path=token_file))

    # nobody listens: the bounded policy gives up, every batch stays in the spool
    report = spool.drain(client, Backoff(base_s=0.05, cap_s=0.2, max_attempts=3, deadline_s=5))
    assert (report.sent, report.remaining, report.retries) == (0, batches, 2)
    assert "cannot reach" in report.stopped and not report.refused

    # a drain that starts while the operator is down; the operator comes up 3 s later, same port
    telemetry = tmp_path / "telemetry"
    options = operator_options(namespace, telemetry)
    options.ingest_port = port
    drain = asyncio.ensure_future(asyncio.to_thread(
        spool.drain, client, Backoff(base_s=0.2, cap_s=1.0, max_attempts=1000, deadline_s=120)))
    await asyncio.sleep(3)
    assert not drain.done(), "the drain must keep retrying while the operator is away"
    async with running_operator(options, wait_leading=False):
        back = time.monotonic()
        report = await asyncio.wait_for(drain, 60)
        drained_s = time.monotonic() - back
        assert report.complete and report.sent == batches and report.accepted == 12 * 150 and report.duplicates == 0
        assert report.retries > 0
        assert _stored(telemetry, namespace) == {run_id: 150 for run_id in ids}
        print(f"\nspool of {batches} batches ({12 * 150} records) drained {drained_s:.2f} s after the operator came back "
              f"({report.retries} retries in all)")

        # a replay through the real CLI: everything was there, nothing new is stored
        done = await asyncio.to_thread(_cli, *_push_args(runs_dir, url, namespace, token_file, tmp_path / "spool2", "--json"))
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert (outcome["accepted"], outcome["duplicates"], outcome["remaining"]) == (0, 12 * 150, 0)
        assert _stored(telemetry, namespace) == {run_id: 150 for run_id in ids}

        # new runs next to the old ones: only those are new
        ids += _write_runs(runs_dir, runs=2, tasks=10, start=100)
        done = await asyncio.to_thread(_cli, *_push_args(runs_dir, url, namespace, token_file, tmp_path / "spool2"))
        assert done.returncode == 0, done.stderr
        assert "20 records new, 1800 there already" in done.stderr, done.stderr
    table = load_tasks(telemetry / namespace / "runs", cache=False)
    assert len(table.frame) == 12 * 150 + 20 and table.skipped.total == 0
    assert not spool.pending()


async def test_5xx_from_a_really_full_volume_keeps_the_batches_until_there_is_room(kube_api, namespace, tmp_path):
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    runs_dir = tmp_path / "client" / "runs"
    ids = _write_runs(runs_dir, runs=3, tasks=40)
    volume = tmp_path / "volume"
    volume.mkdir()
    # an 8 MiB tmpfs and the operator's reserve at 16 MiB: every push is refused with 507
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(volume)], check=True)
    try:
        options = operator_options(namespace, volume)
        options.config.min_free_bytes = 16 * 2**20
        async with running_operator(options, wait_leading=False) as op:
            args = _push_args(runs_dir, op.ingest_url, namespace, token_file, tmp_path / "spool")
            done = await asyncio.to_thread(_cli, *args, "--deadline", "3")
            assert done.returncode == 3, (done.returncode, done.stderr)
            assert "507" in done.stderr and "3 batches wait in" in done.stderr, done.stderr
            assert not (volume / namespace / "runs").exists() or not _stored(volume, namespace)
            subprocess.run(["mount", "-o", "remount,size=96m", str(volume)], check=True)  # room again
            done = await asyncio.to_thread(_cli, *args, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["accepted"] == 3 * 40
            assert _stored(volume, namespace) == {run_id: 40 for run_id in ids}
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


async def test_permanent_refusals_name_the_field_or_stop_with_everything_kept(kube_api, namespace, tmp_path):
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    bystander = await _client_token(kube_api, namespace, tmp_path, sa="bystander", grant=False)
    runs_dir = tmp_path / "client" / "runs"
    ids = _write_runs(runs_dir, runs=2, tasks=5)
    telemetry = tmp_path / "telemetry"
    async with running_operator(operator_options(namespace, telemetry), wait_leading=False) as op:
        # a token that may not update the workflow: 403, the drain stops, nothing leaves the spool
        done = await asyncio.to_thread(_cli, *_push_args(runs_dir, op.ingest_url, namespace, bystander, tmp_path / "spool"))
        assert done.returncode == 1 and "(403)" in done.stderr and "may not update" in done.stderr, done.stderr
        assert "2 batches wait in" in done.stderr
        spool = Spool(tmp_path / "spool", op.ingest_url, namespace, "wf")
        assert len(spool.pending()) == 2 and not _stored(telemetry, namespace)

        # a batch spooled by an older client with a record the operator refuses: 400 naming the
        # field; that batch goes to failed/, the others are delivered
        bad = {"run": {"run_id": "run-old"}, "records": [
            {"kind": "task", "task": "simulate", "submitted_at": 1.7e9, "duration_s": 1.0},
            {"kind": "task", "task": "simulate", "submitted_at": 1.7e9, "duration_s": -4.0}]}
        (spool.dir / "run-old.00000.0000000000000000.json").write_text(json.dumps(bad))
        client = IngestClient(op.ingest_url, namespace, "wf", token=TokenSource(path=token_file))
        report = await asyncio.to_thread(spool.drain, client, Backoff(deadline_s=10))
        assert report.sent == 2 and report.remaining == 0 and len(report.failed) == 1
        name, reason = report.failed[0]
        assert name.startswith("run-old") and "(400)" in reason and "record 1: duration_s" in reason, reason
        assert [p.name for p in spool.failed()] == [name]
        assert "duration_s" in (spool.dir / "failed" / (name + ".error")).read_text()
        assert _stored(telemetry, namespace) == {run_id: 5 for run_id in ids}


async def test_https_with_the_operators_ca_and_no_token_over_plain_http(kube_api, namespace, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    runs_dir = tmp_path / "client" / "runs"
    ids = _write_runs(runs_dir, runs=1, tasks=7)
    telemetry = tmp_path / "telemetry"
    options = operator_options(namespace, telemetry)
    options.ingest_tls_cert, options.ingest_tls_key = str(cert), str(key)
    async with running_operator(options, wait_leading=False) as op:
        url = op.ingest_url.replace("http://", "https://")
        args = _push_args(runs_dir, url, namespace, token_file, tmp_path / "spool")
        done = await asyncio.to_thread(_cli, *args)
        assert done.returncode == 1 and "TLS with" in done.stderr and "--ca-file" in done.stderr, done.stderr
        done = await asyncio.to_thread(_cli, *args, "--ca-file", str(cert))
        assert done.returncode == 0 and "7 records new" in done.stderr, done.stderr
        assert _stored(telemetry, namespace) == {ids[0]: 7}
    # plain http to a host that is not loopback: refused before anything is sent
    done = await asyncio.to_thread(_cli, *_push_args(runs_dir, "http://198.18.0.1:8081", namespace, token_file,
                                                     tmp_path / "spool3"))
    assert done.returncode == 2 and "refusing to send" in done.stderr, done.stderr


def _session_run(manifest: Path, n: int) -> tuple[str, object]:
    """A real ScalableSession (LocalCluster, one worker) running n tasks; close() pushes."""
    from scalable.session.session import ScalableSession
    from tests.unit.session import workloads

    session = ScalableSession.from_yaml(manifest, target="local")
    client = session.start()
    assert client.gather(client.map(workloads.run_demeter_scenario, range(n), tag="demeter")) == list(range(n))
    started = time.monotonic()
    session.close()
    return session.run_id, (session.push_report, time.monotonic() - started)


@pytest.mark.timeout(300)
async def test_a_session_pushes_its_run_at_close_and_a_later_one_delivers_what_waited(
        kube_api, namespace, tmp_path, monkeypatch):
    import yaml

    from scalable.session.manifest import INIT_TEMPLATE

    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    (port,) = free_ports(1)
    data = yaml.safe_load(INIT_TEMPLATE)
    data["worker_groups"][0]["workers"] = {"min": 1, "max": 1}
    data["scaling"].update(mode="off", advisor="none")
    data["telemetry"]["dir"] = str(tmp_path / "runs")
    data["telemetry"]["push"] = {"workflow": f"{namespace}/wf", "deadline_seconds": 4}
    manifest = tmp_path / "scalable.yaml"
    manifest.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SCALABLE_TELEMETRY_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SCALABLE_TELEMETRY_TOKEN_FILE", str(token_file))

    # the operator is away: close() gives up after deadline_seconds, the run waits in the spool
    first, (report, close_s) = await asyncio.to_thread(_session_run, manifest, 6)
    assert report.sent == 0 and report.remaining == 1 and "cannot reach" in report.stopped
    assert close_s < 4 + 15, f"close() took {close_s:.1f} s"
    spool = Spool(tmp_path / "spool", f"http://127.0.0.1:{port}", namespace, "wf")
    assert len(spool.pending()) == 1, "the spool sits next to the runs directory"

    telemetry = tmp_path / "telemetry"
    options = operator_options(namespace, telemetry)
    options.ingest_port = port
    async with running_operator(options, wait_leading=False):
        second, (report, _) = await asyncio.to_thread(_session_run, manifest, 4)
        assert report.complete and report.sent == 2 and report.accepted >= 10  # both runs (tasks and worker samples)
        stored = _stored(telemetry, namespace)
        assert stored == {first: 6, second: 4}
        info = json.loads((telemetry / namespace / "runs" / second / "run.json").read_text())
        assert info["workflow"] == "wf" and info["source"] == "scalable" and info["labels"]["target"] == "local"
    assert not spool.pending()


@pytest.mark.slow
async def test_push_throughput_of_many_runs_through_the_cli(kube_api, namespace, tmp_path):
    """Figures for the report: 100 runs x 500 task records pushed by `scalable telemetry push`
    (the real CLI, a subprocess) to the in-process operator on loopback; then the same again,
    which stores nothing new."""
    await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
    token_file = await _client_token(kube_api, namespace, tmp_path)
    runs_dir = tmp_path / "client" / "runs"
    ids = _write_runs(runs_dir, runs=100, tasks=500)
    telemetry = tmp_path / "telemetry"
    async with running_operator(operator_options(namespace, telemetry), wait_leading=False) as op:
        args = _push_args(runs_dir, op.ingest_url, namespace, token_file, tmp_path / "spool", "--json")
        started = time.monotonic()
        done = await asyncio.to_thread(_cli, *args, timeout=600)
        first_s = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        first = json.loads(done.stdout)
        assert (first["accepted"], first["batches_sent"], first["remaining"]) == (50_000, 100, 0)
        started = time.monotonic()
        done = await asyncio.to_thread(_cli, *args, timeout=600)
        replay_s = time.monotonic() - started
        assert done.returncode == 0 and json.loads(done.stdout)["duplicates"] == 50_000, done.stderr
    assert _stored(telemetry, namespace) == {run_id: 500 for run_id in ids}
    print(f"\npush: 50000 records of 100 runs in {first_s:.2f} s wall ({50_000 / first_s:.0f} records/s, drain "
          f"{first['seconds']:.2f} s); replay {replay_s:.2f} s wall, 0 new")
