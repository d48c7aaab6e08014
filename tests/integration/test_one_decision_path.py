"""One scaling decision path: the session and the operator decide alike on the same sequence.

The same settings are written once as scalable.yaml and once as a ScalableWorkflow; both map
onto one ScalerConfig. The same sequence of queue states is then fed to

- the session (``ScalableSession.scale_once``) on a real LocalCluster, whose worker count
  is what its workers really are, and
- the operator's poll (``poll_once``) against the real API server, whose worker count is the
  DaskCluster's ``spec.worker.replicas`` it patches,

and every decision (action, from, to, mode, reason, predicted load, confidence) must be the
same, in reactive mode and in predictive mode with one real LearnedAdvisor.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scalable.advising.learned_advisor import LearnedAdvisor
from scalable.controller.kube import KubeClient
from scalable.controller.prometheus import QueueMetrics
from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.scaling_loop import PollDeps, make_scaler, poll_once
from scalable.session.manifest import Manifest
from scalable.session.session import ScalableSession
from tests.integration.harness import create, create_dask_cluster, get, scalable_workflow, write_history

MIN, MAX, COOLDOWN, STARTUP = 1, 4, 20, 10
# (seconds from start, queued, processing): a wave that rises, stays, drains, and comes back
SEQUENCE = [(0, 0, 1), (5, 6, 1), (10, 12, 2), (26, 12, 4), (31, 3, 4), (40, 0, 2), (52, 0, 0), (60, 0, 0),
            (61, 9, 1), (75, 0, 0), (100, 0, 0), (121, 0, 0), (142, 0, 0), (150, 2, 1)]


def _manifest(mode: str) -> Manifest:
    return Manifest.model_validate({
        "workflow": "wf", "target": "local",
        "worker_groups": [{"tag": "sim", "workers": {"min": MIN, "max": MAX}, "threads": 1, "memory": "1Gi"}],
        "scaling": {"mode": mode, "advisor": "none", "cooldown_seconds": COOLDOWN, "worker_startup_seconds": STARTUP,
                    "scale_up_threshold": 0.8, "scale_down_threshold": 0.3, "max_scale_down_step": 1},
        "telemetry": {"enabled": False},
    })


def _workflow(mode: str) -> dict:
    groups = [{"name": "default", "tag": "sim", "task": "simulate", "inputFeatures": {"size": "100"},
               "minWorkers": MIN, "maxWorkers": MAX}]
    scaling = {"mode": mode.capitalize(), "cooldownSeconds": COOLDOWN, "workerStartupSeconds": STARTUP}
    return scalable_workflow("wf", "sim", groups=groups, scaling=scaling)


def _snapshot(queued: int, processing: int, workers: int) -> dict:
    """What the operator's poll builds from its metrics and the DaskCluster (one thread per worker)."""
    return {"sim": {"queued": queued, "processing": processing, "workers": workers, "threads_per_worker": 1,
                    "task": "simulate", "input_features": {"size": 100}}}


def _session_decisions(manifest: Manifest, advisor, start: float) -> list:
    session = ScalableSession(manifest, advisor=advisor)
    decisions = []
    with session:
        client = session.client.dask
        for offset, queued, processing in SEQUENCE:
            workers = session.snapshot()[0]["sim"]["workers"]
            decision = session.scale_once(now=start + offset, snapshot=_snapshot(queued, processing, workers))
            decisions.append(decision.tags["sim"])
            expected = decision.tags["sim"].to_workers
            deadline = time.monotonic() + 60
            # the next snapshot counts workers that really joined or left
            while len(client.nthreads()) != expected or session.snapshot()[0]["sim"]["workers"] != expected:
                assert time.monotonic() < deadline, f"the LocalCluster did not settle: {len(client.nthreads())} workers joined, {expected} wanted"
                time.sleep(0.1)
    return decisions


async def _operator_decisions(kube_api, namespace: str, body: dict, advisor, start: float) -> list:
    kube = KubeClient(kube_api)
    figures: dict = {}

    async def metrics(ns, cluster, spec, group):
        return QueueMetrics(figures["queued"], figures["processing"], None, "test")

    deps = PollDeps(kube=kube, prometheus=metrics, autoscalers=lambda ns: asyncio.sleep(0, []))
    spec = ScalableWorkflowSpec.model_validate(body["spec"])
    scaler = make_scaler(spec, advisor)
    history, decisions = None, []
    for offset, queued, processing in SEQUENCE:
        figures.update(queued=queued, processing=processing)
        current = await get(kube_api, namespace, "ScalableWorkflow", "wf")
        result = await poll_once(deps, current, scaler, start + offset, history)
        history = result.history
        (decision,) = result.decisions
        decisions.append(decision)
    return decisions


@pytest.mark.parametrize("mode", ["reactive", "predictive"])
async def test_the_session_and_the_operator_make_every_decision_alike(kube_api, namespace, tmp_path, mode):
    manifest = _manifest(mode)
    body = _workflow(mode)
    spec = ScalableWorkflowSpec.model_validate(body["spec"])
    assert manifest.scaler_config("kubernetes") == spec.scaler_config(), "one configuration, both ways"

    advisor = None
    if mode == "predictive":
        write_history(tmp_path / "runs", n=200, duration_s=10.0)
        advisor = LearnedAdvisor.from_history(tmp_path / "runs")
    start = time.time()
    session = await asyncio.to_thread(_session_decisions, manifest, advisor, start)

    await create_dask_cluster(kube_api, namespace, "sim", replicas=MIN)
    await create(kube_api, namespace, body)
    operator = await _operator_decisions(kube_api, namespace, body, advisor, start)

    def shown(decisions):
        return [(d.action, d.from_workers, d.to_workers, d.mode, d.reason, d.predicted_load, d.confidence) for d in decisions]

    assert shown(operator) == shown(session)
    actions = [d.action for d in session]
    assert {"scale_up", "scale_down", "hold"} <= set(actions), actions
    assert any("cooldown" in d.reason for d in session), "the sequence crosses a cooldown"
    assert any("does not hold back a scale-up" in d.reason for d in session), "a scale-up right after a scale-down"
    if mode == "predictive":
        assert any(d.mode == "predictive" for d in session), [d.reason for d in session]
