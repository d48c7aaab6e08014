"""`make demo` works as written, on the real node: hack/demo.py end to end (a smaller workload
than the default). What a user sees: real worker pods appear as the operator raises the
replicas and leave as it lowers them, the pods created after sizing carry the recommended
memory (the first one keeps what it started with), the plot is written, and the teardown
leaves nothing behind.

Its own tier (`make test-demo`, its own pytest session): the demo starts the machine's one
node itself, so it cannot share a session with tests/e2e, whose node is up for the session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.testenv import REPO_ROOT

pytestmark = pytest.mark.e2e
NODE_WAIT = float(os.environ.get("SCALABLE_NODE_WAIT") or 0)


def _run_demo(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "hack" / "demo.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM, not SIGKILL: the demo tears its node down (bridge, iptables rules, mounts).
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        pytest.fail(f"the demo did not finish in {timeout:.0f} s:\n{out[-6000:]}", pytrace=False)
    return proc.returncode, out


@pytest.mark.timeout(900 + NODE_WAIT)
def test_the_demo_scales_real_pods_sizes_them_and_tears_down(tmp_path):
    # With another node up (the e2e session, `make testenv-up`) the demo exits 3 saying so, or
    # waits for it with SCALABLE_NODE_WAIT=<seconds> (passed through).
    code, out = _run_demo(["--output", str(tmp_path), "--waves", "40,60", "--max-workers", "3", "--timeout", "300"],
                          tmp_path, timeout=780 + NODE_WAIT)
    assert code == 0, out[-6000:]
    summary = json.loads((tmp_path / "summary.json").read_text())

    # The history reached the operator the way a workflow client sends it: `scalable telemetry
    # push` to its ingestion endpoint (nothing written onto its volume by hand), every record once.
    push = summary["push"]
    assert (push["runs"], push["accepted"], push["remaining"], push["failed"]) == (12, 60, 0, []), push
    assert "scalable telemetry push --runs-dir" in out and "the operator stored 60 records of 12 runs" in out
    runs = [json.loads(p.read_text()) for p in (tmp_path / "telemetry" / "demo" / "runs").glob("*/run.json")]
    pushed = [r for r in runs if r["source"] == "demo-history"]  # the operator records its own runs too
    assert len(pushed) == 12 and {r["workflow"] for r in pushed} == {"sweep"}
    lines = [(tmp_path / "telemetry" / "demo" / "runs" / r["run_id"] / "tasks.jsonl").read_text().splitlines() for r in pushed]
    assert sum(len(x) for x in lines) == 60

    # The recommendation, from the AdvisorModel trained on the pushed history.
    assert "Recommendation for the Dask workers" in out and "AdvisorModel sweep-model: phase" in out
    # The learned model answers (its input trend on 60 records), with a confidence of its own.
    assert summary["recommendation"]["method"] == "learned", summary["recommendation"]
    assert 0.2 <= summary["recommendation"]["confidence"] <= 1.0, summary["recommendation"]
    memory = summary["recommendation"]["memory"]
    limits = summary["template"]["limits"]

    # Replicas 1 -> 3 -> 1, and real worker pods Running followed them up and back down.
    samples = summary["samples"]
    replicas = [s["replicas"] for s in samples]
    running = [s["pods_running"] for s in samples]
    assert replicas[0] == 1 and max(replicas) == 3 and replicas[-1] == 1, replicas
    assert max(running) >= 2 and running[-1] == 1 and samples[-1]["pods"] == 1, running
    assert "replicas went 1 -> 3 -> 1" in out, out[-3000:]
    assert "scale_up" in out and "scale_down" in out
    peak_at = replicas.index(3)
    assert max(running[peak_at:]) >= 2, "worker pods followed the replicas up"

    # Pods appeared and left: more pods than the one at the end, all but one gone again.
    pods = summary["pods"]
    assert len(pods) >= 3, pods
    assert sum(1 for p in pods if p["gone_at"] is not None or p["leaving_at"] is not None) == len(pods) - 1, pods
    assert "+ pod sweep-default-worker-" in out and "- pod sweep-default-worker-" in out

    # The first pod was created before sizing and keeps what it started with; every pod created
    # after carries the recommended memory as requests = limits.
    first = [p for p in pods if p["before_sizing"]]
    after = [p for p in pods if not p["before_sizing"]]
    assert len(first) == 1 and first[0]["memory_limit"] is None, first
    assert after and all(p["memory_limit"] == limits["memory"] == p["memory_request"] for p in after), after
    assert limits["memory"] == memory, (limits, summary["recommendation"])  # status shows what the pods get
    assert "MEMORY_LIMIT" in out and "keeps what it started with" in out

    png = tmp_path / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The teardown: ControlPlane.stop() found nothing the node left behind. (Not "the bridge is
    # gone": another test may claim the machine's node the moment the demo lets it go.)
    assert summary["left_behind"] == [], summary["left_behind"]
    assert "the node left nothing behind" in out
