#!/usr/bin/env python3
"""`make demo`: the whole loop on this machine, then everything torn down.

What runs (all local processes, nothing needs Docker):
- a real Kubernetes control plane (etcd + kube-apiserver with RBAC; tests/support/controlplane.py),
  the dask-kubernetes CRDs and ours;
- a real Dask scheduler and workers (tests/support/dask_processes.py), and a real Prometheus
  scraping the scheduler (tests/support/prometheus.py);
- the operator, `scalable operator run` with the arguments of the chart's Deployment, under the
  chart's ServiceAccount token and RBAC (exactly what it gets in a cluster);
- the sample workflow of examples/: a DaskCluster, an AdvisorModel trained from 60 earlier runs
  of the task, a ScalableWorkflow tying them together (pointed at the local Prometheus);
- a stand-in for dask-kubernetes' controller (no kubelet here): one local `dask worker` process
  per replica of the DaskCluster, started with the memory the operator wrote into the worker
  template (new workers get new resources; running ones keep theirs);
- a workload in waves: the queue grows, the operator adds workers, the queue drains, it removes them.

It prints the recommendation and a timeline, and writes a plot to _output/demo/demo.png.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import distributed  # noqa: E402
import kr8s.asyncio  # noqa: E402
import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from scalable.telemetry.schema import Resources, TaskObservation  # noqa: E402
from scalable.telemetry.store import RunStore  # noqa: E402
from tests.support.chart import RELEASE, RELEASE_NAMESPACE, apply_documents, operator_args, rbac_documents, render  # noqa: E402
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.dask_processes import DaskProcesses  # noqa: E402
from tests.support.kube import dask_kubernetes_crd_files, install_crds, repo_crd_files, service_account_kubeconfig  # noqa: E402
from tests.support.prometheus import PrometheusServer  # noqa: E402
from tests.support.testenv import MissingBinaryError, free_ports, tail, terminate  # noqa: E402
from tests.support.workloads import sleep_task  # noqa: E402

NAMESPACE = "demo"
TASK = "run_simulation"
console = Console(highlight=False, width=max(120, Console().width))


def say(message: str) -> None:
    console.print(f"[bold cyan]==>[/] {message}")


# ---------------------------------------------------------------------------------------
# the sample workflow: examples/, pointed at this machine
# ---------------------------------------------------------------------------------------
def example_objects(prometheus_url: str, max_workers: int, mode: str) -> list[dict]:
    docs = [d for p in sorted((ROOT / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    objects = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if doc["kind"] == "DaskWorkerGroup":
            continue  # the demo runs only the cluster's default group
        if doc["kind"] == "DaskCluster":
            doc["spec"]["worker"]["replicas"] = 1
            cluster = doc["metadata"]["name"]
            # dask-kubernetes creates this group for every DaskCluster; there is no controller here
            objects.append({"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
                            "metadata": {"name": f"{cluster}-default"},
                            "spec": {"cluster": cluster, "worker": copy.deepcopy(doc["spec"]["worker"])}})
        if doc["kind"] == "AdvisorModel":
            doc["spec"]["minHistory"] = 5
        if doc["kind"] == "ScalableWorkflow":
            spec = doc["spec"]
            spec["workerGroups"] = [g for g in spec["workerGroups"] if g["name"] == "default"]
            spec["workerGroups"][0].update(minWorkers=1, maxWorkers=max_workers)
            spec["workerGroups"][0]["resourcePolicy"]["maxAllowed"] = {"cpu": "4", "memory": "4Gi"}
            job = 'job="dask"'
            spec["scaling"].update(mode=mode, pollIntervalSeconds=2, cooldownSeconds=4)
            spec["scaling"]["prometheus"] = {"url": prometheus_url, "timeoutSeconds": 2, "queries": {
                "queued": f'sum(dask_scheduler_tasks{{{job},state=~"queued|no-worker|waiting"}})',
                "processing": f'sum(dask_scheduler_tasks{{{job},state="processing"}})',
                "workers": f'sum(dask_scheduler_workers{{{job},state!="closed"}})',
                "workerMemory": 'sum by (instance) (dask_worker_memory_bytes{job="dask-workers"})',
            }}
        objects.append(doc)
    return objects


def seed_history(runs_dir: Path, runs: int = 12, tasks_per_run: int = 5) -> int:
    """Earlier runs of the task, as the `scalable` library records them: bigger inputs, more memory."""
    store = RunStore(runs_dir)
    start = time.time() - 30 * 86400
    n = 0
    for r in range(runs):
        with store.open_run(workflow="sweep", source="demo-history") as run:
            for i in range(tasks_per_run):
                nodes = 400 + 200 * ((r * tasks_per_run + i) % 7)
                peak = int((0.6 + nodes / 1000 + 0.08 * ((i * 7 + r) % 5)) * 2**30)
                duration = 0.3 + nodes / 4000  # seconds, like the demo's tasks
                t0 = start + (r * tasks_per_run + i) * 3600
                run.append(TaskObservation(
                    run_id=run.run_id, task=TASK, tag="demeter",
                    input_features={"num_nodes": nodes, "scenario_type": "peak_demand" if i % 2 else "baseline"},
                    submitted_at=t0, started_at=t0, finished_at=t0 + duration, duration_s=duration,
                    cpu_seconds=duration * 1.6, peak_memory_bytes=peak,
                    worker_resources=Resources(cpus=4, memory_bytes=8 * 2**30),
                ))
                n += 1
    return n


# ---------------------------------------------------------------------------------------
# the API server's view
# ---------------------------------------------------------------------------------------
async def create(api: Any, obj: dict) -> None:
    import json

    plural = obj["kind"].lower() + "s"
    async with api.call_api("POST", version=obj["apiVersion"], namespace=NAMESPACE, url=plural, content=json.dumps(obj),
                            headers={"Content-Type": "application/json"}):
        pass


async def get(api: Any, api_version: str, plural: str, name: str) -> dict:
    async with api.call_api("GET", version=api_version, namespace=NAMESPACE, url=f"{plural}/{name}") as r:
        return r.json()


class Follower:
    """dask-kubernetes' part: one local worker per replica, with the template's memory limit."""

    def __init__(self, api: Any, dask: DaskProcesses, cluster: str) -> None:
        self.api, self.dask, self.cluster = api, dask, cluster
        self.replicas = 1
        self.memory: str | None = None

    async def run(self) -> None:
        while True:
            obj = await get(self.api, "kubernetes.dask.org/v1", "daskclusters", self.cluster)
            self.replicas = obj["spec"]["worker"]["replicas"]
            container = obj["spec"]["worker"]["spec"]["containers"][0]
            memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            if memory:
                self.memory = memory
                self.dask.memory_limit = memory.replace("Gi", "GiB").replace("Mi", "MiB")
            running = list(self.dask.workers)
            for _ in range(self.replicas - len(running)):
                await asyncio.to_thread(self.dask.add_worker, wait=False)
            for name in running[self.replicas:] if len(running) > self.replicas else []:
                await asyncio.to_thread(self.dask.stop_worker, name)
            await asyncio.sleep(0.5)


def workload(address: str, waves: list[int], pause: float, done: threading.Event) -> None:
    with distributed.Client(address, timeout=30) as client:
        for i, n in enumerate(waves):
            futures = client.map(sleep_task, [0.6] * n, pure=False)
            client.gather(futures)
            if i < len(waves) - 1:
                time.sleep(pause)
    done.set()


def plot(samples: list[dict], path: Path, recommendation: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["queued"] + s["processing"] for s in samples], label="tasks queued + processing", color="tab:gray")
    ax.set_xlabel("seconds")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    ax2.step(t, [s["replicas"] for s in samples], where="post", label="replicas (set by the operator)", color="tab:blue")
    ax2.step(t, [s["workers"] for s in samples], where="post", label="workers connected to the scheduler", color="tab:orange", linestyle="--")
    ax2.set_ylabel("workers")
    ax2.set_ylim(0, max(s["replicas"] for s in samples) + 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper right", fontsize=8)
    ax.set_title(f"Scalable demo: the queue moves, replicas follow\n{recommendation}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
async def demo(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        say("starting the local control plane (etcd, kube-apiserver with RBAC)")
        cp = ControlPlane(controller_manager=False)
        await asyncio.to_thread(cp.start)
        stack.callback(cp.stop)
        await install_crds(cp.kubeconfig, dask_kubernetes_crd_files() + repo_crd_files())
        admin = await kr8s.asyncio.api(kubeconfig=str(cp.kubeconfig))
        for ns in (RELEASE_NAMESPACE, NAMESPACE):
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": ns}}, api=admin).create()

        say("starting a Dask scheduler, one worker and Prometheus scraping the scheduler")
        dask = await asyncio.to_thread(DaskProcesses(n_workers=1, nthreads=1).start)
        stack.callback(dask.stop)
        prometheus = await asyncio.to_thread(PrometheusServer(scrape_interval="1s").start)
        stack.callback(prometheus.stop)
        prometheus.add_target("dask", dask.scheduler_metrics)

        say("applying the chart's ServiceAccount and least-privilege RBAC; the operator runs under its token")
        docs = render()
        apply_documents(cp.kubeconfig, rbac_documents(docs))
        sa_kubeconfig = await service_account_kubeconfig(admin, cp.kubeconfig, RELEASE_NAMESPACE, RELEASE,
                                                         out / "operator.kubeconfig", create=False)
        telemetry = out / "telemetry"
        shutil.rmtree(telemetry, ignore_errors=True)  # a fresh volume on every run
        n = seed_history(telemetry / NAMESPACE / "runs")
        say(f"seeded {n} earlier observations of task {TASK!r} into the operator's telemetry volume ({telemetry})")

        objects = example_objects(prometheus.url, args.max_workers, args.mode)
        for obj in objects:
            await create(admin, obj)
        names = {o["kind"]: o["metadata"]["name"] for o in objects}
        say("created from examples/: " + ", ".join(f"{k}/{v}" for k, v in names.items()))

        metrics_port, ingest_port = free_ports(2)
        overrides = {"--telemetry-path": str(telemetry), "--scheduler-url": dask.dashboard_url,
                     "--metrics-port": str(metrics_port), "--ingest-port": str(ingest_port)}
        argv = [a if a.split("=", 1)[0] not in overrides else f"{a.split('=', 1)[0]}={overrides[a.split('=', 1)[0]]}"
                for a in operator_args(docs)]
        log_path = out / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(sa_kubeconfig), "POD_NAMESPACE": RELEASE_NAMESPACE, "POD_NAME": "demo-operator"}
        scalable = Path(sys.executable).parent / "scalable"
        command = [str(scalable)] if scalable.exists() else [sys.executable, "-c", "from scalable.cli.main import main; main()"]
        say(f"starting the operator: scalable {' '.join(argv)}  (log: {log_path})")
        log = open(log_path, "wb")
        stack.callback(log.close)
        operator = subprocess.Popen([*command, *argv], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stack.callback(lambda: terminate(operator.pid, timeout=15, proc=operator))

        wf_name, model_name, cluster_name = names["ScalableWorkflow"], names["AdvisorModel"], names["DaskCluster"]
        follower = Follower(admin, dask, cluster_name)
        follower_task = asyncio.create_task(follower.run())
        stack.callback(follower_task.cancel)

        say("waiting for the AdvisorModel to train and the workers to be sized")
        deadline = time.monotonic() + args.timeout
        model = wf = {}
        while time.monotonic() < deadline:
            if operator.poll() is not None:
                console.print(tail(log_path, 40))
                raise RuntimeError(f"the operator exited with {operator.returncode}")
            model = await get(admin, "scalable.dev/v1alpha1", "advisormodels", model_name)
            wf = await get(admin, "scalable.dev/v1alpha1", "scalableworkflows", wf_name)
            rec = (((wf.get("status") or {}).get("groups") or [{}])[0]).get("recommendation") or {}
            phase = (model.get("status") or {}).get("phase")
            # sized by the trained model, or (model failed / too little data) by the percentile advisor
            if rec and (rec.get("modelVersion") or phase in ("Failed", "InsufficientData")):
                break
            await asyncio.sleep(1)
        else:
            console.print(tail(log_path, 40))
            raise RuntimeError("the model was not trained / the workflow not sized in time")

        ms = model.get("status") or {}
        rec = wf["status"]["groups"][0]["recommendation"]
        table = Table(title="Recommendation for the Dask workers of task " + repr(TASK), show_header=True)
        for col in ("cpu", "memory", "confidence", "method", "model", "basis"):
            table.add_column(col)
        table.add_row(str(rec.get("cpu")), str(rec.get("memory")), f"{rec.get('confidence') or 0:.2f}", str(rec.get("method")),
                      str(rec.get("modelVersion") or "-"), str(rec.get("basis")))
        console.print(table)
        console.print(f"AdvisorModel {model_name}: phase {ms.get('phase')}, version {ms.get('modelVersion')}, "
                      f"trained on {ms.get('records')} records of {ms.get('runs')} runs, measured coverage {ms.get('coverage')}")
        cluster = await get(admin, "kubernetes.dask.org/v1", "daskclusters", cluster_name)
        console.print("DaskCluster worker template now asks for: "
                      f"{cluster['spec']['worker']['spec']['containers'][0].get('resources')}  "
                      "(new workers start with it; running workers keep what they have)")
        recommendation = f"recommended {rec.get('cpu')} CPU, {rec.get('memory')} ({rec.get('method')}, confidence {rec.get('confidence') or 0:.2f})"

        waves = [int(w) for w in args.waves.split(",")]
        say(f"running the workload: waves of {waves} tasks of 0.6 s; timeline (one line per change)")
        done = threading.Event()
        worker_thread = threading.Thread(target=workload, args=(dask.scheduler_address, waves, 8.0, done), daemon=True)
        start = time.monotonic()
        worker_thread.start()
        samples: list[dict] = []
        console.print(f"{'t':>5}  {'queued':>6}  {'processing':>10}  {'replicas':>8}  {'workers':>7}  decision")
        last_line = None
        settled_since = None
        while time.monotonic() - start < args.timeout:
            queued = prometheus.value('sum(dask_scheduler_tasks{job="dask",state=~"queued|no-worker|waiting"})') or 0
            processing = prometheus.value('sum(dask_scheduler_tasks{job="dask",state="processing"})') or 0
            wf = await get(admin, "scalable.dev/v1alpha1", "scalableworkflows", wf_name)
            decision = ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision") or {}
            try:
                connected = await asyncio.to_thread(dask.n_connected)
            except OSError:
                connected = len(dask.workers)
            sample = {"t": round(time.monotonic() - start, 1), "queued": queued, "processing": processing,
                      "replicas": follower.replicas, "workers": connected}
            samples.append(sample)
            line = (follower.replicas, connected, decision.get("action"), decision.get("time"))
            if line != last_line or int(sample["t"]) % 5 == 0:
                reason = decision.get("reason", "")
                console.print(f"{sample['t']:5.0f}  {int(queued):6d}  {int(processing):10d}  {follower.replicas:8d}  "
                              f"{connected:7d}  {decision.get('action', '-')}: {reason[:64]}")
                last_line = line
            if done.is_set() and follower.replicas == 1 and queued == 0 and processing == 0:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 3:
                    break
            await asyncio.sleep(1)
        png = out / "demo.png"
        plot(samples, png, recommendation)
        peak = max(s["replicas"] for s in samples)
        say(f"done: replicas went 1 -> {peak} -> {samples[-1]['replicas']} as the queue grew and drained; plot: {png}")
        events = []
        async with admin.call_api("GET", version="v1", namespace=NAMESPACE, url="events") as r:
            events = [f"{e['reason']}: {e['message'][:110]}" for e in
                      sorted(r.json()["items"], key=lambda e: e.get("lastTimestamp") or "")]
        console.print("Events:\n  " + "\n  ".join(events[-8:]))
        say("tearing everything down")
        operator.send_signal(signal.SIGTERM)
        await asyncio.to_thread(operator.wait, 20)
        return 0 if peak > 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "_output" / "demo"), help="where the plot, logs and telemetry go")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--mode", default="Predictive", choices=["Predictive", "Reactive"], help="spec.scaling.mode")
    parser.add_argument("--waves", default="60,100", help="tasks per wave, comma separated")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    try:
        return asyncio.run(demo(args))
    except MissingBinaryError as e:
        console.print(f"[red]ERROR:[/] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
