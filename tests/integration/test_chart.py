"""The chart, the plain manifests and the examples against the real API server.

`helm lint`; `helm template` for the defaults and for every ci/*.yaml (which together change
every documented value), each rendering server-side dry-run applied; values.schema.json
refusing wrong values; deploy/ generated from the chart and applying; every example applying.
Installing and upgrading with Helm is in test_rbac_least_privilege.py, on a control plane of
its own (where the chart's CRDs are installed by Helm, not by the test fixtures).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import kr8s.asyncio
import pytest
import yaml

from scalable.controller.resources import AdvisorModelSpec, ScalableWorkflowSpec
from tests.support.chart import CHART_DIR, apply_documents, find, helm, kubectl, operator_args, render
from tests.support.testenv import REPO_ROOT
from tests.unit.deploy.test_chart_files import chart_sync

CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
NOT_IN_TEST_CLUSTER = {"ServiceMonitor"}  # the prometheus-operator's CRD is not installed here


def test_helm_lint(helm_binary):
    out = helm("lint", "--strict", str(CHART_DIR)).stdout
    assert "0 chart(s) failed" in out
    for values in CI_VALUES:
        helm("lint", "--strict", str(CHART_DIR), "--values", str(values))


def test_ci_values_change_every_documented_value():
    """So that rendering ci/*.yaml renders every documented option."""
    values, _ = chart_sync.parse_values((CHART_DIR / "values.yaml").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    changed: set[str] = set()

    def walk(node, default, prefix):
        if isinstance(node, dict) and isinstance(default, dict) and node:
            for k, v in node.items():
                walk(v, default.get(k), f"{prefix}.{k}" if prefix else k)
        elif node != default:
            parts = prefix.split(".")
            changed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))

    for path in CI_VALUES:
        walk(yaml.safe_load(path.read_text()), defaults, "")
    missing = [v.key for v in values if v.key not in changed]
    assert not missing, f"no ci/*.yaml sets these documented values to something else: {missing}"


def test_default_rendering_is_secure_and_probed():
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                            "Service", "PersistentVolumeClaim", "PodDisruptionBudget"])
    pod = find(docs, "Deployment")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 65532
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/var/lib/scalable": "telemetry", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["telemetry"]["persistentVolumeClaim"]["claimName"] == "scalable-operator-telemetry"
    assert c["args"][:3] == ["operator", "run", "--all-namespaces"]
    pvc = find(docs, "PersistentVolumeClaim")[0]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi" and "storageClassName" not in pvc["spec"]


def _unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


async def _namespaces(api, *names: str) -> None:
    for name in names:
        await kr8s.asyncio.objects.Namespace({"metadata": {"name": name, "labels": {"scalable.test/namespace": "true"}}},
                                             api=api).create()


async def _delete_namespaces(api, *names: str) -> None:
    for name in names:
        try:
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": name}}, api=api).delete()
        except kr8s.NotFoundError:
            pass


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
async def test_every_option_renders_and_the_api_server_accepts_it(values: Path, kubeconfig, kube_api, namespace):
    options = yaml.safe_load(values.read_text())
    set_values = {}
    watched: list[str] = []
    if options.get("watchNamespaces"):
        watched = [_unique(n) for n in options["watchNamespaces"]]
        set_values["watchNamespaces"] = watched
    release = _unique("rel")
    docs = render([values], set_values, namespace=namespace, release=release)
    await _namespaces(kube_api, *watched)
    try:
        apply_documents(kubeconfig, [d for d in docs if d["kind"] not in NOT_IN_TEST_CLUSTER], dry_run=True)
    finally:
        await _delete_namespaces(kube_api, *watched)
    deployment = find(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    name = values.stem.removesuffix("-values")
    if name == "cluster-wide":
        assert find(docs, "ServiceMonitor")[0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert find(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0] == {"port": "metrics", "path": "/metrics", "interval": "15s"}
        assert find(docs, "NetworkPolicy")[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert "--prometheus-url=http://prometheus-server.monitoring.svc" in args and "--verbose" in args
        assert "--metrics-port=9090" in args and "--telemetry-path=/data" in args
        pvc = find(docs, "PersistentVolumeClaim")[0]
        assert pvc["spec"]["storageClassName"] == "fast-ssd" and "helm.sh/resource-policy" not in pvc["metadata"]["annotations"]
        assert pod["serviceAccountName"] == "scalable-sa" and pod["priorityClassName"] == "system-cluster-critical"
    elif name == "namespaced":
        roles = find(docs, "Role")
        assert sorted(r["metadata"]["namespace"] for r in roles if r["metadata"]["name"] == "scalable-ns") == sorted(watched)
        assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={n}" for n in watched]
        assert "--all-namespaces" not in args
        cluster_role = find(docs, "ClusterRole")[0]
        assert {g for r in cluster_role["rules"] for g in r["apiGroups"]} == {"authentication.k8s.io", "authorization.k8s.io"}
        # the same workload rules as the cluster-wide ClusterRole, proven minimal by test_rbac_least_privilege
        default_rules = find(render(), "ClusterRole")[0]["rules"]
        role = next(r for r in roles if r["metadata"]["namespace"] == watched[0])
        assert role["rules"] + cluster_role["rules"] == default_rules
        assert not find(docs, "PersistentVolumeClaim") and not find(docs, "ServiceAccount")
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared-telemetry"
        assert pod["serviceAccountName"] == "existing-operator-sa"
    elif name == "minimal":
        assert not find(docs, "ClusterRole") and not find(docs, "Role") and not find(docs, "PodDisruptionBudget")
        assert find(docs, "PersistentVolumeClaim")[0]["spec"]["storageClassName"] == ""
    elif name == "ephemeral":
        assert not find(docs, "PersistentVolumeClaim") and pod["volumes"][0] == {"name": "telemetry", "emptyDir": {}}


@pytest.mark.parametrize("bad, message", [
    ({"replicas": "two"}, "replicas"),
    ({"replicas": 0}, "replicas"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"telemetry": {"persistence": {"size": "10 gigs"}}}, "size"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"operator": {"prometheusUrl": "prometheus:9090"}}, "prometheusUrl"),
    ({"service": {"metricsPort": 70000}}, "metricsPort"),
    ({"replica": 2}, "replica"),  # a typo of an existing key
    ({"ingest": {"tls": {"secretName": "Ingest_TLS"}}}, "secretName"),
    ({"ingest": {"tls": {"mountPath": "relative/dir"}}}, "mountPath"),
    ({"ingest": {"tls": {"secret": "x"}}}, "secret"),
])
def test_the_schema_rejects_a_wrong_value(bad, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = helm("template", "x", str(CHART_DIR), "--values", str(path), check=False)
    assert proc.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_ingestion_tls_mounts_the_secret_and_serves_https():
    """ingest.tls.secretName: the Secret's certificate and key mounted read-only (the key for the
    pod's fsGroup only), the operator started with them, the Service's port marked https; by
    default none of it."""
    plain = render()
    assert not [a for a in operator_args(plain) if a.startswith("--ingest-tls")]
    docs = render(set_values={"ingest": {"tls": {"secretName": "ingest-cert"}, "audiences": ["scalable"]}})
    args = operator_args(docs)
    assert "--ingest-tls-cert=/etc/scalable/ingest-tls/tls.crt" in args and "--ingest-tls-key=/etc/scalable/ingest-tls/tls.key" in args
    assert "--ingest-audience=scalable" in args
    pod = find(docs, "Deployment")[0]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "ingest-tls")
    assert volume["secret"]["secretName"] == "ingest-cert" and volume["secret"]["defaultMode"] == 0o440
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ingest-tls")
    assert mount == {"name": "ingest-tls", "mountPath": "/etc/scalable/ingest-tls", "readOnly": True}
    port = next(p for p in find(docs, "Service")[0]["spec"]["ports"] if p["name"] == "ingest")
    assert port["appProtocol"] == "https"


def test_deploy_is_generated_from_the_chart():
    stale = chart_sync.stale(chart_sync.expected_manifests())
    assert not stale, f"out of date (run `make manifests`): {[str(p.relative_to(REPO_ROOT)) for p in stale]}"
    assert chart_sync.main(["check"]) == 0
    assert not (REPO_ROOT / "deploy" / "base" / "rbac.yaml").exists(), "the chart is the single source of the RBAC"


async def test_kubectl_apply_k_deploy_dry_run(kubeconfig, kube_api):
    # A server-side dry run cannot put objects into a namespace it only pretends to create
    # (a real `kubectl apply -k deploy/` creates the Namespace first), so it exists for real here.
    existed = await kr8s.asyncio.objects.Namespace.get("scalable-system", api=kube_api) if await _exists(kube_api) else None
    if existed is None:
        await _namespaces(kube_api, "scalable-system")
    try:
        out = kubectl("apply", "--dry-run=server", "-k", str(REPO_ROOT / "deploy"), kubeconfig=kubeconfig).stdout
    finally:
        if existed is None:
            await _delete_namespaces(kube_api, "scalable-system")
    for expected in ("namespace/scalable-system", "customresourcedefinition.apiextensions.k8s.io/scalableworkflows.scalable.dev",
                     "clusterrole.rbac.authorization.k8s.io/scalable-operator", "deployment.apps/scalable-operator",
                     "persistentvolumeclaim/scalable-operator-telemetry", "service/scalable-operator"):
        assert expected in out, out


async def _exists(api) -> bool:
    async with api.call_api("GET", version="v1", url="namespaces/scalable-system", raise_for_status=False) as r:
        return r.status_code == 200


def test_gitops_examples_point_at_the_chart_and_deploy():
    argo = [d for p in (REPO_ROOT / "deploy" / "gitops").glob("argocd*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    flux = [d for p in (REPO_ROOT / "deploy" / "gitops").glob("flux*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert {d["kind"] for d in argo} == {"Application"}
    assert {d["kind"] for d in flux} >= {"GitRepository", "Kustomization", "HelmRelease"}
    paths = {d["spec"]["source"].get("path") for d in argo} | {d["spec"].get("path") for d in flux if d["kind"] == "Kustomization"}
    paths |= {d["spec"]["chart"]["spec"]["chart"] for d in flux if d["kind"] == "HelmRelease"}
    for p in filter(None, paths):
        assert (REPO_ROOT / p.removeprefix("./")).is_dir(), f"{p} does not exist in the repository"


async def test_examples_apply_and_work_together(kubeconfig, namespace):
    files = sorted((REPO_ROOT / "examples").glob("*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    out = kubectl("apply", "--dry-run=server", "-n", namespace, *[a for f in files for a in ("-f", str(f))],
                  kubeconfig=kubeconfig).stdout
    assert out.count("(server dry run)") == len(docs), out
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workflow = ScalableWorkflowSpec.model_validate(by_kind["ScalableWorkflow"]["sweep"]["spec"])
    AdvisorModelSpec.model_validate(by_kind["AdvisorModel"][workflow.advisorModelRef.name]["spec"])
    cluster = by_kind["DaskCluster"][workflow.clusterRef.name]
    for group in workflow.workerGroups:
        if group.name == "default":
            template = cluster["spec"]["worker"]["spec"]
        else:
            worker_group = by_kind["DaskWorkerGroup"][group.name]
            assert worker_group["spec"]["cluster"] == workflow.clusterRef.name
            template = worker_group["spec"]["worker"]["spec"]
        names = [c["name"] for c in template["containers"]]
        assert group.resourcePolicy.containerName in names
        assert all("resources" not in c for c in template["containers"]), "the operator writes the resources"
