"""409 conflicts and 429/5xx answers during a scaling poll: no stale decision, no half-patched object.

The poll's write carries the resourceVersion its decision was computed from. Here the
DaskCluster changes between the poll's read and its write (another actor set replicas): the
API-server semantics are played by a small in-memory object (resourceVersion bumps on every
write, a stale write is 409). The stale decision is refused, the condition says so, and the
next poll decides again from the new replicas. A 429 or 503 on the write changes nothing and
surfaces as an error the workflow loop reports and retries (workflow.py catches every
iteration's exception); the real API server's 409 is exercised in
tests/integration/test_controlplane_smoke.py and the API server restart in
tests/integration/test_apiserver_restart.py.

Rerun: ``pytest tests/unit/controller/test_conflicts.py -q``
"""

from __future__ import annotations

import asyncio

import pytest

from scalable.controller.kube import Conflict, KubeError
from scalable.controller.prometheus import QueueMetrics
from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.scaling_loop import PollDeps, make_scaler, poll_once

SPEC = ScalableWorkflowSpec.model_validate({
    "clusterRef": {"name": "sim"},
    "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 10}],
    "scaling": {"mode": "Reactive", "cooldownSeconds": 0, "pollIntervalSeconds": 1},
})
BODY = {"metadata": {"name": "wf", "namespace": "ns"}, "spec": SPEC.model_dump(by_alias=True), "status": {}}


class _Racing:
    """A DaskCluster someone else writes to right after the poll reads it (once, or with an error)."""

    def __init__(self, replicas=2, race_to=None, error=None):
        self.replicas, self.version, self.race_to, self.error, self.writes = replicas, 1, race_to, error, []

    async def get(self, kind, namespace, name):
        obj = {"metadata": {"name": name, "resourceVersion": str(self.version)},
               "spec": {"worker": {"replicas": self.replicas, "spec": {"containers": [{"name": "worker"}]}}}}
        if self.race_to is not None:  # the other actor writes after our read
            self.replicas, self.version, self.race_to = self.race_to, self.version + 1, None
        return obj

    async def set_replicas(self, kind, namespace, name, replicas, resource_version, **extra):
        if self.error is not None:
            raise KubeError(self.error, "try again later")
        if resource_version != str(self.version):
            raise Conflict(409, "the object has been modified")
        self.replicas, self.version = replicas, self.version + 1
        self.writes.append(replicas)


def _deps(kube, queued):
    async def prometheus(*args):
        return QueueMetrics(queued=queued, processing=2, workers=None, source="prometheus")

    async def none(namespace):
        return []

    return PollDeps(kube=kube, prometheus=prometheus, autoscalers=none)


def test_a_decision_based_on_a_stale_read_is_refused_and_redone():
    kube = _Racing(replicas=2, race_to=9)  # we read 2; meanwhile someone sets 9
    scaler = make_scaler(SPEC)
    result = asyncio.run(poll_once(_deps(kube, queued=10), BODY, scaler, now=1000.0))
    assert kube.writes == [] and kube.replicas == 9, "the stale decision must not be applied"
    assert any(c["reason"] == "Conflict" for c in result.conditions)
    assert result.groups["default"]["desiredReplicas"] == 2
    result = asyncio.run(poll_once(_deps(kube, queued=0), BODY, scaler, now=1001.0))  # next poll: from 9, nothing queued
    assert kube.writes and kube.writes[-1] < 9 and kube.replicas >= 1, "decided again from the replicas it now reads"


@pytest.mark.parametrize("code", [429, 500, 503])
def test_throttled_or_failing_writes_change_nothing_and_raise_for_the_loop_to_retry(code):
    kube = _Racing(replicas=2, error=code)
    with pytest.raises(KubeError) as caught:
        asyncio.run(poll_once(_deps(kube, queued=10), BODY, make_scaler(SPEC), now=1000.0))
    assert caught.value.code == code
    assert kube.replicas == 2 and kube.writes == [] and kube.version == 1
    kube.error = None  # the API server recovers: the next poll applies a fresh decision
    asyncio.run(poll_once(_deps(kube, queued=10), BODY, make_scaler(SPEC), now=1001.0))
    assert kube.replicas > 2 and len(kube.writes) == 1
