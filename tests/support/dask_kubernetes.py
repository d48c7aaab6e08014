"""dask-kubernetes' own controller on the real node, and DaskClusters whose pods really run.

- `install_controller(...)`: `helm install` of the chart shipped in the dask-kubernetes wheel
  (dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator), pointed at the locally
  built controller image; returns when its Deployment is available. Nothing of ours plays its
  part: it creates the scheduler and worker pods and retires workers through the scheduler.
- `dask_cluster(...)`: a DaskCluster on the locally built Dask image, with the scheduler's
  HTTP API (graceful retirement) and /metrics, Prometheus annotations on scheduler and workers,
  non-root on a read-only root filesystem.
- `on_node(doc, image)`: an existing DaskCluster or DaskWorkerGroup document (examples/, say)
  adapted to the node the same way, everything else kept as written.
- `worker_pods(...)`, `scheduler_address(...)`: what the controller made of it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.dask_processes import SCHEDULER_ROUTES  # with the HTTP API dask-kubernetes retires workers through
from tests.support.images import NodeImage

DASK = "kubernetes.dask.org/v1"
CONTROLLER_NAMESPACE = "dask-operator"
CONTROLLER_RELEASE = "dask-kubernetes-operator"


def chart_dir() -> Path:
    import dask_kubernetes

    path = Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator"
    if not (path / "Chart.yaml").is_file():
        raise FileNotFoundError(f"no Helm chart in {path}; is dask-kubernetes installed from its wheel?")
    return path


def kubectl(kubeconfig: Path | str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                          input=input, check=check)


def install_controller(kubeconfig: Path | str, image: NodeImage, *, timeout: float = 300.0) -> None:
    """helm install dask-kubernetes' own chart with our image; waits for its Deployment.
    Raises RuntimeError with helm's output when it fails."""
    from tests.support.chart import helm

    name, _, tag = image.ref.rpartition(":")
    helm("upgrade", "--install", CONTROLLER_RELEASE, str(chart_dir()),
         "--namespace", CONTROLLER_NAMESPACE, "--create-namespace",
         "--set", f"image.name={name}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
         # The test session has installed the CRDs (server-side) already.
         "--skip-crds", "--wait", f"--timeout={int(timeout)}s",
         kubeconfig=kubeconfig, timeout=timeout + 30)


def _http_api_env() -> list[dict[str, str]]:
    return [{"name": "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES", "value": json.dumps(SCHEDULER_ROUTES)}]


def _hardened(container: dict[str, Any]) -> dict[str, Any]:
    container.setdefault("securityContext", {}).update({
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    })
    container.setdefault("volumeMounts", []).append({"name": "tmp", "mountPath": "/tmp"})
    return container


def worker_pod_spec(image: str, *, nthreads: int = 1, resources: dict[str, Any] | None = None,
                    extra_args: list[str] = (), nanny: bool = True) -> dict[str, Any]:
    args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", str(nthreads),
            "--dashboard", "--dashboard-address", ":8788", *extra_args]
    if not nanny:
        args.append("--no-nanny")
    container: dict[str, Any] = {
        "name": "worker", "image": image, "imagePullPolicy": "Never", "args": args,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    if resources:
        container["resources"] = resources
    return {"containers": [_hardened(container)], "volumes": [{"name": "tmp", "emptyDir": {}}]}


def dask_cluster(name: str, image: str, *, replicas: int = 1, nthreads: int = 1,
                 worker_resources: dict[str, Any] | None = None, worker_args: list[str] = (),
                 nanny: bool = True) -> dict[str, Any]:
    """A DaskCluster whose scheduler and workers run on the locally built Dask image."""
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"}
    scheduler = _hardened({
        "name": "scheduler", "image": image, "imagePullPolicy": "Never",
        "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        "env": _http_api_env(),
        "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                  {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "periodSeconds": 1},
    })
    return {
        "apiVersion": DASK, "kind": "DaskCluster", "metadata": {"name": name},
        "spec": {
            "scheduler": {
                "metadata": {"annotations": scrape | {"prometheus.io/port": "8787"}},
                "spec": {"containers": [scheduler], "volumes": [{"name": "tmp", "emptyDir": {}}]},
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                              {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"}],
                },
            },
            "worker": {
                "replicas": replicas,
                "metadata": {"annotations": scrape | {"prometheus.io/port": "8788"}},
                "spec": worker_pod_spec(image, nthreads=nthreads, resources=worker_resources,
                                        extra_args=list(worker_args), nanny=nanny),
            },
        },
    }


def on_node(doc: dict[str, Any], image: str) -> dict[str, Any]:
    """A copy of an existing DaskCluster or DaskWorkerGroup document (examples/daskcluster.yaml,
    say) adapted to the real node the way `dask_cluster` builds one: every scheduler and worker
    container on `image` with `imagePullPolicy: Never`, non-root on a read-only root filesystem
    with an emptyDir on /tmp, and the scheduler's HTTP routes (the API dask-kubernetes retires
    workers through, /metrics) in its environment. Args, ports, probes, annotations, replicas and
    the Service stay as the document wrote them."""
    out = copy.deepcopy(doc)
    spec = out["spec"]
    parts = [("worker", spec["worker"])] if out["kind"] == "DaskWorkerGroup" else \
        [("scheduler", spec["scheduler"]), ("worker", spec["worker"])]
    for part, template in parts:
        pod = template["spec"]
        for container in pod["containers"]:
            container["image"] = image
            container["imagePullPolicy"] = "Never"
            container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m.get("mountPath") != "/tmp"]
            _hardened(container)
            if part == "scheduler":
                env = [e for e in container.get("env", []) if e["name"] != "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]
                container["env"] = env + _http_api_env()
        pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != "tmp"] + [{"name": "tmp", "emptyDir": {}}]
    return out


def ship_workloads(client: Any, directory: Path) -> None:
    """Make `tests.support.workloads` importable on the scheduler and on every worker, present
    and future, of a cluster whose image has no tests/ (the scheduler unpickles task graphs
    too): `Client.upload_file` of a zip that holds just that module."""
    import zipfile

    from tests.support import workloads

    path = directory / "scalable_test_workloads.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tests/__init__.py", "")
        zf.writestr("tests/support/__init__.py", "")
        zf.write(workloads.__file__, "tests/support/workloads.py")
    client.upload_file(str(path))


def pods(kubeconfig: Path | str, namespace: str, selector: str) -> list[dict[str, Any]]:
    r = kubectl(kubeconfig, "-n", namespace, "get", "pods", "-l", selector, "-o", "json")
    return json.loads(r.stdout)["items"]


def worker_pods(kubeconfig: Path | str, namespace: str, cluster: str, *, running_only: bool = False) -> list[dict[str, Any]]:
    found = pods(kubeconfig, namespace, f"dask.org/cluster-name={cluster},dask.org/component=worker")
    found = [p for p in found if not p["metadata"].get("deletionTimestamp")] if running_only else found
    return [p for p in found if p["status"].get("phase") == "Running"] if running_only else found


def scheduler_address(kubeconfig: Path | str, namespace: str, cluster: str, timeout: float = 180.0) -> str:
    """tcp://<scheduler pod IP>:8786 once the scheduler pod is Ready (the host reaches pod
    addresses over the node's bridge; cluster DNS names resolve only inside pods)."""
    deadline = time.monotonic() + timeout
    last = "no scheduler pod"
    while time.monotonic() < deadline:
        found = pods(kubeconfig, namespace, f"dask.org/cluster-name={cluster},dask.org/component=scheduler")
        for pod in found:
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conds.get("Ready") == "True" and pod["status"].get("podIP"):
                return f"tcp://{pod['status']['podIP']}:8786"
            last = f"{pod['metadata']['name']}: {pod['status'].get('phase')} {pod['status'].get('containerStatuses')}"
        time.sleep(0.5)
    raise AssertionError(f"the scheduler of {namespace}/{cluster} was not Ready in {timeout}s ({last})")
