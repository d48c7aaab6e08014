"""Ingestion under load: N concurrent clients push batches of task records to the operator's
ingestion endpoint over loopback HTTP.

    python benchmarks/bench_ingest.py [--clients 50] [--batches 20] [--records 200]

The real ingestion app (``scalable.controller.ingest.ingest_app``) runs in its own process, with
the API server's TokenReview / SubjectAccessReview answered by a script (the authorizer caches
them anyway; tests/integration/test_ingest.py exercises the real ones). Every client uses its own
connection and its own run. Figures: errors, answers by status, wall time, records/s, request
latency (p50, p95, max), the server's peak RSS, and whether every acknowledged record is on
disk exactly once (loaded back with ``load_tasks``). Written to benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"
PATH = "/v1/namespaces/team-a/scalableworkflows/wf/runs"


class _ScriptedApiServer:
    async def token_review(self, token, *audiences):
        ok = token == TOKEN
        return {"authenticated": ok, "user": {"username": "system:serviceaccount:team-a:bench", "groups": []}} if ok else {}

    async def access_review(self, user, namespace, verb, group, resource, name):
        return {"allowed": (namespace, name) == ("team-a", "wf")}

    async def get(self, kind, namespace, name):
        return {"metadata": {"name": name, "namespace": namespace}} if (namespace, name) == ("team-a", "wf") else None


def serve(root: str) -> None:
    """The server process: print the URL, serve until killed."""
    from types import SimpleNamespace

    from aiohttp import web

    from scalable.controller.ingest import ingest_app
    from scalable.controller.metrics import OperatorMetrics
    from scalable.controller.runtime import OperatorConfig
    from scalable.controller.storage import TelemetryRoot

    async def main() -> None:
        config = OperatorConfig(telemetry_path=root)
        rt = SimpleNamespace(kube=_ScriptedApiServer(), metrics=OperatorMetrics(), config=config, root=TelemetryRoot(root))
        runner = web.AppRunner(ingest_app(rt), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _clients(url: str, clients: int, batches: int, records: int, timeout: float) -> tuple[list[float], dict[int, int], int]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def client(k: int) -> None:
        nonlocal errors
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            for b in range(batches):
                body = {"run": {"run_id": f"client-{k}"}, "records": [
                    {"task": "simulate", "submitted_at": 1.7e9 + i, "duration_s": 1.0 + i % 7, "peak_memory_bytes": 2**30 + i,
                     "input_features": {"client": k, "batch": b, "i": i}} for i in range(records)]}
                t0 = time.perf_counter()
                try:
                    async with session.post(url + PATH, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status != 200:
                            errors += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, statuses, errors


def run(clients: int = 50, batches: int = 20, records: int = 200, timeout: float = 120.0, root: str | None = None) -> dict[str, Any]:
    import psutil

    from scalable.telemetry.loader import load_tasks

    tmp = tempfile.TemporaryDirectory(prefix="bench-ingest-") if root is None else None
    root = root or tmp.name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "operator"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "bench_ingest.py"), "--serve", root], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the ingestion server did not start: {url!r}")
        server = psutil.Process(proc.pid)
        peak = [server.memory_info().rss]
        rss_start = peak[0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                try:
                    peak.append(server.memory_info().rss)
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        latencies, statuses, errors = asyncio.run(_clients(url, clients, batches, records, timeout))
        wall = time.perf_counter() - t0
        done.set()
        sampler.join(timeout=5)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    table = load_tasks(Path(root) / "team-a" / "runs", cache=False)
    frame = table.frame
    per_batch = frame.groupby(["feature.client", "feature.batch"]).size() if len(frame) else None
    sent = clients * batches * records
    latencies.sort()
    figures = {
        "clients": clients, "batches_per_client": batches, "records_per_batch": records,
        "records_sent": sent, "records_on_disk": int(len(frame)), "skipped_lines": table.skipped.total,
        "every_batch_exactly_once": bool(per_batch is not None and len(per_batch) == clients * batches and (per_batch == records).all()),
        "errors": errors, "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(wall, 2), "records_per_s": round(sent / wall, 1), "requests_per_s": round(clients * batches / wall, 1),
        "latency_p50_s": round(latencies[len(latencies) // 2], 3), "latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 3),
        "latency_max_s": round(latencies[-1], 3),
        "server_rss_start_mib": round(rss_start / 2**20, 1), "server_rss_peak_mib": round(max(peak) / 2**20, 1),
    }
    if tmp is not None:
        tmp.cleanup()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    sys.path.insert(0, str(HERE))
    from _common import write_result

    started = time.time()
    figures = run(args.clients, args.batches, args.records)
    path = write_result("ingest", figures, started=started)
    print(path.read_text())
    return 0 if figures["errors"] == 0 and figures["every_batch_exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
