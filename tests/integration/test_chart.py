"""The chart, the plain manifests and the examples against the real API server.

`helm lint`; `helm template` for the defaults and for every ci/*.yaml (which together change
every documented value), each rendering server-side dry-run applied; values.schema.json
refusing wrong values; deploy/ generated from the chart and applying; every example applying.
The CRD templates upgraded by `helm upgrade` and kept by `helm uninstall` (a control plane of
their own); the PrometheusRule's alerts under `promtool test rules`, and in a real Prometheus
scraping a real operator.
Installing and upgrading with Helm is in test_rbac_least_privilege.py, on a control plane of
its own (where the chart's CRDs are installed by Helm, not by the test fixtures).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import kr8s.asyncio
import pytest
import yaml

from scalable.controller.dask_objects import ANNOTATION_PAUSED
from scalable.controller.resources import AdvisorModelSpec, ScalableWorkflowSpec
from tests.integration.harness import (SCALABLE, create, create_dask_cluster, operator_options, running_operator,
                                       scalable_workflow, wait_until, write_history)
from tests.support.chart import CHART_DIR, apply_documents, find, helm, kubectl, operator_args, render
from tests.support.controlplane import ControlPlane, ControlPlaneError
from tests.support.prometheus import PrometheusError, PrometheusServer
from tests.support.testenv import PROMETHEUS_HINT, REPO_ROOT, MissingBinaryError
from tests.unit.deploy.test_chart_files import chart_sync

CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
NOT_IN_TEST_CLUSTER = {"ServiceMonitor", "PrometheusRule"}  # the prometheus-operator's CRDs are not installed here


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
                            "Service", "PersistentVolumeClaim", "PodDisruptionBudget"] + ["CustomResourceDefinition"] * 2)
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


def test_the_crds_render_from_crds_behind_crds_install():
    docs = render()
    crds = {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        crd = crds.pop(source["metadata"]["name"])
        assert crd["spec"] == source["spec"], f"{path.name}: run `make chart-crds`"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "scalable-operator"
    assert not crds
    assert not find(render(set_values={"crds": {"install": False}}), "CustomResourceDefinition")
    # nothing under the chart's crds/ directory either (Helm would install it regardless)
    assert "CustomResourceDefinition" not in helm(*["template", "x", str(CHART_DIR), "--include-crds",
                                                    "--set", "crds.install=false"]).stdout


def test_probes_are_configurable_on_the_endpoints_the_operator_serves():
    def probes(docs):
        c = find(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        return {k: c.get(f"{k}Probe") for k in ("startup", "liveness", "readiness")}

    default = probes(render())
    assert {k: p["httpGet"]["path"] for k, p in default.items()} == {"startup": "/healthz", "liveness": "/healthz",
                                                                   "readiness": "/readyz"}
    assert default["startup"]["periodSeconds"] * default["startup"]["failureThreshold"] >= 120, "time to start"
    changed = probes(render(set_values={"probes": {"liveness": {"periodSeconds": 7, "failureThreshold": 9},
                                                   "startup": {"enabled": False}}}))
    assert changed["startup"] is None
    assert changed["liveness"] == {**default["liveness"], "periodSeconds": 7, "failureThreshold": 9}
    assert changed["readiness"] == default["readiness"]


@pytest.mark.parametrize("bad, message", [
    ({"probes": {"liveness": {"httpGet": {"path": "/"}}}}, "httpGet"),  # the handler is the chart's
    ({"probes": {"readiness": {"periodSeconds": 0}}}, "periodSeconds"),
    ({"serviceMonitor": {"scheme": "ftp"}}, "scheme"),
    ({"serviceMonitor": {"relabelings": [{"action": "rewrite"}]}}, "action"),
    ({"prometheusRule": {"modelStale": {"afterSeconds": "1d"}}}, "afterSeconds"),
    ({"prometheusRule": {"ingestionRefusing": {"ratio": 5}}}, "ratio"),
    ({"prometheusRule": {"selector": "{job=\"x\"}"}}, "selector"),
    ({"crds": {"install": "yes"}}, "install"),
])
def test_the_schema_rejects_a_wrong_monitoring_value(bad, message, tmp_path):
    test_the_schema_rejects_a_wrong_value(bad, message, tmp_path)


def _columns(kubeconfig: Path, crd: str) -> list[str]:
    out = kubectl("get", "crd", crd, "-o", "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
                  kubeconfig=kubeconfig, check=False)
    return out.stdout.split() if out.returncode == 0 else []


def test_helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them(tmp_path):
    """On a control plane of its own (the shared one's CRDs come from the test fixtures).

    CRDs applied outside Helm (an earlier chart's crds/, or deploy/) are refused until the
    README's adoption commands; then install, an upgrade to an earlier chart and back change the
    CRD each time; crds.install=false and `helm uninstall` leave the CRDs and the resources."""
    older = tmp_path / "scalable-operator"
    shutil.copytree(CHART_DIR, older)
    template = older / "templates" / "crds" / "advisormodels.yaml"
    column = "    - name: TrainedAt\n      type: date\n      jsonPath: .status.trainedAt\n      description: when training last ran\n"
    assert column in template.read_text()
    template.write_text(template.read_text().replace(column, ""))
    old_crd = REPO_ROOT / "crds" / "advisormodels.yaml"
    old_crd_file = tmp_path / "old-advisormodels.yaml"
    old_crd_file.write_text(old_crd.read_text().replace(column, ""))
    crd, ns, release = "advisormodels.scalable.dev", "scalable-system", "scalable-operator"

    cp = ControlPlane(controller_manager=False)
    try:
        cp.start()
    except (MissingBinaryError, ControlPlaneError) as e:
        pytest.fail(f"the CRD upgrade test needs its own control plane: {e}", pytrace=False)
    try:
        kc = cp.kubeconfig
        kubectl("apply", "-f", str(old_crd_file), kubeconfig=kc)
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", kubeconfig=kc)
        assert "TrainedAt" not in _columns(kc, crd)
        refused = helm("install", release, str(CHART_DIR), "-n", ns, "--create-namespace", kubeconfig=kc, check=False)
        assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr
        # the README's adoption commands, for both CRDs (an earlier chart installed both)
        kubectl("apply", "-f", str(REPO_ROOT / "crds" / "scalableworkflows.yaml"), kubeconfig=kc)
        for name in ("advisormodels.scalable.dev", "scalableworkflows.scalable.dev"):
            kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite", kubeconfig=kc)
            kubectl("annotate", "crd", name, f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={ns}",
                    "--overwrite", kubeconfig=kc)
        helm("install", release, str(CHART_DIR), "-n", ns, "--create-namespace", kubeconfig=kc)
        assert "TrainedAt" in _columns(kc, crd), "helm install did not update the adopted CRD"

        helm("upgrade", release, str(older), "-n", ns, kubeconfig=kc)
        assert "TrainedAt" not in _columns(kc, crd), "helm upgrade left the CRD as it was"
        helm("upgrade", release, str(CHART_DIR), "-n", ns, kubeconfig=kc)
        assert "TrainedAt" in _columns(kc, crd), "helm upgrade left the CRD as it was"

        model = {"apiVersion": "scalable.dev/v1alpha1", "kind": "AdvisorModel", "metadata": {"name": "kept", "namespace": "default"},
                 "spec": {}}
        kubectl("apply", "-f", "-", input=yaml.safe_dump(model), kubeconfig=kc)
        helm("upgrade", release, str(CHART_DIR), "-n", ns, "--set", "crds.install=false", kubeconfig=kc)
        assert "TrainedAt" in _columns(kc, crd), "crds.install=false deleted the CRD"
        helm("uninstall", release, "-n", ns, kubeconfig=kc)
        assert _columns(kc, crd), "helm uninstall deleted the CRD"
        assert kubectl("get", "advisormodel", "kept", "-n", "default", kubeconfig=kc, check=False).returncode == 0, \
            "helm uninstall deleted the users' AdvisorModels"
    finally:
        cp.stop()


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
        monitor = find(docs, "ServiceMonitor")[0]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["namespace"] == "monitoring" and monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s", "scheme": "https",
                            "honorLabels": True, "tlsConfig": options["serviceMonitor"]["tlsConfig"],
                            "relabelings": options["serviceMonitor"]["relabelings"],
                            "metricRelabelings": options["serviceMonitor"]["metricRelabelings"]}
        assert monitor["spec"]["targetLabels"] == ["app.kubernetes.io/instance"]
        rule = find(docs, "PrometheusRule")[0]
        assert rule["metadata"]["namespace"] == "monitoring" and rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
        assert sorted(alerts) == ["ScalableModelStale", "ScalableScalingHeld", "ScalableTrainingFailing"]
        assert all('job="scalable"' in r["expr"] and r["labels"]["team"] == "platform" for r in alerts.values())
        assert 'reason!~"Paused"' in alerts["ScalableScalingHeld"]["expr"] and "[2h]" in alerts["ScalableTrainingFailing"]["expr"]
        container = pod["containers"][0]
        assert "readinessProbe" not in container
        assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "metrics"}, "initialDelaySeconds": 10,
                                              "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 5}
        crds = find(docs, "CustomResourceDefinition")
        assert len(crds) == 2 and all(c["metadata"]["annotations"] == {
            "helm.sh/resource-policy": "keep", "argocd.argoproj.io/sync-options": "ServerSideApply=true"} for c in crds)
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
        rules = find(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
        assert [r["alert"] for r in rules] == ["ScalableIngestionRefusing"]
    elif name == "minimal":
        assert not find(docs, "CustomResourceDefinition")
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


# ---------------------------------------------------------------------------------------
# the PrometheusRule, run by promtool on series that must and must not fire each alert
# ---------------------------------------------------------------------------------------
def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        raise MissingBinaryError(f"promtool is not on PATH; {PROMETHEUS_HINT}")
    return found


def _rule_groups(set_values: dict | None = None) -> dict:
    docs = render(set_values={"prometheusRule": {"enabled": True, **(set_values or {})}})
    return find(docs, "PrometheusRule")[0]["spec"]


def _series(name: str, values: str, **labels: str) -> dict:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def _alerts(eval_time: str, name: str, *fired: dict) -> dict:
    return {"eval_time": eval_time, "alertname": name,
            "exp_alerts": [{"exp_labels": {**labels, "severity": "warning"}} for labels in fired]}


# Each case: input series at 1m (or the interval given), and at each evaluation time the alerts
# expected (none: it must not fire). The alerts' `for` is passed too: before it, nothing fires.
RULE_CASES = [
    # trainings: one namespace only failing; one that also succeeded (promoted) within the window;
    # one that also ended short of data (not a failure of training)
    {"interval": "1m", "input_series": [
        _series("scalable_trainings_total", "0+1x60", namespace="failing", outcome="failed"),
        _series("scalable_trainings_total", "0+1x60", namespace="recovered", outcome="failed"),
        _series("scalable_trainings_total", "0 0 0 0 0 1+0x55", namespace="recovered", outcome="promoted"),
        _series("scalable_trainings_total", "0+1x60", namespace="short", outcome="failed"),
        _series("scalable_trainings_total", "0+1x60", namespace="short", outcome="insufficient"),
    ], "alert_rule_test": [
        _alerts("10m", "ScalableTrainingFailing"),  # failing, but not yet for 15m
        _alerts("40m", "ScalableTrainingFailing", {"namespace": "failing"}),
    ]},
    # a model last trained at time 0, one retrained all the time (scraped every 2m: within
    # Prometheus' 5m lookback, so the series never goes stale between samples)
    {"interval": "2m", "input_series": [
        _series("scalable_model_trained_timestamp_seconds", "0+0x800", namespace="team", model="old"),
        _series("scalable_model_trained_timestamp_seconds", "0+120x800", namespace="team", model="fresh"),
    ], "alert_rule_test": [
        _alerts("23h", "ScalableModelStale"),
        _alerts("24h20m", "ScalableModelStale"),  # stale, but not yet for 30m
        _alerts("25h", "ScalableModelStale", {"namespace": "team", "model": "old"}),
    ]},
    # held without metrics (alerts); paused by its user (does not); held for 5 minutes only (does not)
    {"interval": "1m", "input_series": [
        _series("scalable_scaling_held", "1+0x60", namespace="team", workflow="blind", reason="NoMetrics"),
        _series("scalable_scaling_held", "1+0x60", namespace="team", workflow="paused", reason="Paused"),
        _series("scalable_scaling_held", "1+0x60", namespace="team", workflow="off", reason="ScalingOff"),
        _series("scalable_scaling_held", "1+0x5 _x55", namespace="team", workflow="blip", reason="ClusterNotFound"),
    ], "alert_rule_test": [
        _alerts("10m", "ScalableScalingHeld"),
        _alerts("30m", "ScalableScalingHeld", {"namespace": "team", "workflow": "blind", "reason": "NoMetrics"}),
    ]},
    # refused 2 of 12 records a minute (alerts), 1 of 101 (does not), only unauthorized callers (alerts)
    {"interval": "1m", "input_series": [
        _series("scalable_telemetry_records_total", "0+10x60", namespace="bad", result="accepted"),
        _series("scalable_telemetry_records_total", "0+2x60", namespace="bad", result="refused"),
        _series("scalable_telemetry_records_total", "0+100x60", namespace="fine", result="accepted"),
        _series("scalable_telemetry_records_total", "0+1x60", namespace="fine", result="refused"),
        _series("scalable_telemetry_records_total", "0+50x60", namespace="fine", result="duplicate"),
        _series("scalable_telemetry_records_total", "0+1x60", namespace="strangers", result="unauthorized"),
    ], "alert_rule_test": [
        _alerts("5m", "ScalableIngestionRefusing"),
        _alerts("30m", "ScalableIngestionRefusing", {"namespace": "bad"}, {"namespace": "strangers"}),
    ]},
]


def _promtool_test(tmp_path: Path, groups: dict, cases: list[dict]) -> subprocess.CompletedProcess:
    """`promtool test rules` on the rendered groups. Annotations are checked by `promtool check
    rules` on the rendered file as it is; the tests compare labels (promtool would compare
    every expanded annotation too)."""
    full = tmp_path / "rendered.yaml"
    full.write_text(yaml.safe_dump(groups))
    check = subprocess.run([_promtool(), "check", "rules", str(full)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    bare = {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                       for g in groups["groups"]]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(bare))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": cases}))
    return subprocess.run([_promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_the_alerts_fire_on_their_series_and_only_there(tmp_path):
    groups = _rule_groups()
    assert sorted(r["alert"] for r in groups["groups"][0]["rules"]) == [
        "ScalableIngestionRefusing", "ScalableModelStale", "ScalableScalingHeld", "ScalableTrainingFailing"]
    proc = _promtool_test(tmp_path, groups, RULE_CASES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_alert_tests_catch_a_wrong_rule(tmp_path):
    """The attack: the same cases against rules that ignore what they must (refusals counted
    without unauthorized callers, paused workflows not ignored) fail."""
    groups = _rule_groups({"scalingHeld": {"ignoreReasons": []}})
    for rule in groups["groups"][0]["rules"]:
        rule["expr"] = rule["expr"].replace('result=~"refused|unauthorized"', 'result="refused"')
    proc = _promtool_test(tmp_path, groups, RULE_CASES)
    assert proc.returncode != 0
    assert "ScalableScalingHeld" in proc.stdout + proc.stderr and "ScalableIngestionRefusing" in proc.stdout + proc.stderr


def test_the_alerts_follow_their_values(tmp_path):
    """selector narrows every expression (series of another job fire nothing); alertLabels are
    added; afterSeconds, window and for are the values given; an alert can be turned off."""
    quiet = [{**case, "alert_rule_test": [{**t, "exp_alerts": []} for t in case["alert_rule_test"]]} for case in RULE_CASES]
    groups = _rule_groups({"selector": 'job="other-operator"'})
    proc = _promtool_test(tmp_path, groups, quiet)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    groups = _rule_groups({"alertLabels": {"team": "platform", "severity": "critical"},
                           "modelStale": {"afterSeconds": 172800, "for": "1h"},
                           "trainingFailing": {"enabled": False}})
    rules = {r["alert"]: r for r in groups["groups"][0]["rules"]}
    assert "ScalableTrainingFailing" not in rules
    stale = rules["ScalableModelStale"]
    assert stale["labels"] == {"team": "platform", "severity": "critical"} and stale["for"] == "1h"
    assert stale["expr"].endswith("> 172800")


class _RulesPrometheus(PrometheusServer):
    """The tests' Prometheus, evaluating a rule file as well."""

    def __init__(self, rules: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rules = rules

    def config(self) -> dict:
        return {**super().config(), "rule_files": [str(self.rules)]}


def _firing(prom: PrometheusServer) -> set[tuple[str, ...]]:
    return {(r["metric"]["alertname"],) + tuple(r["metric"].get(k, "") for k in ("namespace", "workflow", "reason", "model"))
            for r in prom.query('ALERTS{alertstate="firing"}')}


async def test_the_alerts_on_a_real_operator_scraped_by_a_real_prometheus(kube_api, namespace, tmp_path):
    """The chart's rules (every `for` 0s) in Debian's Prometheus, scraping the operator's own
    /metrics: a workflow whose DaskCluster is missing fires ScalableScalingHeld, a paused one
    does not; pushes with a token the API server refuses fire ScalableIngestionRefusing; a
    trained model is fresh (ScalableModelStale silent, its series the time it was trained)."""
    groups = _rule_groups({"selector": 'job="scalable-operator"', "trainingFailing": {"window": "1m", "for": "0s"},
                           "modelStale": {"for": "0s"}, "scalingHeld": {"for": "0s"},
                           "ingestionRefusing": {"window": "1m", "for": "0s"}})
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(groups))
    prom = _RulesPrometheus(rules, scrape_interval="1s", workdir=tmp_path / "prometheus")
    try:
        prom.start()
    except (MissingBinaryError, PrometheusError) as e:
        pytest.fail(f"the alert test needs Prometheus: {e}", pytrace=False)

    write_history(tmp_path / "telemetry" / namespace / "runs", n=60, peak_gib=2.0)
    await create(kube_api, namespace, {"apiVersion": SCALABLE, "kind": "AdvisorModel", "metadata": {"name": "demand"},
                                       "spec": {"coverage": 0.9, "minHistory": 5, "retrainInterval": "1h"}})
    await create_dask_cluster(kube_api, namespace, "sim")
    await create(kube_api, namespace, scalable_workflow("orphan", "missing"))
    paused = scalable_workflow("paused", "sim")
    paused["metadata"]["annotations"] = {ANNOTATION_PAUSED: "true"}
    await create(kube_api, namespace, paused)
    try:
        async with running_operator(operator_options(namespace, tmp_path / "telemetry")) as op:
            prom.add_target("scalable-operator", f"127.0.0.1:{op.ports['metrics']}")

            async def held():
                firing = _firing(prom)
                return firing if ("ScalableScalingHeld", namespace, "orphan", "ClusterNotFound", "") in firing else None

            await wait_until(held, timeout=60, what="ScalableScalingHeld firing for the workflow without its DaskCluster")
            assert prom.value(f'scalable_scaling_held{{namespace="{namespace}",workflow="paused",reason="Paused"}}') == 1

            async def push() -> int:
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{op.ingest_url}/v1/namespaces/{namespace}/scalableworkflows/orphan/runs",
                                         json={"records": []}, headers={"Authorization": "Bearer not-a-token"}) as r:
                        return r.status

            async def refusing():
                assert await push() == 401
                firing = _firing(prom)
                return firing if ("ScalableIngestionRefusing", namespace, "", "", "") in firing else None

            await wait_until(refusing, timeout=60, interval=1.0, what="ScalableIngestionRefusing firing")

            async def trained():
                return prom.value(f'scalable_model_trained_timestamp_seconds{{namespace="{namespace}",model="demand"}}')

            when = await wait_until(trained, timeout=180, what="the trained model's time scraped")
            assert abs(time.time() - when) < 180
            await asyncio.sleep(3)  # a few evaluations
            firing = _firing(prom)
            assert not [a for a in firing if a[0] in ("ScalableModelStale", "ScalableTrainingFailing")], firing
            assert not [a for a in firing if a[0] == "ScalableScalingHeld" and a[2] == "paused"], firing
    finally:
        prom.stop()
