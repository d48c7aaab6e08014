"""Our operator for real: `helm install` of charts/scalable-operator with the image built from
operator/Dockerfile, running on the real node as uid 65532 on a read-only root filesystem,
under its ServiceAccount, its telemetry on the chart's PVC (bound to a local volume of the
node). /healthz, /metrics and ingestion answer through its Service; `helm upgrade` keeps the
PVC and its data.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


from tests.support.chart import CHART_DIR, helm
from tests.support.dask_kubernetes import kubectl
from tests.support.node import NODE_NAME

STORAGE_CLASS = "scalable-local"


def local_volume(name: str, path: Path, size: str = "1Gi") -> list[dict]:
    """A StorageClass without a provisioner and a local PersistentVolume on the real node: how
    clusters offer node-local disks; the chart's PVC binds to it when its pod is scheduled."""
    return [
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": STORAGE_CLASS},
         "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer",
         "reclaimPolicy": "Retain"},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
         "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                  "local": {"path": str(path)},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}},
    ]


def _json(kubeconfig, *args):
    return json.loads(kubectl(kubeconfig, *args, "-o", "json").stdout)


def _operator_pod(kubeconfig, namespace, timeout=180.0):
    deadline = time.monotonic() + timeout
    pods: list = []
    while time.monotonic() < deadline:
        pods = _json(kubeconfig, "-n", namespace, "get", "pods", "-l", "app.kubernetes.io/name=scalable-operator")["items"]
        ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        if len(ready) == 1 and len(pods) == 1:
            return ready[0]
        time.sleep(1)
    raise AssertionError(f"no single Ready operator pod in {timeout}s: {[p['status'] for p in pods]}")


RELEASE = "scalable-operator"


def _install(kubeconfig, namespace, image_ref, volume_dir, tmp_path, *, tmpfs_size: str | None = None,
             extra_values: dict | None = None) -> tuple[str, Path]:
    """A local PersistentVolume at volume_dir (on a tmpfs of tmpfs_size, if given) and the
    chart installed into the test's namespace with the operator image (and extra_values);
    returns the PV's name and the values file."""
    volume_dir.mkdir(parents=True)
    if tmpfs_size:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size},mode=0755", "tmpfs", str(volume_dir)], check=True)
    shutil.chown(volume_dir, 65532, 65532)
    pv = f"telemetry-{namespace}"
    kubectl(kubeconfig, "apply", "-f", "-", input="\n".join(json.dumps(d) for d in local_volume(pv, volume_dir)))
    repository, _, tag = image_ref.rpartition(":")
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [namespace],
        "telemetry": {"persistence": {"storageClass": STORAGE_CLASS, "size": "1Gi"}},
        # the session's fixtures installed the CRDs for every test (outside Helm); a release
        # that rendered them too would be refused as not owning them
        "crds": {"install": False},
        **(extra_values or {}),
    }
    values_file = tmp_path / "values.yaml"
    # JSON (which is YAML) quotes every string: an image tag such as 291207e7 written as plain
    # YAML by PyYAML is a float to Helm's parser, and the chart's schema refuses it
    values_file.write_text(json.dumps(values, indent=2))
    helm("install", RELEASE, str(CHART_DIR), "--namespace", namespace, "-f", str(values_file),
         "--wait", "--timeout=240s", kubeconfig=kubeconfig, timeout=300)
    return pv, values_file


def _uninstall(kubeconfig, namespace, pv, volume_dir):
    helm("uninstall", RELEASE, "--namespace", namespace, "--wait", kubeconfig=kubeconfig, check=False, timeout=120)
    kubectl(kubeconfig, "-n", namespace, "delete", "pvc", "--all", "--wait=true", "--timeout=60s", check=False)
    kubectl(kubeconfig, "delete", "pv", pv, "--wait=false", check=False)
    if volume_dir.is_mount():
        subprocess.run(["umount", str(volume_dir)], check=False)


def _service(kubeconfig, namespace) -> tuple[str, dict[str, int]]:
    service = _json(kubeconfig, "-n", namespace, "get", "service", RELEASE)
    return service["spec"]["clusterIP"], {p["name"]: p["port"] for p in service["spec"]["ports"]}


def _pusher(kubeconfig, namespace):
    """A ScalableWorkflow `wf` and a ServiceAccount allowed to push its telemetry; returns
    push(ip, port, body) -> (status, answer)."""
    workflow = {"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableWorkflow", "metadata": {"name": "wf"},
                "spec": {"clusterRef": {"name": "sim"}, "scaling": {"mode": "Off"},
                         "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 2}]}}
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", input=json.dumps(workflow))
    kubectl(kubeconfig, "-n", namespace, "create", "serviceaccount", "client")
    kubectl(kubeconfig, "-n", namespace, "create", "role", "push", "--verb=get,update",
            "--resource=scalableworkflows.scalable.dev")
    kubectl(kubeconfig, "-n", namespace, "create", "rolebinding", "push", "--role=push",
            f"--serviceaccount={namespace}:client")
    token = kubectl(kubeconfig, "-n", namespace, "create", "token", "client").stdout.strip()

    def push(ip: str, port: int, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{ip}:{port}/v1/namespaces/{namespace}/scalableworkflows/wf/runs",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    return push


def _record(i: int, pad: str = "") -> dict:
    return {"kind": "task", "task": "simulate", "tag": "default", "submitted_at": 1.7e9 + i, "duration_s": 3.0,
            "peak_memory_bytes": 2**30, "input_features": {"size": i, **({"note": pad} if pad else {})}}


def test_the_chart_runs_the_operator_image_hardened_with_its_pvc_kept_across_upgrade(
    kube_cluster, namespace, node_images, tmp_path,
):
    kubeconfig = kube_cluster.kubeconfig
    volume_dir = kube_cluster.node.workdir / "volumes" / namespace
    release = RELEASE
    pv = f"telemetry-{namespace}"
    try:
        pv, values_file = _install(kubeconfig, namespace, node_images["operator"].ref, volume_dir, tmp_path)
        pod = _operator_pod(kubeconfig, namespace)
        name = pod["metadata"]["name"]

        # uid 65532, a read-only root filesystem, the ServiceAccount's token, the PVC mounted.
        assert kubectl(kubeconfig, "-n", namespace, "exec", name, "--", "id", "-u").stdout.strip() == "65532"
        denied = kubectl(kubeconfig, "-n", namespace, "exec", name, "--", "touch", "/opt/x", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr + denied.stdout
        assert pod["spec"]["serviceAccountName"] and pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v)
        pvc = _json(kubeconfig, "-n", namespace, "get", "pvc", claim)
        assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == pv

        # /healthz and /metrics through the Service's ClusterIP (kube-proxy's rules on the host).
        ip, ports = _service(kubeconfig, namespace)
        with urllib.request.urlopen(f"http://{ip}:{ports['metrics']}/healthz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://{ip}:{ports['metrics']}/metrics", timeout=10) as r:
            assert b"scalable_" in r.read()

        # Ingestion through the Service, authenticated by a real ServiceAccount token (TokenReview).
        push = _pusher(kubeconfig, namespace)
        run_id = f"run-{secrets.token_hex(4)}"
        assert push(ip, ports["ingest"], {"run": {"run_id": run_id}, "records": [_record(1)]}) == (
            200, {"run_id": run_id, "accepted": 1, "duplicates": 0})
        stored = volume_dir / namespace / "runs" / run_id / "tasks.jsonl"
        assert stored.exists(), sorted(str(p) for p in volume_dir.rglob("*"))

        # helm upgrade: a new pod, the same claim, the data still there.
        helm("upgrade", release, str(CHART_DIR), "--namespace", namespace, "-f", str(values_file),
             "--set", "operator.verbose=true", "--wait", "--timeout=240s", kubeconfig=kubeconfig, timeout=300)
        deadline = time.monotonic() + 120
        while _operator_pod(kubeconfig, namespace)["metadata"]["name"] == name and time.monotonic() < deadline:
            time.sleep(1)
        upgraded = _operator_pod(kubeconfig, namespace)
        assert upgraded["metadata"]["name"] != name
        after = _json(kubeconfig, "-n", namespace, "get", "pvc", claim)
        assert after["metadata"]["uid"] == pvc["metadata"]["uid"] and after["spec"]["volumeName"] == pv
        assert json.loads(stored.read_text().splitlines()[0])["input_features"] == {"size": 1}
    finally:
        _uninstall(kubeconfig, namespace, pv, volume_dir)


def test_a_telemetry_volume_that_really_fills_answers_507_and_keeps_what_it_has(
    kube_cluster, namespace, node_images, tmp_path,
):
    """The chart's PVC on a 72 MiB tmpfs (the operator keeps 64 MiB in reserve): pushes of about
    half a megabyte each until the volume refuses; nothing partial is stored and every
    acknowledged batch reads back whole."""
    from scalable.telemetry.loader import load_tasks

    kubeconfig = kube_cluster.kubeconfig
    volume_dir = kube_cluster.node.workdir / "volumes" / namespace
    pv = f"telemetry-{namespace}"
    try:
        pv, _ = _install(kubeconfig, namespace, node_images["operator"].ref, volume_dir, tmp_path, tmpfs_size="72m")
        _operator_pod(kubeconfig, namespace)
        ip, ports = _service(kubeconfig, namespace)
        push = _pusher(kubeconfig, namespace)
        acknowledged, refusal = 0, None
        pad = "x" * 200
        for batch in range(60):
            run_id = f"run-{batch:03d}"
            records = [_record(batch * 10_000 + i, pad) for i in range(2000)]
            status, answer = push(ip, ports["ingest"], {"run": {"run_id": run_id}, "records": records})
            if status == 507:
                refusal = (run_id, answer)
                break
            assert status == 200 and answer["accepted"] == len(records), (status, answer)
            acknowledged += len(records)
        assert refusal is not None, "a 72 MiB volume must fill within 60 batches of ~0.5 MB"
        assert acknowledged > 0 and "full" in refusal[1]["error"]
        runs = volume_dir / namespace / "runs"
        assert not (runs / refusal[0] / "tasks.jsonl").exists() or not (runs / refusal[0] / "tasks.jsonl").read_text()
        table = load_tasks(runs, cache=False)
        assert len(table.frame) == acknowledged, "every acknowledged record reads back, nothing partial"
        # The operator is still healthy; a batch that no longer fits is refused again, whole.
        with urllib.request.urlopen(f"http://{ip}:{ports['metrics']}/healthz", timeout=10) as r:
            assert r.status == 200
        late = [_record(900_000 + i, pad) for i in range(2000)]
        assert push(ip, ports["ingest"], {"run": {"run_id": "run-late"}, "records": late})[0] == 507
        assert len(load_tasks(runs, cache=False).frame) == acknowledged
    finally:
        _uninstall(kubeconfig, namespace, pv, volume_dir)


def test_the_operator_pod_killed_mid_scale_repeats_no_step(
    kube_cluster, namespace, node_images, dask_kubernetes_controller, tmp_path,
):
    """The Helm-installed operator scales a real DaskCluster from the scheduler's own metrics
    (in the cluster it resolves the scheduler's Service; no Prometheus); its pod is deleted with
    --force --grace-period=0 while the queue is full. The new pod carries on from the replicas
    the old one applied: no scale-up step is taken twice, bounds hold, every task finishes."""
    import distributed

    from tests.support.dask_kubernetes import dask_cluster, scheduler_address, ship_workloads
    from tests.support.workloads import sleep_task

    kubeconfig = kube_cluster.kubeconfig
    volume_dir = kube_cluster.node.workdir / "volumes" / namespace
    pv = f"telemetry-{namespace}"
    cluster = dask_cluster("sim", node_images["dask"].ref, replicas=1)
    workflow = {"apiVersion": "scalable.dev/v1alpha1", "kind": "ScalableWorkflow", "metadata": {"name": "wf"},
                "spec": {"clusterRef": {"name": "sim"},
                         "scaling": {"mode": "Reactive", "pollIntervalSeconds": 2, "cooldownSeconds": 4},
                         "workerGroups": [{"name": "default", "task": "sleep_task", "minWorkers": 1, "maxWorkers": 3}]}}
    try:
        pv, _ = _install(kubeconfig, namespace, node_images["operator"].ref, volume_dir, tmp_path)
        old = _operator_pod(kubeconfig, namespace)["metadata"]["name"]
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", input="\n".join(json.dumps(d) for d in (cluster, workflow)))
        address = scheduler_address(kubeconfig, namespace, "sim")
        replicas_seen: list[int] = []
        with distributed.Client(address, timeout=30) as client:
            ship_workloads(client, tmp_path)
            futures = client.map(sleep_task, [0.5] * 240, pure=False)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                replicas = _json(kubeconfig, "-n", namespace, "get", "daskcluster", "sim")["spec"]["worker"]["replicas"]
                replicas_seen.append(replicas)
                if replicas > 1:
                    break
                time.sleep(0.5)
            assert replicas_seen[-1] > 1, f"the operator did not scale up from the queue: {replicas_seen}"
            kubectl(kubeconfig, "-n", namespace, "delete", "pod", old, "--force", "--grace-period=0")
            new = _operator_pod(kubeconfig, namespace)
            assert new["metadata"]["name"] != old
            while not all(f.done() for f in futures):
                replicas_seen.append(_json(kubeconfig, "-n", namespace, "get", "daskcluster", "sim")["spec"]["worker"]["replicas"])
                time.sleep(0.5)
            assert sum(client.gather(futures)) == 120.0
        decisions = [json.loads(line) for path in (volume_dir / namespace / "runs").glob("operator-wf-*/decisions.jsonl")
                     for line in path.read_text().splitlines()]
        steps = [(d["from_workers"], d["to_workers"]) for d in decisions if d["action"] == "scale_up"]
        assert steps and len(steps) == len(set(steps)), f"a scale-up step was repeated: {steps}"
        assert min(replicas_seen) >= 1 and max(replicas_seen) <= 3, replicas_seen
    finally:
        _uninstall(kubeconfig, namespace, pv, volume_dir)
