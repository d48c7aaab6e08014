"""Start one operator process: HTTP servers, leader election, then kopf while leading.

Order matters: ``/healthz`` and ``/metrics`` answer from the start (a standby replica is alive);
``/readyz`` turns ready only while this replica leads and kopf has started, so the Service that
fronts the ingestion endpoint sends clients to the replica that acts. Losing the Lease stops
kopf and ends the process with exit code 1; Kubernetes restarts it as a standby.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from scalable.controller.handlers import build_registry
from scalable.controller.kube import KubeClient
from scalable.controller.leader import LeaderElector
from scalable.controller.metrics import health_app
from scalable.controller.prometheus_policy import UrlPolicy, guarded_session
from scalable.controller.runtime import OperatorConfig, Runtime
from scalable.controller.training import AdvisorProvider, Trainer

__all__ = ["RunOptions", "run_operator"]

log = logging.getLogger("scalable.controller")


@dataclass
class RunOptions:
    config: OperatorConfig
    namespaces: list[str]
    clusterwide: bool = False
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 8080
    ingest_host: str = "0.0.0.0"
    ingest_port: int | None = 8081
    ingest_tls_cert: str | None = None
    ingest_tls_key: str | None = None
    ingest_audiences: list[str] | None = None
    lease_namespace: str = "scalable-system"
    lease_name: str = "scalable-operator"
    identity: str | None = None
    kubeconfig: str | None = None
    lease_seconds: int = 15


async def _serve(app: web.Application, host: str, port: int, ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


async def run_operator(options: RunOptions, stop: asyncio.Event | None = None, started: Any = None) -> int:
    """Run until ``stop`` is set (0) or the Lease is lost (1). ``started`` gets the runtime and ports."""
    if options.kubeconfig:
        os.environ["KUBECONFIG"] = options.kubeconfig
    if not options.clusterwide and not options.namespaces:
        raise ValueError("give --namespace at least once, or --all-namespaces")
    stop = stop or asyncio.Event()
    kube = await KubeClient.connect(options.kubeconfig)
    # Prometheus and scheduler URLs are the tenants': names are checked again when resolved
    policy = UrlPolicy(options.config.prometheus_allowed_urls, options.config.prometheus_url)
    rt = Runtime(options.config, kube, guarded_session(policy))
    rt.advisors = AdvisorProvider(kube, rt.root)
    rt.trainer = Trainer(options.config.training_workers)
    identity = options.identity or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(kube, options.lease_namespace, options.lease_name, identity, lease_s=options.lease_seconds,
                            renew_s=max(1.0, options.lease_seconds / 3), retry_s=max(0.5, options.lease_seconds / 7))
    kopf_ready = asyncio.Event()
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    lost = asyncio.Event()
    hold_task: asyncio.Task | None = None
    try:
        if options.metrics_port is not None:
            runner, ports["metrics"] = await _serve(
                health_app(rt.metrics, lambda: elector.leading and kopf_ready.is_set()), options.metrics_host, options.metrics_port)
            runners.append(runner)
        if options.ingest_port is not None:
            from scalable.controller.ingest import ingest_app
            from scalable.controller.ingest_server import serve_ingest

            context = None
            if options.ingest_tls_cert:
                # callers send ServiceAccount tokens: serve them over TLS unless a mesh does
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(options.ingest_tls_cert, options.ingest_tls_key)
            runner, ports["ingest"] = await serve_ingest(ingest_app(rt, audiences=options.ingest_audiences),
                                                         options.ingest_host, options.ingest_port, context)
            runners.append(runner)
        if started is not None:
            started(rt, ports, elector)
        if not await elector.acquire(stop):
            return 0
        rt.metrics.leader.set(1)
        hold_task = asyncio.create_task(elector.hold(lost))
        kopf_stop = asyncio.Event()

        async def stop_kopf_when_done() -> None:
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            kopf_stop.set()

        stopper = asyncio.create_task(stop_kopf_when_done())
        try:
            await kopf.operator(
                registry=build_registry(),
                memo=kopf.Memo(runtime=rt),
                standalone=True,
                clusterwide=options.clusterwide,
                namespaces=options.namespaces,
                stop_flag=kopf_stop,
                ready_flag=kopf_ready,
            )
        finally:
            stopper.cancel()
        return 1 if lost.is_set() else 0
    finally:
        rt.metrics.leader.set(0)
        if hold_task is not None:
            hold_task.cancel()
        if not lost.is_set():
            await elector.release()
        for runner in runners:
            await runner.cleanup()
        await rt.close()
