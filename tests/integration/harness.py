"""Helpers for tests that run the operator against the real API server.

- :class:`QueueExporter`: a tiny HTTP server that exposes ``dask_scheduler_tasks`` and
  ``dask_scheduler_workers`` exactly as a Dask scheduler's ``/metrics`` does, with values the
  test sets. A real Prometheus scrapes it (so the operator's PromQL runs for real), and it
  doubles as "the scheduler" for the fallback path.
- :func:`running_operator`: the operator (``run_operator``, what ``scalable operator run``
  calls) in this process, on the test's event loop, stopped cleanly at the end.
- Builders for DaskCluster / DaskWorkerGroup / ScalableWorkflow objects and ``wait_until``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from scalable.controller.app import RunOptions, run_operator
from scalable.controller.prometheus_policy import DEFAULT_ALLOWED_URLS
from scalable.controller.runtime import OperatorConfig
from scalable.controller.scrape_labels import SCOPE_MATCHERS, scope_labels
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.store import RunStore

DASK = "kubernetes.dask.org/v1"
SCALABLE = "scalable.dev/v1alpha1"


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


class QueueExporter:
    """``scopes`` [(namespace, cluster), ...]: every sample once per scope, labelled as a
    scrape of that cluster's scheduler would be (for one exporter standing in for many
    clusters; scrape it with ``honor_labels``). Without, the target's labels say it."""

    def __init__(self, queued: float = 0, processing: float = 0, workers: float = 1,
                 scopes: list[tuple[str, str]] | None = None) -> None:
        self.queued, self.processing, self.workers = queued, processing, workers
        self.scopes = scopes
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.Response:
        q = self.queued
        samples = {
            "dask_scheduler_workers": [("idle", float(self.workers))],
            "dask_scheduler_tasks": [("queued", float(q)), ("waiting", 0.0), ("no-worker", 0.0),
                                     ("processing", float(self.processing)), ("memory", 0.0)],
        }
        helps = {"dask_scheduler_workers": "Number of workers known by scheduler",
                 "dask_scheduler_tasks": "Number of tasks known by scheduler"}
        scopes = [""] if self.scopes is None else [
            "," + ",".join(f'{k}="{v}"' for k, v in scope_labels(ns, cluster).items()) for ns, cluster in self.scopes]
        lines = []
        for name, values in samples.items():
            lines += [f"# HELP {name} {helps[name]}", f"# TYPE {name} gauge"]
            lines += [f'{name}{{state="{state}"{extra}}} {value}' for state, value in values for extra in scopes]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def start(self) -> "QueueExporter":
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def job_queries(job: str) -> dict[str, str]:
    """PromQL for a target scraped under ``job``, scoped as the operator demands: add the
    target with ``labels=scope_labels(namespace, cluster)``."""
    return {
        "queued": f'sum(dask_scheduler_tasks{{job="{job}",state=~"queued|no-worker|waiting",{SCOPE_MATCHERS}}})',
        "processing": f'sum(dask_scheduler_tasks{{job="{job}",state="processing",{SCOPE_MATCHERS}}})',
        "workers": f'sum(dask_scheduler_workers{{job="{job}",{SCOPE_MATCHERS}}})',
        "workerMemory": f'sum by (instance) (dask_worker_memory_bytes{{job="{job}-workers",{SCOPE_MATCHERS}}})',
    }


@dataclass
class OperatorHandle:
    task: asyncio.Task
    stop: asyncio.Event
    runtime: Any = None
    ports: dict[str, int] = field(default_factory=dict)
    elector: Any = None

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"


def operator_options(namespace: str, telemetry: Path, *, prometheus_url: str | None = None, scheduler_url: str | None = None,
                     identity: str = "op-1", lease_seconds: int = 6, sizing_interval: float = 300.0,
                     kubeconfig: str | None = None, prometheus_allowed_urls: tuple[str, ...] | None = None) -> RunOptions:
    # everything a test runs listens on loopback: allowed as an admin would list their Prometheus
    # (test_prometheus_tenancy passes the chart's default to see it refuse)
    allowed = (*DEFAULT_ALLOWED_URLS, "127.0.0.1") if prometheus_allowed_urls is None else tuple(prometheus_allowed_urls)
    policy = {"prometheus_allowed_urls": allowed}
    config = OperatorConfig(telemetry_path=str(telemetry), prometheus_url=prometheus_url, **policy,
                            scheduler_url_template=scheduler_url, sizing_interval_s=sizing_interval,
                            observe_interval_s=5.0, training_check_interval_s=2.0)
    return RunOptions(config=config, namespaces=[namespace], metrics_host="127.0.0.1", metrics_port=0,
                      ingest_host="127.0.0.1", ingest_port=0, lease_namespace=namespace, identity=identity,
                      lease_seconds=lease_seconds, kubeconfig=kubeconfig)


@contextlib.asynccontextmanager
async def running_operator(options: RunOptions, wait_leading: bool = True) -> AsyncIterator[OperatorHandle]:
    stop = asyncio.Event()
    handle = OperatorHandle(task=None, stop=stop)  # type: ignore[arg-type]

    def started(rt: Any, ports: dict[str, int], elector: Any) -> None:
        handle.runtime, handle.ports, handle.elector = rt, ports, elector

    handle.task = asyncio.create_task(run_operator(options, stop, started))

    async def up() -> bool:
        if handle.task.done():
            handle.task.result()
        return handle.elector is not None and (handle.elector.leading or not wait_leading)

    try:
        await wait_until(up, timeout=30, what="operator started")
        yield handle
    finally:
        stop.set()
        try:
            await asyncio.wait_for(handle.task, timeout=30)
        except asyncio.CancelledError:
            pass


async def create(api: Any, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    version = obj["apiVersion"]
    plural = obj["kind"].lower() + "s"
    async with api.call_api("POST", version=version, namespace=namespace, url=plural, content=json.dumps(obj),
                            headers={"Content-Type": "application/json"}) as response:
        return response.json()


async def get(api: Any, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    version = DASK if kind.startswith("Dask") else SCALABLE
    async with api.call_api("GET", version=version, namespace=namespace, url=f"{kind.lower()}s/{name}",
                            raise_for_status=False) as response:
        return response.json() if response.status_code == 200 else None


async def merge_patch(api: Any, namespace: str, kind: str, name: str, body: dict[str, Any], subresource: str = "") -> dict[str, Any]:
    version = DASK if kind.startswith("Dask") else SCALABLE
    url = f"{kind.lower()}s/{name}" + (f"/{subresource}" if subresource else "")
    async with api.call_api("PATCH", version=version, namespace=namespace, url=url, content=json.dumps(body),
                            headers={"Content-Type": "application/merge-patch+json"}) as response:
        return response.json()


async def delete(api: Any, namespace: str, kind: str, name: str) -> None:
    version = DASK if kind.startswith("Dask") else SCALABLE
    async with api.call_api("DELETE", version=version, namespace=namespace, url=f"{kind.lower()}s/{name}", raise_for_status=False):
        pass


def pod_spec(container: str = "worker") -> dict[str, Any]:
    return {"containers": [{"name": container, "image": "ghcr.io/dask/dask:latest", "args": ["dask", "worker"]}]}


def dask_cluster(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": DASK, "kind": "DaskCluster", "metadata": {"name": name},
        "spec": {
            "worker": {"replicas": replicas, "spec": pod_spec()},
            "scheduler": {"spec": {"containers": [{"name": "scheduler", "image": "ghcr.io/dask/dask:latest"}]},
                          "service": {"ports": [{"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"}]}},
        },
    }


def dask_worker_group(name: str, cluster: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": DASK, "kind": "DaskWorkerGroup", "metadata": {"name": name},
            "spec": {"cluster": cluster, "worker": {"replicas": replicas, "spec": pod_spec()}}}


async def create_dask_cluster(api: Any, namespace: str, name: str, replicas: int = 1) -> None:
    """A DaskCluster and its ``<name>-default`` DaskWorkerGroup (dask-kubernetes' controller
    would create the latter; there is none on the test control plane)."""
    await create(api, namespace, dask_cluster(name, replicas))
    await create(api, namespace, dask_worker_group(f"{name}-default", name, replicas))


def scalable_workflow(name: str, cluster: str, *, groups: list[dict[str, Any]] | None = None, scaling: dict[str, Any] | None = None,
                      advisor_model: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "clusterRef": {"name": cluster},
        "workerGroups": groups or [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 6}],
        "scaling": scaling or {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0},
    }
    if advisor_model:
        spec["advisorModelRef"] = {"name": advisor_model}
    return {"apiVersion": SCALABLE, "kind": "ScalableWorkflow", "metadata": {"name": name}, "spec": spec}


async def create_workflow_without_prometheus(api: Any, namespace: str, *, max_workers: int) -> None:
    """A DaskCluster ``sim`` at one replica and a Reactive ScalableWorkflow ``wf`` on it whose
    Prometheus URL is a port nobody listens on: the operator must fall back to the scheduler."""
    from tests.support.testenv import free_port

    await create_dask_cluster(api, namespace, "sim", replicas=1)
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": max_workers}]
    scaling = {"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0,
               "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeoutSeconds": 1}}
    await create(api, namespace, scalable_workflow("wf", "sim", groups=groups, scaling=scaling))


def write_history(runs_dir: Path, task: str = "simulate", n: int = 30, peak_gib: float = 3.0, cpu_seconds: float = 20.0,
                  duration_s: float = 10.0, workflow: str = "wf", start: float = 1.7e9, spread: float = 0.1) -> None:
    """``n`` task observations of ``task`` with peaks around ``peak_gib`` GiB."""
    store = RunStore(runs_dir)
    with store.open_run(workflow=workflow, source="test") as run:
        for i in range(n):
            wobble = 1.0 + spread * ((i * 7919) % 11 - 5) / 5
            run.append(TaskObservation(
                run_id=run.run_id, task=task, tag="default", input_features={"size": 100 + i % 5},
                submitted_at=start + i * 60, started_at=start + i * 60, finished_at=start + i * 60 + duration_s * wobble,
                duration_s=duration_s * wobble, cpu_seconds=cpu_seconds * wobble, peak_memory_bytes=int(peak_gib * wobble * 2**30),
            ))


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return None
