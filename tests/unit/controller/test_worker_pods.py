"""WorkersScheduled: worker pods the scheduler or the kubelet refused are named in a condition,
with the scheduler's words and the limits sizing wrote; a failed read is Unknown, never an error.

The pod documents are shaped like the ones the real node produced for a worker sized above the
node's memory (tests/e2e/test_unschedulable_workers.py).

Rerun: ``pytest tests/unit/controller/test_worker_pods.py -q``
"""

from __future__ import annotations

import asyncio

from scalable.controller.conditions import merge_conditions
from scalable.controller.kube import KubeError
from scalable.controller.worker_pods import (
    FORBIDDEN_RETRY_S,
    WorkerPods,
    WorkerPodsCheck,
    refusal,
    scheduled_condition,
    summarise,
    turned_false,
    worker_selector,
)

#: kube-scheduler v1.34's words for the 41780Mi worker on the 24 GiB test node
INSUFFICIENT = ("0/1 nodes are available: 1 Insufficient memory. no new claims to deallocate, preemption: "
                "0/1 nodes are available: 1 Preemption is not helpful for scheduling.")


def _pod(name, *, memory="64Gi", cpu="250m", phase="Pending", conditions=(), waiting=None, reason=None, deleting=False):
    containers = [{"name": "worker", "resources": {"limits": {"cpu": cpu, "memory": memory},
                                                  "requests": {"cpu": cpu, "memory": memory}}}]
    status = {"phase": phase, "conditions": list(conditions)}
    if waiting:
        status["containerStatuses"] = [{"name": "worker", "ready": False, "state": {"waiting": waiting}}]
    if reason:
        status["reason"], status["message"] = reason
    metadata = {"name": name, "labels": {"dask.org/cluster-name": "sim", "dask.org/component": "worker"}}
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": metadata, "spec": {"containers": [{"name": "sidecar"}, *containers]}, "status": status}


def _unschedulable(name, **kw):
    return _pod(name, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": INSUFFICIENT}], **kw)


def _running(name, **kw):
    return _pod(name, phase="Running", conditions=[{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}], **kw)


def test_the_selector_is_dask_kubernetes_worker_labels():
    assert worker_selector("sim") == "dask.org/cluster-name=sim,dask.org/component=worker"


def test_an_unschedulable_pod_is_refused_with_the_scheduler_message():
    assert refusal(_unschedulable("w1")) == ("Unschedulable", INSUFFICIENT)


def test_a_pod_not_yet_scheduled_is_not_refused():
    assert refusal(_pod("w1")) is None
    gated = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": "gated"}]
    assert refusal(_pod("w1", conditions=gated)) is None
    assert refusal(_pod("w1", waiting={"reason": "ContainerCreating"})) is None
    assert refusal(_running("w1")) is None


def test_a_container_the_kubelet_cannot_create_is_refused():
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "creds" not found'}
    assert refusal(_pod("w1", waiting=waiting)) == ("CreateContainerConfigError", "container 'worker': secret \"creds\" not found")
    assert refusal(_pod("w1", waiting={"reason": "RunContainerError"})) == ("RunContainerError", "container 'worker'")


def test_a_pod_the_kubelet_does_not_admit_is_refused():
    pod = _pod("w1", phase="Failed", reason=("OutOfmemory", "Pod Node didn't have enough resource: memory"))
    assert refusal(pod) == ("OutOfmemory", "Pod Node didn't have enough resource: memory")


def test_the_condition_names_the_pods_the_message_and_the_limits_sizing_wrote():
    pods = summarise([_unschedulable("sim-default-worker-b"), _unschedulable("sim-default-worker-a"), _running("w0", memory="1Gi")],
                     {"worker"})
    condition = scheduled_condition(pods)
    assert condition["type"] == "WorkersScheduled" and condition["status"] is False
    assert condition["reason"] == "Unschedulable"
    message = condition["message"]
    # identical refusals are one entry, in name order; the worker container's limits, not the sidecar's
    assert message.startswith("2 of 3 worker pods refused: sim-default-worker-a, sim-default-worker-b "
                              "(memory 64Gi, cpu 250m): Unschedulable: 0/1 nodes are available: 1 Insufficient memory.")
    assert "resourcePolicy.maxAllowed" in message


def test_different_refusals_are_listed_apart_and_the_reason_says_so():
    config_error = _pod("w2", memory="1Gi", waiting={"reason": "CreateContainerConfigError", "message": "bad"})
    condition = scheduled_condition(summarise([_unschedulable("w1"), config_error], {"worker"}))
    assert condition["reason"] == "WorkersRefused"
    assert "w1 (memory 64Gi, cpu 250m): Unschedulable" in condition["message"]
    assert "w2 (memory 1Gi, cpu 250m): CreateContainerConfigError: container 'worker': bad" in condition["message"]


def test_no_hint_about_sizing_when_the_refusal_is_not_about_size():
    taint = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
              "message": "0/1 nodes are available: 1 node(s) had untolerated taint {gpu: true}."}]
    condition = scheduled_condition(summarise([_pod("w1", conditions=taint)], {"worker"}))
    assert condition["status"] is False and "maxAllowed" not in condition["message"]


def test_scheduled_pods_and_pods_being_deleted():
    pods = summarise([_running("w1"), _pod("w2"), _unschedulable("w3", deleting=True)], {"worker"})
    assert pods == WorkerPods(total=2, scheduled=1)
    condition = scheduled_condition(pods)
    assert condition == {"type": "WorkersScheduled", "status": True, "reason": "Scheduled",
                         "message": "1 of 2 worker pods scheduled, 1 not yet (none refused)"}
    assert scheduled_condition(summarise([], {"worker"}))["reason"] == "NoWorkerPods"


def test_a_failed_read_is_unknown_with_its_reason():
    condition = scheduled_condition(WorkerPods(error="HTTP 403: pods is forbidden", error_reason="Forbidden"))
    assert condition == {"type": "WorkersScheduled", "status": "Unknown", "reason": "Forbidden",
                         "message": "cannot list the worker pods: HTTP 403: pods is forbidden"}
    # the status it makes is one the conditions module accepts
    assert merge_conditions([], [condition], now=0)[0]["status"] == "Unknown"


def test_the_message_stays_bounded_with_many_pods():
    many = [_unschedulable(f"w{i:04d}", memory=f"{64 + i}Gi") for i in range(500)]
    message = scheduled_condition(summarise(many, {"worker"}))["message"]
    assert len(message) <= 2000
    assert message.startswith("500 of 500 worker pods refused: w0000 (memory 64Gi")
    assert message.endswith("which never saw it)"), "the hint survives the cut"


def test_turned_false_only_on_the_transition():
    false = scheduled_condition(summarise([_unschedulable("w1")], {"worker"}))
    true = scheduled_condition(summarise([_running("w1")], {"worker"}))
    assert turned_false(None, false)
    assert turned_false(merge_conditions([], [true], now=0), false)
    assert not turned_false(merge_conditions([], [false], now=0), false), "a restarted operator does not warn again"
    assert not turned_false(None, true)


class _RefusingKube:
    """A KubeClient whose list is refused, counting the requests."""

    def __init__(self, code):
        self.code, self.calls = code, []

    async def list(self, kind, namespace, label_selector=None):
        self.calls.append((kind, namespace, label_selector))
        raise KubeError(self.code, 'pods is forbidden: User "system:serviceaccount:s:op" cannot list resource "pods"')


def test_a_refused_read_is_unknown_and_a_403_is_not_asked_again_at_once():
    kube = _RefusingKube(403)
    clock = [1000.0]
    check = WorkerPodsCheck(kube, clock=lambda: clock[0])
    first = asyncio.run(check.condition("team", "sim", {"worker"}))
    assert first["status"] == "Unknown" and first["reason"] == "Forbidden"
    assert "needs `list` on pods" in first["message"]
    assert asyncio.run(check.condition("team", "sim", {"worker"})) == first
    assert kube.calls == [("Pod", "team", "dask.org/cluster-name=sim,dask.org/component=worker")]

    clock[0] += FORBIDDEN_RETRY_S + 1
    asyncio.run(check.condition("team", "sim", {"worker"}))
    assert len(kube.calls) == 2, "asked again after the back-off"

    server_error = WorkerPodsCheck(_RefusingKube(500))
    condition = asyncio.run(server_error.condition("team", "sim", {"worker"}))
    assert condition["status"] == "Unknown" and condition["reason"] == "PodsUnreadable"


def _oom_killed(name, *, memory="1Gi", group="sim-default", current=False):
    pod = _running(name, memory=memory)
    pod["metadata"]["labels"]["dask.org/workergroup-name"] = group
    ended = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    pod["status"]["containerStatuses"] = [{"name": "worker", "restartCount": 1, **(
        {"state": ended} if current else {"state": {"running": {}}, "lastState": ended})}]
    return pod


def test_an_oom_killed_worker_is_found_with_the_limit_it_had_and_its_group():
    pods = summarise([_oom_killed("w1", memory="1Gi"), _oom_killed("w2", memory="1536Mi", current=True),
                      _oom_killed("w3", memory="8Gi", group="sim-big"), _running("w4")], {"worker"})
    kill = pods.largest_oom_kill("sim-default")
    assert (kill.pod, kill.limit_bytes) == ("w2", 1536 * 2**20)
    assert pods.largest_oom_kill("sim-big").limit_bytes == 8 * 2**30
    assert pods.largest_oom_kill("sim-other") is None


def test_a_sidecar_killed_for_memory_or_a_worker_without_a_limit_says_nothing():
    sidecar = _oom_killed("w1")
    sidecar["status"]["containerStatuses"][0]["name"] = "sidecar"
    no_limit = _oom_killed("w2")
    no_limit["spec"]["containers"][1]["resources"] = {}
    assert summarise([sidecar, no_limit], {"worker"}).oom_kills == ()
