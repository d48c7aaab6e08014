"""SIGKILL in the middle of ingestion and of training: nothing lost, nothing duplicated.

* Ingestion: the real ingestion app runs in a child process (API-server questions scripted as in
  test_ingest_fuzz.py); eight client threads push numbered batches; the child is SIGKILLed while
  they push. Every batch that was answered 200 is on disk exactly once, every other batch is on
  disk whole or not at all (never a partial batch or a torn line), and a restarted server keeps
  appending to the same runs.
* Training: ``train_job`` (what the operator's training process runs) is SIGKILLed at several
  moments, including while it saves the challenger. The model store still names the last good
  champion, that model loads and answers, and the next training succeeds.

Scaling steps across a crash are covered on the real API server by
tests/integration/test_operator_scaling.py (crash between patch and status, restart in cooldown)
and leader failover after SIGKILL by tests/integration/test_operator_process.py.

Rerun: ``pytest tests/unit/controller/test_sigkill.py -q``
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from scalable.controller.training import MODEL_NAME, read_champion, train_job
from scalable.telemetry.loader import load_tasks
from tests.integration.harness import write_history
from tests.unit.controller.test_ingest_fuzz import GOOD_TOKEN

REPO = Path(__file__).resolve().parents[3]
_SERVE = """
import sys, time
from pathlib import Path
from tests.unit.controller.test_ingest_fuzz import _Server
s = _Server(Path(sys.argv[1])).start()
print(s.url, flush=True)
time.sleep(3600)
"""


def _start_server(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), f"ingestion server did not start: {url!r}"
    return proc, url


def _push(url: str, run_id: str, batch: int, n: int) -> int:
    records = [{"task": "simulate", "submitted_at": 1.7e9 + i, "duration_s": 1.0, "peak_memory_bytes": 2**30,
                "input_features": {"batch": batch, "i": i}} for i in range(n)]
    request = urllib.request.Request(f"{url}/v1/namespaces/team-a/scalableworkflows/wf/runs", method="POST",
                                     data=json.dumps({"run": {"run_id": run_id}, "records": records}).encode(),
                                     headers={"Authorization": f"Bearer {GOOD_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # no answer: the server died


def _batches(root: Path) -> tuple[collections.Counter, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(root / "team-a" / "runs", cache=False)
    return collections.Counter(int(b) for b in table.frame["feature.batch"]), table.skipped.total


@pytest.mark.slow
def test_sigkill_during_ingestion_loses_and_duplicates_nothing(tmp_path):
    per_batch = 300
    proc, url = _start_server(tmp_path)
    answered: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(10**6))
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            with lock:
                batch = next(counter)
            status = _push(url, f"run-{k % 3}", batch, per_batch)
            with lock:
                answered[batch] = status
            if status == 0:
                return

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    on_disk, skipped = _batches(tmp_path)
    ok = [b for b, s in answered.items() if s == 200]
    assert len(ok) > 10, f"too few batches went through before the kill: {answered}"
    assert skipped == 0, "a torn line or partial record was left by the kill"
    assert all(on_disk[b] == per_batch for b in ok), "an acknowledged batch was lost or duplicated"
    assert all(count == per_batch for count in on_disk.values()), f"a partial batch: {[(b, c) for b, c in on_disk.items() if c != per_batch]}"
    assert set(on_disk) <= set(answered), "a batch nobody sent"

    proc, url = _start_server(tmp_path)  # the operator restarts: the same runs take more
    try:
        assert _push(url, "run-0", 10**6, per_batch) == 200
    finally:
        proc.kill()
        proc.wait(timeout=10)
    on_disk2, skipped2 = _batches(tmp_path)
    assert skipped2 == 0 and on_disk2[10**6] == per_batch
    assert {b: c for b, c in on_disk2.items() if b != 10**6} == dict(on_disk)


_TRAIN = """
import json, sys
from scalable.controller.training import train_job
train_job(json.loads(sys.argv[1]))
"""


@pytest.mark.slow
def test_sigkill_during_training_keeps_the_last_good_model(tmp_path):
    from scalable.advising.learned_advisor import LearnedAdvisor

    runs, models = tmp_path / "runs", tmp_path / "models"
    write_history(runs, n=60)
    request = {"runs_dir": str(runs), "model_dir": str(models), "min_history": 5, "model_type": "gradient_boosting"}
    first = train_job(request)
    assert first["outcome"] == "promoted"
    good = read_champion(models)
    write_history(runs, n=60, peak_gib=5.0, start=1.8e9)  # new history: the next training would promote again
    versions_before = set(os.listdir(models))
    for delay in (0.5, 1.5, 3.0, None):  # None: kill as soon as a new version directory appears
        proc = subprocess.Popen([sys.executable, "-c", _TRAIN, json.dumps(request)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 60
        if delay is None:
            while time.monotonic() < deadline and proc.poll() is None and set(os.listdir(models)) == versions_before:
                time.sleep(0.005)
        else:
            time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        champion = read_champion(models)
        assert champion is not None, "the model store lost its champion"
        if not finished:
            assert champion["version"] == good["version"] or (models / MODEL_NAME / champion["version"] / "metadata.json").is_file(), \
                "a champion was named before its model was complete"
        advisor = LearnedAdvisor.load(models, MODEL_NAME, champion["version"])
        rec = advisor.recommend(task="simulate", input_features={"size": 101})
        assert rec["memory"], rec
        good = champion
    again = train_job(request)  # leftovers of killed runs do not block the next training
    assert again["outcome"] in ("promoted", "kept")
    LearnedAdvisor.load(models, MODEL_NAME, read_champion(models)["version"])
