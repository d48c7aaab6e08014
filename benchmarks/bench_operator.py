"""One operator process reconciling N ScalableWorkflows (default 500, 15 s polls) against the
real API server and a real Prometheus: its CPU and memory, and the decision latency from a
queue change to the replica patch.

    python benchmarks/bench_operator.py [--workflows 500] [--poll 15] [--steady 120] [--per-workflow]

``--per-workflow`` asks Prometheus once per workflow and metric (the path before grouped
queries); without it the operator's default grouped path runs. Run both for the comparison.

Setup: the local control plane (tests/support), the CRDs, one namespace with N DaskClusters
(+ their ``-default`` DaskWorkerGroups) and N ScalableWorkflows, a history of one task so every
workflow is sized once, Prometheus scraping a queue exporter that all workflows query.
Measured: the operator runs as ``scalable operator run`` in its own process; CPU seconds and
RSS are sampled with psutil over a steady window (every workflow polling, holding); then the
exporter's queue jumps at T0 and, for every DaskCluster, the time its replicas change is taken
from a 0.5 s poll of the API server. Latency includes Prometheus' 1 s scrape interval and
the poll phase (a workflow decides at its next poll, at most one interval later).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_result  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    QueueExporter,
    create,
    dask_cluster,
    dask_worker_group,
    scalable_workflow,
    write_history,
)
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.kube import dask_kubernetes_crd_files, install_crds, repo_crd_files  # noqa: E402
from tests.support.prometheus import PrometheusServer  # noqa: E402
from tests.support.testenv import free_ports, spawn, terminate  # noqa: E402


async def _replicas(api, namespace):
    async with api.call_api("GET", version="kubernetes.dask.org/v1", namespace=namespace, url="daskclusters") as r:
        return {item["metadata"]["name"]: item["spec"]["worker"]["replicas"] for item in r.json()["items"]}


async def _reconciled(api, namespace):
    async with api.call_api("GET", version="scalable.dev/v1alpha1", namespace=namespace, url="scalableworkflows") as r:
        return sum(1 for item in r.json()["items"] if ((item.get("status") or {}).get("groups") or [{}])[0].get("lastDecision"))


async def _prometheus_queries(url: str) -> float:
    """Instant queries the Prometheus has answered, from its own /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "prometheus_http_requests"
               for sample in family.samples if sample.name.endswith("_total") and sample.labels.get("handler") == "/api/v1/query")


async def _apiserver_requests(cp) -> dict[str, float]:
    """Requests the API server has served, by verb, from its own /metrics (admin token)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(verify=str(cp.ca_file), headers={"Authorization": f"Bearer {cp.admin_token}"}) as client:
        text = (await client.get(f"{cp.server}/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "apiserver_request":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    verb = sample.labels.get("verb", "?")
                    out[verb] = out.get(verb, 0.0) + sample.value
                    if sample.labels.get("code") == "429":
                        out["429"] = out.get("429", 0.0) + sample.value
    return out


async def main(args) -> dict:
    import kr8s.asyncio

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="scalable-bench-operator-"))
    cp = ControlPlane().start()
    prom = PrometheusServer(scrape_interval="1s").start()
    # one exporter stands in for every cluster's scheduler, its series labelled per cluster
    exporter = await QueueExporter(queued=0, processing=1, workers=1,
                                   scopes=[("bench", f"c{i:04d}") for i in range(args.workflows)]).start()
    proc = None
    try:
        await install_crds(cp.kubeconfig, dask_kubernetes_crd_files() + repo_crd_files())
        api = await kr8s.asyncio.api(kubeconfig=str(cp.kubeconfig))
        namespace = "bench"
        await kr8s.asyncio.objects.Namespace({"metadata": {"name": namespace}}, api=api).create()
        prom.add_target("q", exporter.address, honor_labels=True)
        await asyncio.to_thread(prom.wait_for, 'sum(dask_scheduler_tasks{job="q"})', lambda v: v is not None, 30)
        write_history(work / "telemetry" / namespace / "runs", n=50)
        # the default queries (no override): what users get, and what the grouped path batches
        scaling = {"mode": "Reactive", "pollIntervalSeconds": args.poll, "cooldownSeconds": 30,
                   "prometheus": {"timeoutSeconds": 5}}
        t0 = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def make(i):
            async with sem:
                name = f"c{i:04d}"
                await create(api, namespace, dask_cluster(name, 1))
                await create(api, namespace, dask_worker_group(f"{name}-default", name, 1))
                groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 8}]
                await create(api, namespace, scalable_workflow(f"w{i:04d}", name, groups=groups, scaling=scaling))

        await asyncio.gather(*(make(i) for i in range(args.workflows)))
        create_s = time.monotonic() - t0
        print(f"created {args.workflows} workflows in {create_s:.0f}s", flush=True)

        metrics_port, ingest_port = free_ports(2)
        argv = [sys.executable, "-m", "scalable.cli.main", "operator", "run", "--namespace", namespace,
                "--telemetry-path", str(work / "telemetry"), "--prometheus-url", prom.url, "--scheduler-url", "",
                "--metrics-port", str(metrics_port), "--ingest-port", str(ingest_port), "--bind", "127.0.0.1",
                "--lease-namespace", namespace, "--kubeconfig", str(cp.kubeconfig),
                "--prometheus-batch-age", "0" if args.per_workflow else str(args.batch_age)]
        t_start = time.monotonic()
        proc = spawn(argv, work / "operator.log", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ps = psutil.Process(proc.pid)
        while await _reconciled(api, namespace) < args.workflows:
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited: {(work / 'operator.log').read_text()[-3000:]}")
            if time.monotonic() - t_start > 900:
                raise RuntimeError("not every workflow reconciled within 900 s")
            await asyncio.sleep(2)
        startup_s = time.monotonic() - t_start
        print(f"all {args.workflows} reconciled after {startup_s:.0f}s", flush=True)

        cpu0, w0 = ps.cpu_times(), time.monotonic()
        q0, a0 = await _prometheus_queries(prom.url), await _apiserver_requests(cp)
        rss = []
        while time.monotonic() - w0 < args.steady:
            rss.append(ps.memory_info().rss)
            await asyncio.sleep(2)
        cpu1, w1 = ps.cpu_times(), time.monotonic()
        q1, a1 = await _prometheus_queries(prom.url), await _apiserver_requests(cp)
        cpu_fraction = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (w1 - w0)
        query_rate = (q1 - q0) / (w1 - w0)
        # the benchmark's own 2 s samples are not in the window; the operator's requests are
        api_rates = {verb: round((a1.get(verb, 0.0) - a0.get(verb, 0.0)) / (w1 - w0), 2) for verb in sorted(a1)}
        print(f"steady: {cpu_fraction:.2f} CPU, RSS max {max(rss) / 2**20:.0f} MiB, Prometheus {query_rate:.1f} queries/s, "
              f"API server {api_rates} requests/s", flush=True)

        before = await _replicas(api, namespace)
        exporter.queued = 400
        t_change = time.monotonic()
        changed: dict[str, float] = {}
        while len(changed) < args.workflows and time.monotonic() - t_change < 3 * args.poll + 60:
            now = await _replicas(api, namespace)
            stamp = time.monotonic() - t_change
            for name, value in now.items():
                if name not in changed and value != before[name]:
                    changed[name] = stamp
            await asyncio.sleep(0.5)
        latencies = np.array(sorted(changed.values()))
        final = await _replicas(api, namespace)
        figures = {
            "workflows": args.workflows,
            "poll_interval_s": args.poll,
            "create_objects_s": round(create_s, 1),
            "startup_until_all_reconciled_s": round(startup_s, 1),
            "steady_window_s": round(w1 - w0, 1),
            "steady_cpu_cores": round(cpu_fraction, 3),
            "queue_queries": "per workflow" if args.per_workflow else f"grouped (batch age {args.batch_age:g} s)",
            "prometheus_queries_per_s": round(query_rate, 2),
            "apiserver_requests_per_s": api_rates,
            "rss_max_mib": round(max(rss) / 2**20, 1),
            "rss_mean_mib": round(float(np.mean(rss)) / 2**20, 1),
            "latency_scaled": int(len(latencies)),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 2) if len(latencies) else None,
            "latency_max_s": round(float(latencies.max()), 2) if len(latencies) else None,
            "replicas_after": sorted(set(final.values())),
            "note": "latency = queue change at the exporter to the replica patch seen on the API server "
                    "(0.5 s sampling), including the 1 s scrape and up to one poll interval of phase",
        }
        print(json.dumps(figures, indent=2), flush=True)
        write_result("operator_per_workflow" if args.per_workflow else "operator", figures, started=started, argv=sys.argv)
        return figures
    finally:
        if proc is not None and proc.poll() is None:
            terminate(proc.pid, proc=proc)
        await exporter.stop()
        prom.stop()
        cp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--poll", type=int, default=15)
    parser.add_argument("--steady", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="50 workflows, 60 s steady window")
    parser.add_argument("--per-workflow", action="store_true",
                        help="ask Prometheus per workflow (--prometheus-batch-age 0), the path before grouped queries")
    parser.add_argument("--batch-age", type=float, default=1.0, help="the operator's --prometheus-batch-age")
    args = parser.parse_args()
    if args.quick:
        args.workflows, args.steady = 50, 60.0
    asyncio.run(main(args))
