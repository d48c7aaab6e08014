"""Issue 15, point 1, on the real API server with the operator running: a tenant's workflow
can neither make the operator fetch what the admin did not allow, nor read back what a URL
answered, nor read another namespace's series through its PromQL.

The "metadata endpoint" is a real HTTP server on loopback whose every answer carries a
secret; the PromQL tests run on a real Prometheus scraping two namespaces' schedulers.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from scalable.controller.prometheus_policy import DEFAULT_ALLOWED_URLS
from scalable.controller.scrape_labels import SCOPE_MATCHERS, scope_labels
from tests.integration.harness import (
    QueueExporter,
    condition,
    create,
    create_dask_cluster,
    get,
    merge_patch,
    operator_options,
    running_operator,
    scalable_workflow,
    wait_until,
)

SECRET = "AKIA-SECRET-ROLE-CREDENTIALS-42"


class Metadata:
    """Poses as a cloud metadata endpoint; ``mode`` says how it answers every path."""

    def __init__(self) -> None:
        self.mode = 404
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path == "/computeMetadata/v1/token":
            return web.Response(text=SECRET)
        if self.mode == "redirect":
            raise web.HTTPFound("/computeMetadata/v1/token")
        if self.mode == "error-json":
            return web.json_response({"status": "error", "errorType": "bad_data", "error": SECRET})
        return web.Response(status=404, text=SECRET)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _everything_said(api, namespace: str) -> str:
    """The workflow as `kubectl get -o json` shows it, and its Events."""
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    async with api.call_api("GET", version="v1", namespace=namespace, url="events") as response:
        events = [e.get("message", "") for e in response.json()["items"]]
    return json.dumps(wf) + json.dumps(events)


async def _prometheus_reason(api, namespace: str, reason: str):
    wf = await get(api, namespace, "ScalableWorkflow", "wf")
    found = condition(wf, "PrometheusAvailable")
    return wf if found and found["reason"] == reason else None


def _scaling(url: str | None = None, queries: dict[str, str] | None = None) -> dict:
    prometheus = {"timeoutSeconds": 1, **({"url": url} if url else {}), **({"queries": queries} if queries else {})}
    return {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0, "prometheus": prometheus}


async def test_a_metadata_url_outside_the_policy_is_never_fetched(kube_api, namespace, tmp_path, caplog):
    metadata = Metadata()
    url = await metadata.start()
    scheduler = await QueueExporter(queued=20, processing=2).start()  # the safe fallback: enough work for 4 workers
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(f"{url}/computeMetadata/v1")))
    try:
        # the chart's default policy: in-cluster Services only
        options = operator_options(namespace, tmp_path, scheduler_url=scheduler.url, prometheus_allowed_urls=DEFAULT_ALLOWED_URLS)
        async with running_operator(options):
            wf = await wait_until(lambda: _prometheus_reason(kube_api, namespace, "URLNotAllowed"), timeout=30,
                                  what="PrometheusAvailable=False URLNotAllowed")
            assert "allow-list" in condition(wf, "PrometheusAvailable")["message"]
            # the fallback is what Prometheus being down gives: the scheduler's own metrics
            await wait_until(lambda: _replicas_are(kube_api, namespace, 4), timeout=30, what="scaled from the scheduler")
        assert metadata.hits == [], "the operator fetched a URL its policy does not allow"
    finally:
        await metadata.stop()
        await scheduler.stop()


async def test_an_allowed_url_answer_is_not_read_back(kube_api, namespace, tmp_path, caplog):
    metadata = Metadata()
    url = await metadata.start()
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}]
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(url)))
    try:
        # an admin who allowed loopback: the operator fetches, but says only a fixed reason
        async with running_operator(operator_options(namespace, tmp_path, prometheus_allowed_urls=("127.0.0.1",))):
            await wait_until(lambda: _prometheus_reason(kube_api, namespace, "HTTPClientError"), timeout=30, what="HTTPClientError")
            said = await _everything_said(kube_api, namespace)
            assert SECRET not in said
            metadata.mode = "error-json"
            await wait_until(lambda: _prometheus_reason(kube_api, namespace, "QueryFailed"), timeout=30, what="QueryFailed")
            said = await _everything_said(kube_api, namespace)
            metadata.mode = "redirect"
            wf = await wait_until(lambda: _prometheus_reason(kube_api, namespace, "HTTPRedirect"), timeout=30, what="HTTPRedirect")
            said += await _everything_said(kube_api, namespace)
            assert condition(wf, "Scaling")["reason"] == "NoMetrics"  # no scheduler here: hold
        assert SECRET not in said and SECRET not in caplog.text
        assert "/computeMetadata/v1/token" not in metadata.hits, "a redirect was followed"
    finally:
        await metadata.stop()


async def test_promql_reads_only_the_workflows_own_cluster(kube_api, namespace, tmp_path, prometheus):
    # a busy cluster in another namespace, and this namespace's idle one, on one real Prometheus
    theirs = await QueueExporter(queued=977, processing=3).start()
    ours = await QueueExporter(queued=0, processing=0).start()
    prometheus.add_target("theirs", theirs.address, labels=scope_labels("other-team", "sim"))
    prometheus.add_target("ours", ours.address, labels=scope_labels(namespace, "sim"))
    await asyncio.to_thread(prometheus.wait_for, "count(dask_scheduler_workers)", lambda v: v == 2, 30)
    await create_dask_cluster(kube_api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}]
    unscoped = {
        "queued": 'sum(dask_scheduler_tasks{state="queued"})',
        "processing": f'sum(dask_scheduler_tasks{{state="processing",{SCOPE_MATCHERS}}})',
        # scoped on the left, everyone's on the right: every selector counts
        "workers": f'sum(dask_scheduler_workers{{{SCOPE_MATCHERS}}}) + 0 * sum(dask_scheduler_workers)',
    }
    await create(kube_api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=_scaling(queries=unscoped)))
    try:
        async with running_operator(operator_options(namespace, tmp_path, prometheus_url=prometheus.url)):
            wf = await wait_until(lambda: _prometheus_reason(kube_api, namespace, "QueryNotAllowed"), timeout=30,
                                  what="QueryNotAllowed")
            message = condition(wf, "PrometheusAvailable")["message"]
            assert message.startswith("queued:") and 'namespace="' + namespace + '"' in message, message
            assert "977" not in await _everything_said(kube_api, namespace)
            assert (await get(kube_api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["replicas"] == 1

            # a custom query that keeps the matchers still works, and sees this namespace's queue only
            scoped = {"queued": f'sum(dask_scheduler_tasks{{state=~"queued|waiting",{SCOPE_MATCHERS}}}) * 1',
                      "workers": f'count(dask_scheduler_workers{{{SCOPE_MATCHERS}}})'}
            ours.queued = 20
            await merge_patch(kube_api, namespace, "ScalableWorkflow", "wf", {"spec": {"scaling": {"prometheus": {"queries": scoped}}}})
            wf = await wait_until(lambda: _prometheus_reason(kube_api, namespace, "Queried"), timeout=30, what="Queried")
            await wait_until(lambda: _replicas_are(kube_api, namespace, 4), timeout=30, what="scaled from its own queue")
            wf = await get(kube_api, namespace, "ScalableWorkflow", "wf")
            assert wf["status"]["groups"][0]["lastDecision"]["queued"] == 20
    finally:
        await theirs.stop()
        await ours.stop()


async def _replicas_are(api, namespace: str, value: int) -> bool:
    return (await get(api, namespace, "DaskCluster", "sim"))["spec"]["worker"]["replicas"] == value
