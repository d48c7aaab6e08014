"""A session killed with SIGKILL keeps every task recorded up to the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from scalable.telemetry.schema import TaskObservation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys
    from scalable.session.session import ScalableSession
    from tests.unit.session import workloads

    if __name__ == "__main__":
        session = ScalableSession.from_yaml(sys.argv[1], target="local")
        client = session.start()
        futures = [client.submit(workloads.run_demeter_scenario, i, tag="demeter", seconds=0.05) for i in range(400)]
        client.gather(futures)
        print("finished without being killed", flush=True)
    """
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkill_mid_session_keeps_the_recorded_tasks(write_manifest, tmp_path):
    manifest = write_manifest()
    script = tmp_path / "workflow.py"
    script.write_text(SCRIPT)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, str(script), str(manifest)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    children: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 120
        tasks_file = None
        while time.monotonic() < deadline:
            children |= set(psutil.Process(proc.pid).children(recursive=True))
            found = list(runs.glob("*/tasks.jsonl"))
            if found and len(_lines(found[0])) >= 25:
                tasks_file = found[0]
                break
            assert proc.poll() is None, "the workflow ended before it could be killed"
            time.sleep(0.05)
        assert tasks_file is not None, "no task was recorded within 120 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    assert proc.returncode == -signal.SIGKILL
    lines = _lines(tasks_file)
    assert 25 <= len(lines) < 400
    records = [TaskObservation.model_validate_json(line) for line in lines]
    assert {r.task for r in records} == {"run_demeter_scenario"}
    assert len({r.key for r in records}) == len(records)
    info = (tasks_file.parent / "run.json").read_text()
    assert '"finished_at": null' in info, "the killed run was never finalised"
