#!/usr/bin/env python3
"""`make demo`: the whole loop on this machine's real node, then everything torn down.

What runs (local processes and real pods, nothing needs Docker):
- a real Kubernetes control plane and one real node (tests/support/controlplane.py with
  node=True: etcd, kube-apiserver with RBAC, kube-controller-manager, kube-scheduler;
  containerd, kubelet, kube-proxy, a CNI bridge on 198.18.0.1/24, CoreDNS in a pod);
- dask-kubernetes' own controller in a pod, Helm-installed from the chart in its wheel
  (tests/support/dask_kubernetes.py), on the locally built image (`make images`);
- the sample workflow of examples/: a DaskCluster (on the locally built Dask image, hardened
  for the node), a ScalableWorkflow, and an AdvisorModel trained from 60 earlier observations
  of the task: recorded on this host as the `scalable` library records them, and pushed to the
  operator's ingestion endpoint with `scalable telemetry push` under a workflow client's
  ServiceAccount token (nothing is written onto the operator's volume by hand);
  dask-kubernetes creates the scheduler and worker pods and retires workers through the
  scheduler's HTTP API;
- a real Prometheus (tests/support/prometheus.py) that finds the scheduler and worker pods
  through the API server (kubernetes_sd_configs, role pod), so the operator's default PromQL
  on the labels namespace and cluster works as in a cluster;
- the operator as a host process, `scalable operator run` with the arguments of the chart's
  Deployment, under the chart's ServiceAccount token and RBAC; its scheduler fallback points at
  the scheduler pod's dashboard (the host cannot resolve cluster DNS names);
- a workload in waves from a client on this host, connected to the scheduler pod's address:
  the queue grows, the operator raises the replicas, dask-kubernetes starts worker pods with
  the recommended resources, the queue drains, the operator lowers the replicas, the pods go.

It prints the recommendation, a timeline (replicas, worker pods Running, workers connected,
queue, decision), the worker pods with the resources they got, and writes a plot to
_output/demo/demo.png and the figures to _output/demo/summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
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

from scalable.controller.resources import PrometheusQueries  # noqa: E402
from scalable.telemetry.schema import Resources, TaskObservation  # noqa: E402
from scalable.telemetry.store import RunStore  # noqa: E402
from scalable.units import format_cpu, parse_cpu  # noqa: E402
from tests.support import node as real_node  # noqa: E402
from tests.support.chart import RELEASE, RELEASE_NAMESPACE, apply_documents, operator_args, rbac_documents, render  # noqa: E402
from tests.support.controlplane import ControlPlane, ControlPlaneError  # noqa: E402
from tests.support.dask_kubernetes import install_controller, kubectl, on_node, scheduler_address  # noqa: E402
from tests.support.images import node_images  # noqa: E402
from tests.support.kube import (  # noqa: E402
    dask_kubernetes_crd_files, install_crds, repo_crd_files, request_token, service_account_kubeconfig,
)
from tests.support.prometheus import PrometheusServer  # noqa: E402
from tests.support.testenv import MissingBinaryError, free_ports, tail, terminate  # noqa: E402

NAMESPACE = "demo"
TASK = "run_simulation"
TASK_SECONDS = 0.6
MiB = 2**20
console = Console(highlight=False, width=max(120, Console().width), soft_wrap=True)


def say(message: str) -> None:
    console.print(f"[bold cyan]==>[/] {message}")


# ---------------------------------------------------------------------------------------
# the sample workflow: examples/, pointed at this machine's node
# ---------------------------------------------------------------------------------------
def example_objects(prometheus_url: str, dask_image: str, max_workers: int, mode: str, max_cpu: str) -> list[dict]:
    docs = [d for p in sorted((ROOT / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    objects = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if doc["kind"] == "DaskWorkerGroup":
            continue  # the demo runs only the cluster's default group
        if doc["kind"] == "DaskCluster":
            doc = on_node(doc, dask_image)
            doc["spec"]["worker"]["replicas"] = 1
        if doc["kind"] == "AdvisorModel":
            doc["spec"]["minHistory"] = 5
        if doc["kind"] == "ScalableWorkflow":
            spec = doc["spec"]
            spec["workerGroups"] = [g for g in spec["workerGroups"] if g["name"] == "default"]
            spec["workerGroups"][0].update(minWorkers=1, maxWorkers=max_workers)
            # Small enough that max_workers sized workers fit on this machine's one node.
            spec["workerGroups"][0]["resourcePolicy"]["minAllowed"] = {"cpu": "100m", "memory": "256Mi"}
            spec["workerGroups"][0]["resourcePolicy"]["maxAllowed"] = {"cpu": max_cpu, "memory": "2Gi"}
            spec["scaling"].update(mode=mode, pollIntervalSeconds=2, cooldownSeconds=4)
            # Our Prometheus labels what it scrapes namespace and cluster (as the operator's
            # default PromQL expects), so the example's queries for the prometheus-community
            # chart's labels are left out.
            spec["scaling"]["prometheus"] = {"url": prometheus_url, "timeoutSeconds": 2}
        objects.append(doc)
    return objects


def seed_history(runs_dir: Path, runs: int = 12, tasks_per_run: int = 5) -> int:
    """Earlier runs of the task, as the `scalable` library records them: bigger inputs, more memory
    (a few hundred MiB, so several sized workers fit on this machine)."""
    store = RunStore(runs_dir)
    start = time.time() - 30 * 86400
    n = 0
    for r in range(runs):
        with store.open_run(workflow="sweep", source="demo-history") as run:
            for i in range(tasks_per_run):
                nodes = 400 + 200 * ((r * tasks_per_run + i) % 7)
                peak = int((180 + nodes / 4 + 24 * ((i * 7 + r) % 5)) * MiB)
                duration = 0.3 + nodes / 4000  # seconds, like the demo's tasks
                t0 = start + (r * tasks_per_run + i) * 3600
                run.append(TaskObservation(
                    run_id=run.run_id, task=TASK, tag="demeter",
                    input_features={"num_nodes": nodes, "scenario_type": "peak_demand" if i % 2 else "baseline"},
                    submitted_at=t0, started_at=t0, finished_at=t0 + duration, duration_s=duration,
                    cpu_seconds=duration * 0.3, peak_memory_bytes=peak,
                    worker_resources=Resources(cpus=1, memory_bytes=2 * 2**30),
                ))
                n += 1
    return n


async def push_history(admin: Any, cp: ControlPlane, history: Path, ingest_port: int, workflow: str, out: Path) -> dict:
    """`scalable telemetry push` of the recorded runs to the operator, as a workflow client
    does: a ServiceAccount of the demo namespace allowed to update the ScalableWorkflow, its
    token from the API server (TokenRequest). The operator listens on this host's loopback, so
    plain http carries the token; the push retries while the operator is still starting."""
    client = "workflow-client"
    apply_documents(cp.kubeconfig, [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": client, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "push-telemetry", "namespace": NAMESPACE},
         "rules": [{"apiGroups": ["scalable.dev"], "resources": ["scalableworkflows"], "verbs": ["get", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "push-telemetry", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "push-telemetry"},
         "subjects": [{"kind": "ServiceAccount", "name": client, "namespace": NAMESPACE}]},
    ])
    token_file = out / "workflow-client.token"
    token_file.write_text(await request_token(admin, NAMESPACE, client))
    token_file.chmod(0o600)
    url = f"http://127.0.0.1:{ingest_port}"
    scalable = Path(sys.executable).parent / "scalable"
    command = [str(scalable)] if scalable.exists() else [sys.executable, "-m", "scalable.cli.main"]
    args = ["telemetry", "push", "--runs-dir", str(history), "--url", url, "--workflow", f"{NAMESPACE}/{workflow}",
            "--token-file", str(token_file), "--spool-dir", str(out / "spool"), "--deadline", "90", "--json"]
    say(f"pushing the recorded runs: scalable {' '.join(args)}")
    started = time.monotonic()
    done = await asyncio.to_thread(subprocess.run, [*command, *args], capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"scalable telemetry push exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    outcome = json.loads(done.stdout)
    say(f"the operator stored {outcome['accepted']} records of {outcome['runs']} runs ({outcome['duplicates']} there already, "
        f"{outcome['retries']} retries while it started) in {time.monotonic() - started:.1f} s")
    return outcome


# ---------------------------------------------------------------------------------------
# the API server's view
# ---------------------------------------------------------------------------------------
async def create(api: Any, obj: dict) -> None:
    plural = obj["kind"].lower() + "s"
    async with api.call_api("POST", version=obj["apiVersion"], namespace=NAMESPACE, url=plural, content=json.dumps(obj),
                            headers={"Content-Type": "application/json"}):
        pass


async def get(api: Any, api_version: str, plural: str, name: str) -> dict:
    async with api.call_api("GET", version=api_version, namespace=NAMESPACE, url=f"{plural}/{name}") as r:
        return r.json()


async def list_pods(api: Any, selector: str, namespace: str | None = NAMESPACE) -> list[dict]:
    async with api.call_api("GET", version="v1", namespace=namespace, url="pods", params={"labelSelector": selector}) as r:
        return r.json()["items"]


async def cpu_per_worker(api: Any, max_workers: int) -> str:
    """The most CPU each of max_workers worker pods can ask for and still fit on the node:
    its allocatable CPU less what the pods there request already, and a little headroom."""
    async with api.call_api("GET", version="v1", url=f"nodes/{real_node.NODE_NAME}") as r:
        allocatable = parse_cpu(r.json()["status"]["allocatable"]["cpu"])
    async with api.call_api("GET", version="v1", url="pods") as r:
        requested = sum(parse_cpu(((c.get("resources") or {}).get("requests") or {}).get("cpu", 0))
                        for p in r.json()["items"] if p["status"].get("phase") not in ("Succeeded", "Failed")
                        for c in p["spec"]["containers"])
    millis = math.floor((allocatable - requested - 0.1) * 1000 / max_workers / 50) * 50
    if millis < 100:
        raise RuntimeError(f"--max-workers {max_workers}: that many workers do not fit on this node "
                         f"({format_cpu(allocatable)} CPU allocatable, {format_cpu(requested)} requested)")
    return format_cpu(min(millis, 1000) / 1000)


@dataclass
class WorkerPod:
    """One worker pod of the run, as the API showed it."""

    name: str
    created: str
    before_sizing: bool
    memory_request: str | None
    memory_limit: str | None
    cpu_limit: str | None
    seen_at: float
    running_at: float | None = None
    leaving_at: float | None = None
    gone_at: float | None = None


def _resources(pod: dict) -> dict:
    container = next((c for c in pod["spec"]["containers"] if c["name"] == "worker"), pod["spec"]["containers"][0])
    return container.get("resources") or {}


def counts(dashboard: str) -> dict:
    """The scheduler's own counts (GET /json/counts.json): workers connected, tasks."""
    with urllib.request.urlopen(f"{dashboard}/json/counts.json", timeout=2) as r:
        return json.load(r)


def run_simulation(seconds: float) -> float:
    """The demo's task. Defined in the script (module __main__), so Dask pickles it by value:
    the scheduler and worker pods have no copy of this repository."""
    time.sleep(seconds)
    return seconds


def workload(address: str, waves: list[int], pause: float, done: threading.Event, errors: list) -> None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", distributed.versions.VersionMismatchWarning)
            client = distributed.Client(address, timeout=30)
        for w in caught:
            # The image is Debian's Python 3.11 with this machine's pip freeze: only the Python
            # patch level may differ. Anything else is worth seeing.
            rows = [r for r in str(w.message).splitlines() if r.startswith("| ") and not r.startswith("| Package")]
            if any(not r.startswith("| python ") for r in rows):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        with client:
            for i, n in enumerate(waves):
                futures = client.map(run_simulation, [TASK_SECONDS] * n, pure=False)
                client.gather(futures)
                if i < len(waves) - 1:
                    time.sleep(pause)
    except Exception as e:  # reported by the timeline loop
        errors.append(e)
    finally:
        done.set()


def plot(samples: list[dict], path: Path, recommendation: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.fill_between(t, [s["queued"] + s["processing"] for s in samples], step="post", color="tab:gray", alpha=0.35,
                    label="tasks queued + processing (Prometheus)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    ax2.step(t, [s["replicas"] for s in samples], where="post", label="replicas (set by the operator)", color="tab:blue")
    ax2.step(t, [s["pods_running"] for s in samples], where="post", label="worker pods Running (dask-kubernetes)",
             color="tab:orange", linestyle="--")
    ax2.set_ylabel("workers")
    ax2.set_ylim(0, max(max(s["replicas"], s["pods_running"]) for s in samples) + 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper right", fontsize=8)
    ax.set_title(f"Scalable demo on a real node: the queue moves, replicas and pods follow\n{recommendation}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
async def demo(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        images = node_images()  # MissingBinaryError naming `make images`
    except MissingBinaryError as e:
        if "stale" not in str(e):
            raise
        # `make demo` builds them just before; an edit of operator/ since then makes them stale
        # without changing what the demo runs in them (Dask and dask-kubernetes): say so, go on.
        console.print(f"[yellow]WARNING:[/] {e}; the demo goes on with the images as built")
        images = node_images(check_inputs=False)
    node_wait = float(os.environ.get("SCALABLE_NODE_WAIT") or 0)
    if Path(f"/sys/class/net/{real_node.BRIDGE}").exists():
        if not node_wait:
            console.print(f"[red]ERROR:[/] the bridge {real_node.BRIDGE} exists: another node runs on this machine "
                          "(a test, or `make testenv-up`; stop it with `make testenv-down` if it is yours). "
                          "Only one node can run at a time: try again when it is gone, or set SCALABLE_NODE_WAIT=<seconds>.")
            return 3
        say(f"another node runs on this machine (bridge {real_node.BRIDGE}); waiting up to {node_wait:.0f} s for it to go")
    # SIGTERM tears down like Ctrl-C (the node's bridge and iptables rules must not stay behind).
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    summary: dict[str, Any] = {"left_behind": None}
    cp = ControlPlane(node=True)
    code = 1
    try:
        say("starting the control plane and one real node (containerd, kubelet, kube-proxy, CNI bridge, CoreDNS)")
        started = time.monotonic()
        cp.start()  # waits up to SCALABLE_NODE_WAIT for another node to go first
        say(f"control plane at {cp.server} and node {real_node.NODE_NAME} Ready in {time.monotonic() - started:.0f} s")
        code = await run(cp, images, args, out, summary)
    finally:
        say("tearing everything down")
        left = cp.stop()
        summary["left_behind"] = left
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        if left:
            console.print("[red]the node left things behind:[/]\n  " + "\n  ".join(left))
        else:
            console.print("teardown: the node left nothing behind (no processes, mounts, cgroups, bridge, veths or iptables rules)")
    return 1 if left else code


async def run(cp: ControlPlane, images: dict, args: argparse.Namespace, out: Path, summary: dict) -> int:
    async with AsyncExitStack() as stack:
        await install_crds(cp.kubeconfig, dask_kubernetes_crd_files() + repo_crd_files())
        say("installing dask-kubernetes' own controller (Helm chart from its wheel, image "
            f"{images['dask-kubernetes'].ref})")
        controller = asyncio.ensure_future(asyncio.to_thread(install_controller, cp.kubeconfig, images["dask-kubernetes"]))
        stack.push_async_callback(_settle, controller)
        admin = await kr8s.asyncio.api(kubeconfig=str(cp.kubeconfig))
        for ns in (RELEASE_NAMESPACE, NAMESPACE):
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": ns}}, api=admin).create()

        say("starting Prometheus; it finds the scheduler and worker pods through the API server (kubernetes_sd_configs)")
        prometheus = PrometheusServer(scrape_interval="1s")
        prometheus.discover_pods(cp.server, cp.admin_token_file, cp.ca_file, namespaces=[NAMESPACE])
        await asyncio.to_thread(prometheus.start)
        stack.callback(prometheus.stop)

        say("applying the chart's ServiceAccount and least-privilege RBAC; the operator runs under its token")
        docs = render()
        apply_documents(cp.kubeconfig, rbac_documents(docs))
        sa_kubeconfig = await service_account_kubeconfig(admin, cp.kubeconfig, RELEASE_NAMESPACE, RELEASE,
                                                         out / "operator.kubeconfig", create=False)
        telemetry = out / "telemetry"
        history = out / "client-runs"
        for path in (telemetry, history, out / "spool"):
            shutil.rmtree(path, ignore_errors=True)  # a fresh volume and client on every run
        n = seed_history(history)
        say(f"recorded {n} earlier observations of task {TASK!r} on this host ({history}), as the scalable "
            "library records them; they reach the operator through its ingestion endpoint")

        max_cpu = await cpu_per_worker(admin, args.max_workers)
        objects = example_objects(prometheus.url, images["dask"].ref, args.max_workers, args.mode, max_cpu)
        for obj in objects:
            if obj["kind"] != "AdvisorModel":  # after the history is in: it trains at once
                await create(admin, obj)
        names = {o["kind"]: o["metadata"]["name"] for o in objects}
        wf_name, model_name, cluster_name = names["ScalableWorkflow"], names["AdvisorModel"], names["DaskCluster"]
        say("created from examples/: " + ", ".join(f"{k}/{v}" for k, v in names.items())
            + f" (Dask image {images['dask'].ref}; maxAllowed cpu {max_cpu}, so {args.max_workers} sized workers fit on the node)")
        await controller
        say("dask-kubernetes' controller is running; waiting for it to start the scheduler pod")
        address = await asyncio.to_thread(scheduler_address, cp.kubeconfig, NAMESPACE, cluster_name, 300)
        dashboard = "http://" + address.removeprefix("tcp://").rsplit(":", 1)[0] + ":8787"
        selector = f"dask.org/cluster-name={cluster_name},dask.org/component=worker"
        before_sizing = {p["metadata"]["name"] for p in await list_pods(admin, selector)}

        metrics_port, ingest_port = free_ports(2)
        overrides = {"--telemetry-path": str(telemetry), "--scheduler-url": dashboard,
                     "--metrics-port": str(metrics_port), "--ingest-port": str(ingest_port)}
        argv = [a if a.split("=", 1)[0] not in overrides else f"{a.split('=', 1)[0]}={overrides[a.split('=', 1)[0]]}"
                for a in operator_args(docs)]
        log_path = out / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(sa_kubeconfig), "POD_NAMESPACE": RELEASE_NAMESPACE, "POD_NAME": "demo-operator"}
        scalable = Path(sys.executable).parent / "scalable"
        command = [str(scalable)] if scalable.exists() else [sys.executable, "-c", "from scalable.cli.main import main; main()"]
        say(f"scheduler pod at {address}; starting the operator: scalable {' '.join(argv)}  (log: {log_path})")
        log = open(log_path, "wb")
        stack.callback(log.close)
        operator = subprocess.Popen([*command, *argv], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stack.callback(lambda: terminate(operator.pid, timeout=20, proc=operator))

        outcome = await push_history(admin, cp, history, ingest_port, names["ScalableWorkflow"], out)
        summary["push"] = outcome
        for obj in objects:
            if obj["kind"] == "AdvisorModel":
                await create(admin, obj)
        say("waiting for the AdvisorModel to train and the worker template to be sized")
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
            group = await get(admin, "kubernetes.dask.org/v1", "daskworkergroups", f"{cluster_name}-default")
            sized = (group["spec"]["worker"]["spec"]["containers"][0].get("resources") or {}).get("limits")
            # sized by the trained model, or (model failed / too little data) by the percentile advisor
            if rec and sized and (rec.get("modelVersion") or phase in ("Failed", "InsufficientData")):
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
        template = group["spec"]["worker"]["spec"]["containers"][0].get("resources")
        console.print(f"DaskWorkerGroup {cluster_name}-default worker template now asks for: {template}  "
                      f"(worker pods created from now on get it; the running one, {', '.join(sorted(before_sizing)) or '-'}, "
                      "keeps what it started with)")
        recommendation = (f"recommended {rec.get('cpu')} CPU, {rec.get('memory')} ({rec.get('method')}, confidence "
                          f"{rec.get('confidence') or 0:.2f}); worker pods get limits {template['limits']}")
        summary.update(recommendation=rec, template=template, max_cpu=max_cpu, scheduler=address)

        queries = PrometheusQueries()
        promql = {k: string.Template(getattr(queries, k)).safe_substitute(namespace=NAMESPACE, cluster=cluster_name)
                  for k in ("queued", "processing", "workers")}
        await asyncio.to_thread(prometheus.wait_for, promql["workers"], lambda v: v >= 1, 120)
        say(f"Prometheus scrapes the scheduler pod; the operator's default PromQL: {promql['queued']}")

        waves = [int(w) for w in args.waves.split(",")]
        say(f"running the workload from this host: waves of {waves} tasks of {TASK_SECONDS} s; "
            "timeline (a line per change, + / - a worker pod starting / leaving)")
        done, errors = threading.Event(), []
        thread = threading.Thread(target=workload, args=(address, waves, 8.0, done, errors), daemon=True)
        start = time.monotonic()
        thread.start()
        samples: list[dict] = []
        pods_seen: dict[str, WorkerPod] = {}
        console.print(f"{'t':>5}  {'replicas':>8}  {'pods Running':>12}  {'workers':>7}  {'queued':>6}  {'processing':>10}  decision")
        last_line, last_print, settled_since, settled = None, -10.0, None, False
        while time.monotonic() - start < args.timeout:
            t = round(time.monotonic() - start, 1)
            cluster = await get(admin, "kubernetes.dask.org/v1", "daskclusters", cluster_name)
            replicas = cluster["spec"]["worker"]["replicas"]
            pods = await list_pods(admin, selector)
            running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
            running_names = {p["metadata"]["name"] for p in running}
            for p in pods:
                name = p["metadata"]["name"]
                seen = pods_seen.get(name)
                if seen is None:
                    res = _resources(p)
                    seen = pods_seen[name] = WorkerPod(
                        name, p["metadata"]["creationTimestamp"], name in before_sizing,
                        (res.get("requests") or {}).get("memory"), (res.get("limits") or {}).get("memory"),
                        (res.get("limits") or {}).get("cpu"), t)
                if seen.running_at is None and name in running_names:
                    seen.running_at = t
                    console.print(f"{'':>7}+ pod {name} Running (limits: memory {seen.memory_limit or 'none'}, "
                                  f"cpu {seen.cpu_limit or 'none'})")
                if seen.leaving_at is None and p["metadata"].get("deletionTimestamp"):
                    seen.leaving_at = t
                    console.print(f"{'':>7}- pod {name} terminating (dask-kubernetes retired its worker)")
            listed = {p["metadata"]["name"] for p in pods}
            for seen in pods_seen.values():
                if seen.gone_at is None and seen.name not in listed:
                    seen.gone_at = t
                    if seen.leaving_at is None:
                        console.print(f"{'':>7}- pod {seen.name} gone")
            queued = prometheus.value(promql["queued"]) or 0
            processing = prometheus.value(promql["processing"]) or 0
            try:
                connected = (await asyncio.to_thread(counts, dashboard))["workers"]
            except OSError:
                connected = -1
            wf = await get(admin, "scalable.dev/v1alpha1", "scalableworkflows", wf_name)
            decision = ((wf.get("status") or {}).get("groups") or [{}])[0].get("lastDecision") or {}
            sample = {"t": t, "replicas": replicas, "pods_running": len(running), "pods": len(pods), "workers": connected,
                      "queued": queued, "processing": processing, "action": decision.get("action")}
            samples.append(sample)
            line = (replicas, len(running), connected, decision.get("action"), decision.get("time"))
            if line != last_line or t - last_print >= 5:
                reason = decision.get("reason", "").split(" (", 1)[0]  # the figures; status has the rest
                console.print(f"{t:5.0f}  {replicas:8d}  {len(running):12d}  {connected:7d}  {int(queued):6d}  {int(processing):10d}  "
                              f"{decision.get('action', '-')}: {reason[:70]}")
                last_line, last_print = line, t
            if errors:
                break
            if done.is_set() and replicas == 1 and len(pods) == 1 and len(running) == 1 and queued == 0 and processing == 0:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 3:
                    settled = True
                    break
            else:
                settled_since = None
            await asyncio.sleep(1)
        wall = time.monotonic() - start
        summary.update(samples=samples, pods=[asdict(p) for p in pods_seen.values()], settled=settled, workload_seconds=wall)
        if errors:
            console.print(f"[red]the workload failed:[/] {errors[0]!r}")
            logs = kubectl(cp.kubeconfig, "-n", NAMESPACE, "logs", "-l", f"dask.org/cluster-name={cluster_name}",
                           "--all-containers", "--prefix", "--tail=40", check=False)
            console.print(logs.stdout + logs.stderr, markup=False)

        png = out / "demo.png"
        plot(samples, png, recommendation)
        peak = max(s["replicas"] for s in samples)
        peak_pods = max(s["pods_running"] for s in samples)
        last = samples[-1]
        say(f"done in {wall:.0f} s: replicas went 1 -> {peak} -> {last['replicas']} and worker pods Running "
            f"1 -> {peak_pods} -> {last['pods_running']} as the queue grew and drained; plot: {png}")

        console.print("Every worker pod of the run (from the API server):")
        console.print(f"  {'pod':<50}  {'created':<26}  {'Running at t':>12}  {'left at t':>9}  {'memory request':>14}  "
                      f"{'memory limit':>12}  {'cpu limit':>9}")
        for p in sorted(pods_seen.values(), key=lambda p: (p.created, p.seen_at)):
            left_at = p.leaving_at if p.leaving_at is not None else p.gone_at
            console.print(f"  {p.name:<50}  {'before the recommendation' if p.before_sizing else 'after sizing':<26}  "
                          f"{'-' if p.running_at is None else f'{p.running_at:.0f}':>12}  "
                          f"{'-' if left_at is None else f'{left_at:.0f}':>9}  {p.memory_request or 'none':>14}  "
                          f"{p.memory_limit or 'none':>12}  {p.cpu_limit or 'none':>9}")
        columns = ("POD:.metadata.name,PHASE:.status.phase,CREATED:.metadata.creationTimestamp,"
                   "MEMORY_REQUEST:.spec.containers[0].resources.requests.memory,"
                   "MEMORY_LIMIT:.spec.containers[0].resources.limits.memory,CPU_LIMIT:.spec.containers[0].resources.limits.cpu")
        got = kubectl(cp.kubeconfig, "-n", NAMESPACE, "get", "pods", "-l", selector, "-o", f"custom-columns={columns}", check=False)
        console.print(f"$ kubectl -n {NAMESPACE} get pods -l {selector} -o custom-columns={columns}\n{got.stdout}{got.stderr}",
                      end="", markup=False)
        first = [p for p in pods_seen.values() if p.before_sizing]
        after = [p for p in pods_seen.values() if not p.before_sizing]
        console.print(
            f"The first worker pod ({', '.join(p.name for p in first) or '-'}) was created before the recommendation and keeps "
            f"what it started with (memory limit {', '.join(p.memory_limit or 'none' for p in first) or '-'}); "
            f"the {len(after)} created after sizing got requests = limits = {template['limits']} "
            "(dask-kubernetes applies a changed template only to workers it creates afterwards).")

        events = []
        async with admin.call_api("GET", version="v1", namespace=NAMESPACE, url="events") as r:
            events = [f"{e['reason']}: {e['message'][:110]}" for e in
                      sorted(r.json()["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
                      if e["involvedObject"].get("kind") == "ScalableWorkflow"]
        console.print("Events of the ScalableWorkflow:\n  " + "\n  ".join(events[-8:]))
        operator.send_signal(signal.SIGTERM)
        await asyncio.to_thread(operator.wait, 20)
        if not settled:
            console.print("[red]the replicas and worker pods did not settle back to 1 in time[/] (--timeout)")
        return 0 if peak > 1 and peak_pods > 1 and settled and not errors else 1


async def _settle(task: asyncio.Future) -> None:
    """Let a background step finish (or fail) before the control plane stops under it."""
    if not task.done():
        try:
            await task
        except Exception:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "_output" / "demo"), help="where the plot, logs and telemetry go")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--mode", default="Predictive", choices=["Predictive", "Reactive"], help="spec.scaling.mode")
    parser.add_argument("--waves", default="60,100", help="tasks per wave, comma separated")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for sizing, and for the workload to settle")
    args = parser.parse_args()
    t0 = time.monotonic()
    try:
        code = asyncio.run(demo(args))
    except MissingBinaryError as e:
        console.print(f"[red]ERROR:[/] {e}")
        return 2
    except ControlPlaneError as e:
        console.print(f"[red]ERROR:[/] {e}")
        return 2
    except RuntimeError as e:
        console.print(f"[red]ERROR:[/] {e}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/] (everything was torn down)")
        return 130
    console.print(f"demo wall time: {time.monotonic() - t0:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
