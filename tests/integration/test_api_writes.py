"""What the operator asks of the API server, counted by the API server itself.

``apiserver_request_total`` on the real kube-apiserver's ``/metrics`` counts every request by
verb, resource and subresource. With N workflows holding steady (nothing to scale, nothing to
size), a poll has nothing new to say: the test asserts that the status PATCHes stop, that the
DaskAutoscaler LIST is one per namespace per cache period (not one per workflow per poll), that
the Dask objects are read once per poll (not twice), and that nothing is refused with a 429.
Then the queue moves and the writes must come back: suppression that also hid real changes
would pass the first half.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time

import httpx

from prometheus_client.parser import text_string_to_metric_families

from scalable.controller.runtime import AUTOSCALER_LIST_MAX_AGE_S
from scalable.controller.status_writes import HEARTBEAT_INTERVAL_S
from scalable.controller.scrape_labels import scope_labels
from tests.integration.harness import (
    QueueExporter,
    condition,
    create,
    create_dask_cluster,
    get,
    job_queries,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
)

WORKFLOWS = 12
WINDOW_S = 12.0
POLL_S = 1
OPERATOR_RESOURCES = {"scalableworkflows", "advisormodels", "daskclusters", "daskworkergroups", "daskautoscalers", "pods",
                      "events", "leases"}


async def _apiserver_requests(cluster) -> dict[tuple[str, str, str, str], float]:
    """apiserver_request_total summed by (verb, resource, subresource, code)."""
    token = cluster.admin_token_file.read_text().strip()
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(cluster.ca_file))) as client:
        response = await client.get(f"{cluster.server}/metrics", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        text = response.text
    out: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""), labels.get("code", ""))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _delta(before, after, verb, resource, subresource="") -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k[:3] == (verb, resource, subresource))


def _polls(handle) -> float:
    return handle.runtime.metrics.registry.get_sample_value("scalable_reconcile_total", {"kind": "ScalableWorkflow"}) or 0.0


async def _all_holding(api, namespace) -> bool:
    for i in range(WORKFLOWS):
        wf = await get(api, namespace, "ScalableWorkflow", f"wf-{i}")
        scaling = condition(wf, "Scaling")
        groups = ((wf or {}).get("status") or {}).get("groups") or []
        if not (scaling and scaling["reason"] == "Active" and groups and (groups[0].get("lastDecision") or {}).get("action") == "hold"):
            return False
    return True


async def test_steady_workflows_write_nothing_and_read_once_per_poll(kube_cluster, kube_api, namespace, tmp_path, prometheus):
    exporter = await QueueExporter(queued=0, processing=0, workers=1).start()
    for i in range(WORKFLOWS):  # the same exporter as each workflow's own cluster (queries are scoped to it)
        prometheus.add_target(f"q-{i}", exporter.address, labels=scope_labels(namespace, f"sim-{i}"))
    await asyncio.to_thread(prometheus.wait_for, 'count(dask_scheduler_tasks{state="queued"})',
                            lambda v: v is not None and v >= WORKFLOWS, 60)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}]
    for i in range(WORKFLOWS):
        await create_dask_cluster(kube_api, namespace, f"sim-{i}", replicas=1)
        scaling = {"mode": "Reactive", "pollIntervalSeconds": POLL_S, "cooldownSeconds": 0,
                   "prometheus": {"queries": job_queries(f"q-{i}"), "timeoutSeconds": 2}}
        await create(kube_api, namespace, scalable_workflow(f"wf-{i}", f"sim-{i}", groups=groups, scaling=scaling))
    try:
        async with running_operator(operator_options(namespace, tmp_path / "telemetry", prometheus_url=prometheus.url)) as op:
            await wait_until(lambda: _all_holding(kube_api, namespace), timeout=60, interval=1, what="every workflow holding")
            await asyncio.sleep(2 * POLL_S)  # the polls that wrote "holding" for the first time are done

            # the operator's own DaskAutoscaler LISTs, counted at its client: the API server's
            # counter also has the namespace controller's, which LISTs every resource type of each
            # namespace an earlier test left to be deleted
            lists: list[float] = []
            kube = op.runtime.kube
            real_list = kube.list

            async def counted_list(kind, namespace=None, label_selector=None):
                if kind == "DaskAutoscaler":
                    lists.append(time.monotonic())
                return await real_list(kind, namespace, label_selector)

            kube.list = counted_list
            before, polls_before, started = await _apiserver_requests(kube_cluster), _polls(op), time.monotonic()
            await asyncio.sleep(WINDOW_S)
            after, polls, elapsed = await _apiserver_requests(kube_cluster), _polls(op) - polls_before, time.monotonic() - started
            kube.list = real_list

            status_patches = _delta(before, after, "PATCH", "scalableworkflows", "status")
            autoscaler_lists = float(sum(1 for t in lists if t <= started + elapsed))
            cluster_gets = _delta(before, after, "GET", "daskclusters")
            # 429s of the operator's own resources (the controller manager's watches of freshly
            # installed CRDs get "storage is (re)initializing" now and then: not ours)
            refused_by = {k: v - before.get(k, 0.0) for k, v in after.items() if k[3] == "429" and v > before.get(k, 0.0)}
            refused = sum(n for k, n in refused_by.items() if k[1] in OPERATOR_RESOURCES)
            total = sum(v - before.get(k, 0.0) for k, v in after.items())
            print(f"\n{WORKFLOWS} workflows, {POLL_S} s polls, {elapsed:.1f} s: {polls:.0f} polls; API requests "
                  f"{total / elapsed:.1f}/s in all, status PATCH {status_patches / elapsed:.2f}/s, "
                  f"DaskAutoscaler LIST {autoscaler_lists / elapsed:.2f}/s, DaskCluster GET {cluster_gets / elapsed:.2f}/s, "
                  f"429s {refused:.0f} (all: {refused_by})")
            busiest = sorted(((_delta(before, after, *k[:3]), k[:3]) for k in set(after)), reverse=True)
            print("by verb, resource, subresource (per s):",
                  ", ".join(f"{' '.join(filter(None, k))} {n / elapsed:.2f}" for n, k in dict.fromkeys(busiest) if n > 0))

            assert polls >= WORKFLOWS * elapsed / POLL_S * 0.6, f"the loops were not polling ({polls:.0f} polls)"
            # nothing changed: at most each workflow's heartbeat (a hold's time, once a minute) may
            # fall in the window (in CI the first "holding" writes spread over up to a minute of
            # startup); the old code wrote once per poll (131 in 135 polls)
            heartbeats = WORKFLOWS * math.ceil(elapsed / HEARTBEAT_INTERVAL_S)
            assert status_patches <= heartbeats, f"{status_patches:.0f} status PATCHes while nothing changed ({polls:.0f} polls)"
            assert status_patches <= 0.1 * polls
            assert autoscaler_lists <= math.ceil(elapsed / AUTOSCALER_LIST_MAX_AGE_S) + 1, (
                f"{autoscaler_lists:.0f} DaskAutoscaler LISTs in {elapsed:.0f} s for one namespace")
            assert cluster_gets <= polls * 1.1 + WORKFLOWS, f"{cluster_gets:.0f} DaskCluster GETs for {polls:.0f} polls"
            assert refused == 0

            # the queue moves: decisions change, and so must the status and the replicas
            exporter.queued, exporter.processing = 40, 4
            before = await _apiserver_requests(kube_cluster)

            async def scaled_up() -> bool:
                # the scale-up is in the status as its lastScaleTime (the next poll, at the
                # maximum, decides "hold" again within a second: lastDecision alone would race)
                for i in range(WORKFLOWS):
                    wf = await get(kube_api, namespace, "ScalableWorkflow", f"wf-{i}")
                    groups = ((wf or {}).get("status") or {}).get("groups") or []
                    if not groups or not groups[0].get("lastScaleTime") or (groups[0].get("currentReplicas") or 0) <= 1:
                        return False
                return True

            await wait_until(scaled_up, timeout=30, interval=0.5, what="every workflow's status saying it scaled up")
            after = await _apiserver_requests(kube_cluster)
            assert _delta(before, after, "PATCH", "scalableworkflows", "status") >= WORKFLOWS
            assert _delta(before, after, "PATCH", "daskclusters") >= WORKFLOWS
            for i in range(WORKFLOWS):
                cluster = await get(kube_api, namespace, "DaskCluster", f"sim-{i}")
                assert cluster["spec"]["worker"]["replicas"] > 1
    finally:
        await exporter.stop()
