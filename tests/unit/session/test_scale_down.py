"""Graceful scale-down on a real cluster: only idle workers retire, a busy one keeps its task."""

from __future__ import annotations

import time

import pytest

from scalable.session.session import ScalableSession

from . import workloads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_retire_takes_only_idle_workers_and_the_busy_one_finishes(write_manifest):
    groups = [{"tag": "demeter", "workers": {"min": 3, "max": 3}, "memory": "1Gi"}]
    path = write_manifest(groups=groups, scaling={"mode": "off"})
    with ScalableSession.from_yaml(path, target="local") as session:
        client = session.client
        target = session._target
        assert _wait_for(lambda: len(client.scheduler_info()["workers"]) == 3)
        busy = client.submit(workloads.slow, 3.0, tag="demeter")
        assert _wait_for(lambda: session.snapshot()[0]["demeter"]["processing"] == 1)
        snapshot, idle = session.snapshot()
        assert snapshot["demeter"]["idle_workers"] == 2 and len(idle["demeter"]) == 2
        every_worker = target.workers("demeter")
        retired = target.retire(client.dask, "demeter", every_worker, count=3)
        assert sorted(retired) == sorted(idle["demeter"]), "asked to retire all three, only the idle two go"
        assert busy.result(timeout=30) > 0
        assert _wait_for(lambda: len(client.scheduler_info()["workers"]) == 1)
        assert target.workers("demeter") == sorted(set(every_worker) - set(retired))
    tasks = (session.runs_dir / session.run_id / "tasks.jsonl").read_text().splitlines()
    assert len(tasks) == 1 and '"state":"succeeded"' in tasks[0]
