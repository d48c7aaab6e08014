"""The chart installed on a real API server; least privilege, proven.

Helm: `helm install` puts the operator's objects in place and the chart's CRDs Established (this
control plane gets only dask-kubernetes' CRDs from the test, ours come from the chart's crds/);
`helm upgrade` keeps the telemetry PVC (same object, same uid); `helm uninstall` leaves it, and a
new install adopts it again. There is no kubelet, so the PVC object and its uid stand for its data.

Least privilege: the chart's RBAC is enough for the operator, and none of it is unused; both in
the default cluster-wide mode (ClusterRole) and watching one namespace (Role there).

A control plane of its own (kube-apiserver with the RBAC authorizer and an audit log of every
request the operator's ServiceAccount makes). The chart's rendered ServiceAccount, ClusterRole,
leader Role and bindings are applied as they are; `scalable operator run` (a subprocess, with
the arguments of the rendered Deployment and the image's environment, on a read-only root
filesystem with an empty tmpfs on /tmp and only its volume writable, as the chart runs it)
authenticates with a TokenRequest token of that ServiceAccount. The main flow runs: a DaskCluster and its worker group, an AdvisorModel
trained from telemetry, a ScalableWorkflow that sizes the workers and scales replicas from the
queue, a client pushing telemetry to the ingestion endpoint, and a clean shutdown.

Then the audit log must show (1) no request of the operator was forbidden, and (2) every verb
on every resource the chart grants was used and allowed. The one grant on core pods (`list`,
for the WorkersScheduled condition) is shown to be enough (a refused worker pod is named in the
condition under these rules), scoped (only its cluster's workers, by label) and read only (the
API server's SubjectAccessReview refuses get, watch, create, delete, patch, exec, logs, eviction). A grant that the flow does not use
fails the test, naming the rule: remove it from charts/scalable-operator/templates/_helpers.tpl
(or rbac.yaml), or drive the code path that needs it here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import kr8s.asyncio
import pytest
import yaml

from tests.integration.harness import (
    QueueExporter,
    condition,
    create,
    create_dask_cluster,
    get,
    scalable_workflow,
    wait_until,
    write_history,
)
from tests.support.chart import (
    CHART_DIR,
    RELEASE,
    RELEASE_NAMESPACE,
    apply_documents,
    find,
    helm,
    operator_args,
    rbac_documents,
    render,
)
from tests.support.controlplane import ControlPlane, ControlPlaneError
from tests.support.kube import dask_kubernetes_crd_files, install_crds, server_side_apply, service_account_kubeconfig
from tests.support.testenv import REPO_ROOT, MissingBinaryError, free_ports, tail, terminate

# (mode, helm release, values, namespace of the workload): the default, cluster-wide with a
# ClusterRole; and watching one namespace with a Role there (plus the review ClusterRole).
MODES = {
    "cluster-wide": (RELEASE, {}, "work"),
    "namespaced": ("scalable-team", {"watchNamespaces": ["team"]}, "team"),
}
# kopf's observers list CustomResourceDefinitions (to notice CRDs created after it started)
# and, when given namespaces, Namespaces (to match namespace patterns). The chart grants
# neither: the chart installs our CRDs (crds/) before the operator starts, and it is given
# exact namespace names, not patterns; kopf logs that it will not notice such changes and
# carries on (the flow below passes). Any other denied request fails the test.
EXPECTED_DENIED = {
    "cluster-wide": {"list apiextensions.k8s.io/customresourcedefinitions in -"},
    "namespaced": {"list apiextensions.k8s.io/customresourcedefinitions in -", "list /namespaces in -"},
}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "userGroups": [f"system:serviceaccounts:{RELEASE_NAMESPACE}"]}, {"level": "None"}],
}


# --------------------------------------------------------------------------------------
# The check itself: pure functions over RBAC rules and audit events
# --------------------------------------------------------------------------------------
def granted(docs: list[dict]) -> set[tuple[str, str, str, str]]:
    """(role, apiGroup, resource[/subresource], verb) for every verb of every rule of every
    ClusterRole and Role in docs."""
    out = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        role = f"{doc['kind']}/{doc['metadata']['name']}"
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.add((role, group, resource, verb))
    return out


def used(events: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every allowed request in the audit events."""
    out = set()
    for e in events:
        ref = e.get("objectRef") or {}
        if "resource" not in ref or (e.get("annotations") or {}).get("authorization.k8s.io/decision") != "allow":
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, e["verb"]))
    return out


def forbidden(events: list[dict]) -> list[str]:
    return sorted({
        f"{e['verb']} {(e.get('objectRef') or {}).get('apiGroup', '')}/{(e.get('objectRef') or {}).get('resource', e.get('requestURI'))}"
        f" in {(e.get('objectRef') or {}).get('namespace', '-')}"
        for e in events if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
    })


def unused_grants(docs: list[dict], events: list[dict]) -> list[tuple[str, str, str, str]]:
    seen = used(events)
    return sorted(g for g in granted(docs) if (g[1], g[2], g[3]) not in seen)


def test_the_check_flags_a_grant_the_operator_never_used():
    """The checker can fail: a rule nobody exercises is reported, one that was used is not."""
    role = {"kind": "ClusterRole", "metadata": {"name": "r"}, "rules": [
        {"apiGroups": ["kubernetes.dask.org"], "resources": ["daskclusters"], "verbs": ["get", "delete"]},
        {"apiGroups": ["scalable.dev"], "resources": ["scalableworkflows/status"], "verbs": ["patch"]},
    ]}
    allow = {"authorization.k8s.io/decision": "allow"}
    events = [
        {"verb": "get", "objectRef": {"apiGroup": "kubernetes.dask.org", "resource": "daskclusters"}, "annotations": allow},
        {"verb": "patch", "objectRef": {"apiGroup": "scalable.dev", "resource": "scalableworkflows", "subresource": "status"},
         "annotations": allow},
        {"verb": "list", "objectRef": {"apiGroup": "", "resource": "pods"},
         "annotations": {"authorization.k8s.io/decision": "forbid"}},
    ]
    assert unused_grants([role], events) == [("ClusterRole/r", "kubernetes.dask.org", "daskclusters", "delete")]
    assert forbidden(events) == ["list /pods in -"]
    # a request that was denied does not count as use of a grant
    events[0]["annotations"] = {"authorization.k8s.io/decision": "forbid"}
    assert ("ClusterRole/r", "kubernetes.dask.org", "daskclusters", "get") in unused_grants([role], events)


# --------------------------------------------------------------------------------------
# The proof against the real API server
# --------------------------------------------------------------------------------------
HELM_RELEASE, HELM_NAMESPACE = "scalable-helm", "helm-test"
HELM_FULLNAME = f"{HELM_RELEASE}-scalable-operator"


class AuditedCluster:
    def __init__(self, cp: ControlPlane, audit_log: Path, install_output: str) -> None:
        self.cp, self.audit_log, self.install_output = cp, audit_log, install_output

    def events(self, user: str) -> list[dict]:
        out = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if (event.get("user") or {}).get("username") == user:
                out.append(event)
        return out


@pytest.fixture(scope="module")
def audited_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedCluster]:
    d = tmp_path_factory.mktemp("audit")
    policy, audit_log = d / "policy.yaml", d / "audit.log"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    # No controller manager: nothing here needs garbage collection or namespace deletion.
    cp = ControlPlane(controller_manager=False,
                      extra_apiserver_args=[f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}"])
    try:
        cp.start()
    except (MissingBinaryError, ControlPlaneError) as e:
        pytest.fail(f"the least-privilege test needs its own control plane: {e}", pytrace=False)
    try:
        asyncio.run(install_crds(cp.kubeconfig, dask_kubernetes_crd_files()))
        # our CRDs come from the chart; no --wait: without a kubelet no pod ever runs here
        out = helm("install", HELM_RELEASE, str(CHART_DIR), "--namespace", HELM_NAMESPACE, "--create-namespace",
                   kubeconfig=cp.kubeconfig).stdout
        yield AuditedCluster(cp, audit_log, out)
    finally:
        cp.stop()


async def _get_json(api: Any, version: str, url: str, namespace: str | None = None) -> dict | None:
    async with api.call_api("GET", version=version, namespace=namespace, url=url, raise_for_status=False) as r:
        return r.json() if r.status_code == 200 else None


async def test_helm_install_upgrade_uninstall_keep_the_telemetry_pvc(audited_cluster: AuditedCluster):
    cp = audited_cluster.cp
    api = await kr8s.asyncio.api(kubeconfig=str(cp.kubeconfig))
    ns = HELM_NAMESPACE
    for version, url, namespace in [
        ("apps/v1", f"deployments/{HELM_FULLNAME}", ns), ("v1", f"serviceaccounts/{HELM_FULLNAME}", ns),
        ("v1", f"services/{HELM_FULLNAME}", ns), ("policy/v1", f"poddisruptionbudgets/{HELM_FULLNAME}", ns),
        ("rbac.authorization.k8s.io/v1", f"clusterroles/{HELM_FULLNAME}", None),
        ("rbac.authorization.k8s.io/v1", f"clusterrolebindings/{HELM_FULLNAME}", None),
        ("rbac.authorization.k8s.io/v1", f"roles/{HELM_FULLNAME}-leader", ns),
        ("rbac.authorization.k8s.io/v1", f"rolebindings/{HELM_FULLNAME}-leader", ns),
    ]:
        assert await _get_json(api, version, url, namespace), f"helm install did not create {url}"
    for crd in ("advisormodels.scalable.dev", "scalableworkflows.scalable.dev"):
        obj = await _get_json(api, "apiextensions.k8s.io/v1", f"customresourcedefinitions/{crd}")
        assert obj, f"the chart's crds/ did not install {crd}"
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
    assert "kubectl apply -n <your-namespace> -f examples/" in audited_cluster.install_output, "NOTES.txt says what to do next"

    # a wrong value fails at install time, before anything is created
    bad = helm("install", "bad", str(CHART_DIR), "--namespace", ns, "--set", "telemetry.persistence.size=lots",
               kubeconfig=cp.kubeconfig, check=False)
    assert bad.returncode != 0 and "values don't meet the specifications of the schema" in bad.stderr, bad.stderr
    assert await _get_json(api, "apps/v1", "deployments/bad-scalable-operator", ns) is None

    claim = f"persistentvolumeclaims/{HELM_FULLNAME}-telemetry"
    pvc = await _get_json(api, "v1", claim, ns)
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    uid = pvc["metadata"]["uid"]

    helm("upgrade", HELM_RELEASE, str(CHART_DIR), "--namespace", ns, "--reuse-values", "--set", "operator.verbose=true",
         kubeconfig=cp.kubeconfig)
    deployment = await _get_json(api, "apps/v1", f"deployments/{HELM_FULLNAME}", ns)
    assert "--verbose" in deployment["spec"]["template"]["spec"]["containers"][0]["args"], "the upgrade was applied"
    assert (await _get_json(api, "v1", claim, ns))["metadata"]["uid"] == uid, "helm upgrade replaced the telemetry PVC"

    helm("uninstall", HELM_RELEASE, "--namespace", ns, kubeconfig=cp.kubeconfig)
    assert await _get_json(api, "apps/v1", f"deployments/{HELM_FULLNAME}", ns) is None
    assert (await _get_json(api, "v1", claim, ns))["metadata"]["uid"] == uid, "helm uninstall deleted the telemetry PVC"
    helm("install", HELM_RELEASE, str(CHART_DIR), "--namespace", ns, kubeconfig=cp.kubeconfig)
    assert (await _get_json(api, "v1", claim, ns))["metadata"]["uid"] == uid, "a new install adopts the kept PVC"


def image_env() -> dict[str, str]:
    """The ENV of the image's runtime stage (operator/Dockerfile), except PATH."""
    text = (REPO_ROOT / "operator" / "Dockerfile").read_text().split(" AS runtime", 1)[1]
    block = re.search(r"^ENV (.*?)(?<!\\)\n", text, re.M | re.S).group(1)
    pairs = dict(re.findall(r"([A-Z_]+)=(\S+)", block))
    pairs.pop("PATH")
    return pairs


def read_only_root(argv: list[str], volume: Path) -> list[str]:
    """argv as the chart runs it: the root filesystem read-only, an empty tmpfs on /tmp (the
    chart's emptyDir), `volume` writable (the telemetry PVC). A private mount namespace, so
    nothing changes for any other process on the machine (needs root, as CI runs).

    What the process needs from under the old /tmp (a checkout or a virtualenv there, whose
    code the operator imports, and the volume) is bound back into the new tmpfs, read-only
    except the volume, so the test holds wherever the repository was cloned."""
    if not shutil.which("unshare"):
        raise MissingBinaryError("unshare (util-linux) is not on PATH; it stands in for a container's read-only root")
    keep = sorted({str(Path(p).resolve()) for p in (REPO_ROOT, sys.prefix, sys.base_prefix)})
    script = ('set -e; mount --bind "$VOLUME" "$VOLUME"; mount --rbind /tmp /mnt; mount -o remount,bind,ro /; '
              'mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp; '
              'for p in $KEEP "$VOLUME"; do case "$p" in /tmp/*) mkdir -p "$p"; mount --rbind "/mnt/${p#/tmp/}" "$p";; esac; done; '
              'for p in $KEEP; do case "$p" in /tmp/*) mount -o remount,bind,ro "$p";; esac; done; '
              'if touch /usr/.scalable-ro-probe 2>/dev/null; then echo "the root is writable" >&2; exit 3; fi; '
              'exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "env", f"VOLUME={volume}", f"KEEP={' '.join(keep)}",
            "sh", "-c", script, "sh", *argv]


@pytest.fixture
def volume() -> Iterator[Path]:
    """The operator's volume, outside /tmp (which becomes the operator's own tmpfs)."""
    path = Path(tempfile.mkdtemp(prefix="volume-", dir=_VOLUMES_DIR()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _VOLUMES_DIR() -> Path:
    d = REPO_ROOT / "_output" / "test-volumes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _scalable_executable() -> list[str]:
    script = Path(sys.executable).parent / "scalable"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from scalable.cli.main import main; main()"]


def _with(args: list[str], **overrides: str) -> list[str]:
    """The Deployment's args with some `--key=value` replaced (the test's ports and paths)."""
    out = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
        out.append(f"--{key.replace('_', '-')}={overrides.pop(key)}" if key in overrides else arg)
    assert not overrides, f"the rendered Deployment has no {sorted(overrides)} argument"
    return out


async def _token_of(kubeconfig: Path) -> str:
    return yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]


@pytest.mark.parametrize("mode", list(MODES))
async def test_operator_runs_under_the_chart_rbac_and_uses_every_grant(mode: str, audited_cluster: AuditedCluster, tmp_path: Path,
                                                                      volume: Path):
    cp = audited_cluster.cp
    release, values, WORK = MODES[mode]
    fullname = release if "scalable-operator" in release else f"{release}-scalable-operator"
    user = f"system:serviceaccount:{RELEASE_NAMESPACE}:{fullname}"
    docs = render(set_values=values, release=release)
    rbac = rbac_documents(docs)
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    admin = await kr8s.asyncio.api(kubeconfig=str(cp.kubeconfig))
    for ns in (RELEASE_NAMESPACE, WORK):
        if not await _get_json(admin, "v1", f"namespaces/{ns}"):
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": ns}}, api=admin).create()
    apply_documents(cp.kubeconfig, rbac)
    sa_config = await service_account_kubeconfig(admin, cp.kubeconfig, RELEASE_NAMESPACE, fullname,
                                                 volume / "operator.kubeconfig", create=False)

    # a client allowed to push telemetry for workflows in WORK (update on scalableworkflows)
    client = await service_account_kubeconfig(admin, cp.kubeconfig, WORK, "client", tmp_path / "client.kubeconfig")
    await server_side_apply(admin, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                                    "metadata": {"name": "push", "namespace": WORK},
                                    "rules": [{"apiGroups": ["scalable.dev"], "resources": ["scalableworkflows"], "verbs": ["update"]}]},
                            plural="roles", field_manager="test", force=True)
    await server_side_apply(admin, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                                    "metadata": {"name": "push", "namespace": WORK},
                                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "push"},
                                    "subjects": [{"kind": "ServiceAccount", "name": "client", "namespace": WORK}]},
                            plural="rolebindings", field_manager="test", force=True)

    telemetry = volume / "telemetry"
    write_history(telemetry / WORK / "runs", peak_gib=3.0, n=40)
    exporter = await QueueExporter(queued=40, processing=2, workers=1).start()
    await create_dask_cluster(admin, WORK, "sim", replicas=1)
    await create(admin, WORK, {"apiVersion": "scalable.dev/v1alpha1", "kind": "AdvisorModel", "metadata": {"name": "model"},
                               "spec": {"modelType": "gradient_boosting", "minHistory": 5, "retrainInterval": "1h"}})
    groups = [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4,
               "resourcePolicy": {"mode": "Initial", "maxAllowed": {"memory": "8Gi", "cpu": "4"}}}]
    await create(admin, WORK, scalable_workflow("wf", "sim", groups=groups, advisor_model="model",
                                                scaling={"mode": "Reactive", "pollIntervalSeconds": 1, "cooldownSeconds": 0}))

    metrics_port, ingest_port = free_ports(2)
    args = _with(operator_args(docs), telemetry_path=str(telemetry), scheduler_url=exporter.url,
                 metrics_port=str(metrics_port), ingest_port=str(ingest_port))
    if values:
        assert f"--namespace={WORK}" in args and "--all-namespaces" not in args
    else:
        assert "--all-namespaces" in args, "the default chart watches every namespace with a ClusterRole"
    log_path = tmp_path / "operator.log"
    # the container's view: the image's ENV (HOME=/tmp, MPLCONFIGDIR, ...), read-only root, tmpfs /tmp
    env = {**os.environ, **image_env(), "KUBECONFIG": str(sa_config), "POD_NAMESPACE": RELEASE_NAMESPACE,
           "POD_NAME": "operator-0"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(read_only_root([*_scalable_executable(), *args], volume), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        def alive_and(predicate):
            async def check():
                assert proc.poll() is None, f"the operator exited with {proc.returncode}:\n{tail(log_path, 60)}"
                return await predicate()
            return check

        async def sized():
            group = await get(admin, WORK, "DaskWorkerGroup", "sim-default")
            return group if group["spec"]["worker"]["spec"]["containers"][0].get("resources") else None

        async def scaled():
            return (await get(admin, WORK, "DaskCluster", "sim"))["spec"]["worker"]["replicas"] > 1

        async def model_trained():
            model = await get(admin, WORK, "AdvisorModel", "model")
            return model if (model.get("status") or {}).get("trainedAt") else None

        async def workflow_ready():
            wf = await get(admin, WORK, "ScalableWorkflow", "wf")
            c = condition(wf, "Sized")
            return wf if c and c["status"] == "True" and (wf["status"].get("currentWorkers") or 0) > 1 else None

        group = await wait_until(alive_and(sized), timeout=90, what="worker group sized by the operator")
        assert group["spec"]["worker"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
        await wait_until(alive_and(scaled), timeout=60, what="replicas scaled up from the queue")
        model = await wait_until(alive_and(model_trained), timeout=120, what="AdvisorModel trained")
        assert model["status"]["phase"] in ("Ready", "InsufficientData"), model["status"]
        wf = await wait_until(alive_and(workflow_ready), timeout=60, what="ScalableWorkflow status Sized, workers > 1")
        assert condition(wf, "Ready")["status"] == "True"

        # `list` on pods is enough to see a refused worker: the pod (made here as the scheduler
        # would leave it; nothing schedules on this control plane) is named in WorkersScheduled
        pod = await _unschedulable_worker_pod(admin, WORK, "sim")

        async def refusal_reported():
            c = condition(await get(admin, WORK, "ScalableWorkflow", "wf"), "WorkersScheduled")
            return c if c and c["status"] == "False" else None

        reported = await wait_until(alive_and(refusal_reported), timeout=30, what="WorkersScheduled=False under the chart's RBAC")
        assert pod in reported["message"] and "Insufficient memory" in reported["message"], reported
        async with admin.call_api("GET", version="v1", namespace=WORK, url="events") as r:
            reasons = {e["reason"] for e in r.json()["items"]}
        assert reasons & {"Resized", "ScaledUp", "Promoted"}, f"the operator records Events: {reasons}"

        async def warned():
            async with admin.call_api("GET", version="v1", namespace=WORK, url="events") as r:
                return any(e["reason"] == "WorkersNotScheduled" and e["type"] == "Warning" for e in r.json()["items"])

        await wait_until(alive_and(warned), timeout=10, what="a Warning Event WorkersNotScheduled")
        # read only: the pods it may list it can neither read by name, nor change, nor exec into
        for verb, subresource in [("list", ""), ("get", ""), ("watch", ""), ("create", ""), ("delete", ""), ("patch", ""),
                                  ("update", ""), ("deletecollection", ""), ("create", "exec"), ("get", "log"),
                                  ("create", "eviction"), ("patch", "status")]:
            allowed = await _may(admin, user, WORK, verb, "pods", subresource, name="" if verb == "list" else pod)
            assert allowed == (verb == "list" and not subresource), f"{verb} pods/{subresource}: allowed={allowed}"
        if values:
            assert not await _may(admin, user, "default", "list", "pods"), "a Role: pods only in the watched namespace"

        # a workflow client pushes telemetry: the operator reviews the token and the access
        body = {"run": {"run_id": f"run-{secrets.token_hex(4)}"},
                "records": [{"kind": "task", "task": "simulate", "tag": "default", "submitted_at": 1.7e9, "duration_s": 3.0,
                             "peak_memory_bytes": 2**30, "input_features": {"size": 1}}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{ingest_port}/v1/namespaces/{WORK}/scalableworkflows/wf/runs", json=body,
                                    headers={"Authorization": f"Bearer {await _token_of(client)}"}) as r:
                assert r.status == 200, await r.text()
            async with session.get(f"http://127.0.0.1:{metrics_port}/readyz") as r:
                assert r.status == 200, "the leading replica is ready"

        # the leader renews its Lease (get + update) every 5 s with the default 15 s lease
        first = (await get_lease(admin, fullname))["spec"]["renewTime"]
        await wait_until(alive_and(lambda: _renewed_since(admin, fullname, first)), timeout=20, what="Lease renewed")
    finally:
        terminate(proc.pid, timeout=20, proc=proc)
        await exporter.stop()
    assert proc.returncode == 0, f"clean shutdown expected, got {proc.returncode}:\n{tail(log_path, 60)}"
    lease = await get_lease(admin, fullname)
    assert not lease["spec"].get("holderIdentity"), "a clean shutdown releases the Lease"

    events = audited_cluster.events(user)
    assert events, "the audit log recorded nothing for the operator's ServiceAccount"
    denied = set(forbidden(events)) - EXPECTED_DENIED[mode]
    unused = unused_grants(rbac, events)
    assert not denied, f"the chart's RBAC refused requests the operator made: {denied}\n{tail(log_path, 40)}"
    assert not unused, (
        "granted by the chart but never used by the operator's main flow (remove the verb from "
        f"charts/scalable-operator/templates, or exercise the code path that needs it): {unused}"
    )
    leader_role = next(r for r in find(rbac, "Role") if r["metadata"]["name"] == f"{fullname}-leader")
    assert leader_role["rules"][1]["resourceNames"] == [fullname]
    pod_lists = {e["requestURI"] for e in events if (e.get("objectRef") or {}).get("resource") == "pods"}
    assert pod_lists and all(f"/namespaces/{WORK}/pods?labelSelector=dask.org%2Fcluster-name%3Dsim%2Cdask.org%2Fcomponent%3Dworker"
                             in uri for uri in pod_lists), f"only the workers of its cluster, by label: {pod_lists}"


async def _unschedulable_worker_pod(api: Any, namespace: str, cluster: str) -> str:
    """A worker pod of `cluster` as dask-kubernetes labels it, with the status kube-scheduler
    writes for a limit above every node's memory; returns its name."""
    async with api.call_api("GET", version="v1", namespace=namespace, url="serviceaccounts/default", raise_for_status=False) as r:
        missing = r.status_code == 404  # no controller manager here to make it
    if missing:
        await kr8s.asyncio.objects.ServiceAccount({"metadata": {"name": "default", "namespace": namespace}}, api=api).create()
    name = f"{cluster}-default-worker-{secrets.token_hex(3)}"
    limits = {"memory": "64Gi", "cpu": "250m"}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"dask.org/cluster-name": cluster, "dask.org/component": "worker",
                                                  "dask.org/workergroup-name": f"{cluster}-default"}},
           "spec": {"automountServiceAccountToken": False,
                    "containers": [{"name": "worker", "image": "dask", "resources": {"limits": limits, "requests": limits}}]}}
    async with api.call_api("POST", version="v1", namespace=namespace, url="pods", json=pod):
        pass
    status = {"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient memory."}]}}
    async with api.call_api("PATCH", version="v1", namespace=namespace, url=f"pods/{name}/status", json=status,
                            headers={"Content-Type": "application/merge-patch+json"}):
        pass
    return name


async def _may(api: Any, user: str, namespace: str, verb: str, resource: str, subresource: str = "", name: str = "") -> bool:
    """The API server's answer (SubjectAccessReview) to: may `user` do this?"""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{RELEASE_NAMESPACE}"],
                       "resourceAttributes": {"namespace": namespace, "verb": verb, "group": "", "resource": resource,
                                              "subresource": subresource, "name": name}}}
    async with api.call_api("POST", version="authorization.k8s.io/v1", url="subjectaccessreviews", json=review) as r:
        return bool(r.json()["status"].get("allowed"))


async def get_lease(api: Any, name: str) -> dict:
    async with api.call_api("GET", version="coordination.k8s.io/v1", namespace=RELEASE_NAMESPACE, url=f"leases/{name}") as r:
        return r.json()


async def _renewed_since(api: Any, name: str, first: str) -> bool:
    return (await get_lease(api, name))["spec"]["renewTime"] != first
