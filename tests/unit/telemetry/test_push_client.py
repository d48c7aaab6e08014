"""The telemetry client's pieces, each on its own: backoff bounds, the clear-text token rule,
token files, how a run is cut into batches, and the spool's bookkeeping.

The client against the real ingestion server, an operator that is down then back, 5xx and a
replay: tests/integration/test_telemetry_push.py.
"""

from __future__ import annotations

import json
import random

import pytest

from scalable.telemetry.backoff import Backoff
from scalable.telemetry.batches import run_batches
from scalable.telemetry.credentials import TokenError, TokenSource
from scalable.telemetry.push import IngestClient, InsecureTransport, is_loopback
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.spool import Spool
from scalable.telemetry.store import RunStore


def test_backoff_grows_with_jitter_within_the_cap_and_gives_up():
    policy = Backoff(base_s=0.5, cap_s=4.0, max_attempts=5, deadline_s=20)
    rng = random.Random(7)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [policy.delay(failures, rng=rng) for _ in range(200)]
        assert 0 <= min(waits) and max(waits) <= ceiling
        assert max(waits) > ceiling * 0.8, "full jitter spreads over the whole range"
    assert policy.delay(1, retry_after=3, rng=rng) >= 3  # the server's Retry-After is honoured ...
    assert policy.delay(1, retry_after=600, rng=rng) <= 4.0  # ... up to the cap
    assert not policy.gives_up(4, elapsed_s=1.0)
    assert policy.gives_up(5, elapsed_s=1.0)
    assert policy.gives_up(1, elapsed_s=19.0, next_wait_s=2.0)
    with pytest.raises(ValueError):
        Backoff(base_s=0)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("[::1]", True), ("localhost", True),
                                            ("198.18.0.5", False), ("operator.svc", False), ("localhost.evil.example", False)])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_a_token_never_travels_in_clear_text_to_another_host():
    with pytest.raises(InsecureTransport, match="plain http to 198.18.0.5"):
        IngestClient("http://198.18.0.5:8081", "ns", "wf", token="secret")
    IngestClient("http://198.18.0.5:8081", "ns", "wf", token="secret", allow_insecure_http=True)
    IngestClient("http://127.0.0.1:8081", "ns", "wf", token="secret")
    IngestClient("https://198.18.0.5:8081", "ns", "wf", token="secret")
    IngestClient("http://198.18.0.5:8081", "ns", "wf")  # no token, nothing to leak
    with pytest.raises(ValueError, match="http"):
        IngestClient("ftp://198.18.0.5", "ns", "wf")
    client = IngestClient("https://198.18.0.5:8443/prefix/", "team a", "wf")
    assert client.endpoint == "https://198.18.0.5:8443/prefix/v1/namespaces/team%20a/scalableworkflows/wf/runs"


def test_token_sources_in_order_and_files_read_each_time(tmp_path):
    sa = tmp_path / "sa-token"
    assert not TokenSource.resolve(env={}, sa_token_path=sa).present
    sa.write_text("from-the-pod\n")
    assert TokenSource.resolve(env={}, sa_token_path=sa).get() == "from-the-pod"
    given = tmp_path / "given"
    given.write_text("from-a-file")
    env = {"SCALABLE_TELEMETRY_TOKEN_FILE": str(given)}
    source = TokenSource.resolve(env=env, sa_token_path=sa)
    assert source.get() == "from-a-file"
    given.write_text("rotated")
    assert source.get() == "rotated"
    assert TokenSource.resolve(env={**env, "SCALABLE_TELEMETRY_TOKEN": "from-env"}, sa_token_path=sa).get() == "from-env"
    assert TokenSource.resolve(token="explicit", env=env, sa_token_path=sa).get() == "explicit"
    given.write_text("two words")
    with pytest.raises(TokenError, match="more than one word"):
        source.get()


def _run(tmp_path, n, run_id="r1"):
    writer = RunStore(tmp_path / "runs").open_run(run_id=run_id, workflow="sweep", labels={"k": "v"})
    writer.append_many([TaskObservation(run_id=run_id, task="t", submitted_at=1.7e9 + i, duration_s=1.0,
                                        input_features={"i": i}) for i in range(n)])
    writer.close()
    return tmp_path / "runs" / run_id


def test_a_run_is_cut_into_batches_and_bad_lines_are_skipped_and_counted(tmp_path):
    run_dir = _run(tmp_path, 25)
    with open(run_dir / "tasks.jsonl", "a") as f:
        f.write('{"kind": "task", "task": "t", "submitted_at": 1, "duration_s": -1}\n{torn\n'
                '{"schema_version": 9, "task": "t"}\n')
    batches = run_batches(run_dir, max_records=10)
    assert [len(b) for b in batches.batches] == [10, 10, 5]
    assert dict(batches.skipped) == {"invalid": 1, "not JSON": 1, "unknown schema_version": 1}
    assert batches.run["run_id"] == "r1" and batches.run["labels"] == {"k": "v"}
    assert "workflow" not in batches.run and "namespace" not in batches.run  # the operator sets them
    assert len(run_batches(run_dir, max_bytes=600).batches) > 3
    with pytest.raises(ValueError, match="not a run directory"):
        run_batches(tmp_path)


def test_spooling_the_same_run_twice_adds_nothing_and_destinations_stay_apart(tmp_path):
    run_dir = _run(tmp_path, 5)
    spool = Spool(tmp_path / "spool", "https://op:8081", "ns", "wf")
    assert spool.add(run_batches(run_dir)) == 1
    assert spool.add(run_batches(run_dir)) == 0
    other = Spool(tmp_path / "spool", "https://op:8081", "ns", "other")
    assert other.dir != spool.dir and other.pending() == []
    body = json.loads(spool.pending()[0].read_bytes())
    assert len(body["records"]) == 5 and body["run"]["run_id"] == "r1"
    assert json.loads((spool.dir / "destination.json").read_text()) == {"url": "https://op:8081", "workflow": "ns/wf"}


@pytest.mark.parametrize("args, message", [
    (["--workflow", "ns/wf"], "give --url"),
    (["--url", "http://127.0.0.1:1", "--workflow", "wf"], "expected NAMESPACE/NAME"),
    (["--url", "http://198.18.0.9:8081", "--workflow", "ns/wf", "--token-file", "TOKEN"], "refusing to send"),
    (["--url", "https://198.18.0.9:8081", "--workflow", "ns/wf", "--ca-file", "missing.crt"], "--ca-file missing.crt"),
    (["--url", "http://127.0.0.1:1", "--workflow", "ns/wf", "--run", "nope"], "no such run"),
])
def test_cli_push_refuses_a_wrong_invocation_in_one_line(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from scalable.cli.main import app

    monkeypatch.chdir(tmp_path)
    for var in ("SCALABLE_TELEMETRY_URL", "SCALABLE_TELEMETRY_WORKFLOW", "SCALABLE_TELEMETRY_TOKEN", "SCALABLE_TELEMETRY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    _run(tmp_path, 1)
    (tmp_path / "TOKEN").write_text("t")
    result = CliRunner().invoke(app, ["telemetry", "push", "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
