"""Tenants and the operator's own token, under real RBAC on the local API server.

* A client of namespace A, allowed everything a tenant gets on its own ScalableWorkflows and
  AdvisorModels (get, update, patch, status), can neither read nor write them in namespace B,
  nor push telemetry to B's workflow through the operator's ingestion (403, nothing lands in
  B's directory), while B's own client can; no token is 401.
* The operator's ServiceAccount, bound to the ClusterRole of deploy/ (generated from the chart),
  is refused everything that ClusterRole does not grant: Secrets, Pods (beyond listing them:
  no get by name, watch, change or logs), ConfigMaps, deleting or creating custom resources,
  writing their spec, RBAC objects, Nodes, other Leases.

tests/integration/test_ingest.py covers the ingestion decisions in more depth,
tests/integration/test_rbac_least_privilege.py that the operator uses every grant it has.

Rerun: ``pytest tests/integration/test_tenancy.py -q``
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import aiohttp
import httpx
import kr8s
import yaml

from tests.integration.harness import create, running_operator, scalable_workflow
from tests.integration.test_ingest import _grant_update, _push, _task, _token
from tests.support.kube import server_side_apply
from tests.support.testenv import REPO_ROOT
from scalable.controller.app import RunOptions
from scalable.controller.runtime import OperatorConfig

GV = "scalable.dev/v1alpha1"


def _client(admin_kubeconfig: str, token: str | None) -> httpx.Client:
    config = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=cluster["server"], verify=cluster.get("certificate-authority") or False, headers=headers, timeout=30)


async def _grant_tenant(api, namespace: str, sa: str) -> None:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "tenant", "namespace": namespace},
            "rules": [{"apiGroups": ["scalable.dev"],
                       "resources": ["scalableworkflows", "scalableworkflows/status", "advisormodels", "advisormodels/status"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": f"tenant-{sa}", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}
    await server_side_apply(api, role, plural="roles", field_manager="scalable-tests", force=True)
    await server_side_apply(api, binding, plural="rolebindings", field_manager="scalable-tests", force=True)


def _tenant_requests(namespace: str) -> list[tuple[str, str, dict | None]]:
    base = f"/apis/{GV}/namespaces/{namespace}"
    merge = {"metadata": {"labels": {"x": "y"}}}
    return [
        ("GET", f"{base}/scalableworkflows/wf", None),
        ("GET", f"{base}/scalableworkflows", None),
        ("PATCH", f"{base}/scalableworkflows/wf", merge),
        ("PATCH", f"{base}/scalableworkflows/wf/status", {"status": {"desiredWorkers": 99}}),
        ("GET", f"{base}/scalableworkflows/wf/status", None),
        ("GET", f"{base}/advisormodels/am", None),
        ("PATCH", f"{base}/advisormodels/am/status", {"status": {"phase": "Ready"}}),
        ("DELETE", f"{base}/advisormodels/am", None),
    ]


def _send(client: httpx.Client, method: str, path: str, body: dict | None) -> int:
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    for _ in range(20):  # 429: the API server's priority and fairness asks to come back later
        code = client.request(method, path, content=json.dumps(body) if body is not None else None, headers=headers,
                              params={"dryRun": "All"} if method in ("PATCH", "DELETE", "POST", "PUT") else None).status_code
        if code != 429:
            return code
        time.sleep(0.5)
    return code


async def test_a_tenant_cannot_touch_another_namespace(kube_api, kubeconfig, namespace, sa_kubeconfig, tmp_path):
    other = f"{namespace[:50]}-b"
    await kr8s.asyncio.objects.Namespace({"metadata": {"name": other}}, api=kube_api).create()
    try:
        for ns in (namespace, other):
            await create(kube_api, ns, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
            await create(kube_api, ns, {"apiVersion": GV, "kind": "AdvisorModel", "metadata": {"name": "am"}, "spec": {}})
        tenant_a = _token(await sa_kubeconfig("client"))
        await _grant_tenant(kube_api, namespace, "client")
        await _grant_update(kube_api, namespace, "client")
        tenant_b = _token(await sa_kubeconfig("client", namespace=other))
        await _grant_update(kube_api, other, "client")

        with _client(kubeconfig, tenant_a) as a:
            own = {f"{m} {p}": _send(a, m, p, b) for m, p, b in _tenant_requests(namespace)}
            foreign = {f"{m} {p}": _send(a, m, p, b) for m, p, b in _tenant_requests(other)}
        assert all(code < 400 for code in own.values()), f"the tenant's own namespace must work: {own}"
        assert all(code == 403 for code in foreign.values()), f"namespace B must refuse A's token: {foreign}"
        with _client(kubeconfig, None) as anonymous:
            assert _send(anonymous, "GET", f"/apis/{GV}/namespaces/{other}/scalableworkflows/wf", None) in (401, 403)

        options = RunOptions(config=OperatorConfig(telemetry_path=str(tmp_path)), namespaces=[namespace, other],
                             metrics_host="127.0.0.1", metrics_port=0, ingest_host="127.0.0.1", ingest_port=0,
                             lease_namespace=namespace, identity="op-tenancy", lease_seconds=6)
        body = {"run": {"run_id": f"run-{secrets.token_hex(4)}"}, "records": [_task(1)]}
        async with running_operator(options) as op, aiohttp.ClientSession() as session:
            status, answer = await _push(session, op.ingest_url, other, "wf", tenant_a, body)
            assert status == 403 and f"system:serviceaccount:{namespace}:client" in answer["error"], answer
            assert not (tmp_path / other / "runs" / body["run"]["run_id"]).exists(), "a refused push must store nothing in B"
            status, _ = await _push(session, op.ingest_url, other, "wf", None, body)
            assert status == 401
            status, answer = await _push(session, op.ingest_url, other, "wf", tenant_b, body)
            assert status == 200 and answer["accepted"] == 1, answer  # B's own client can
            assert (tmp_path / other / "runs" / body["run"]["run_id"] / "tasks.jsonl").is_file()
            assert not (tmp_path / namespace / "runs" / body["run"]["run_id"]).exists()
    finally:
        try:
            await kr8s.asyncio.objects.Namespace({"metadata": {"name": other}}, api=kube_api).delete()
        except kr8s.NotFoundError:
            pass


def _deploy_cluster_role(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy/base/scalable-operator.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    return {"apiVersion": role["apiVersion"], "kind": "ClusterRole", "metadata": {"name": name}, "rules": role["rules"]}


async def test_the_operator_token_cannot_exceed_its_cluster_role(kube_api, kubeconfig, namespace, sa_kubeconfig):
    name = f"scalable-operator-test-{secrets.token_hex(3)}"
    await server_side_apply(kube_api, _deploy_cluster_role(name), plural="clusterroles", field_manager="scalable-tests", force=True)
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]}
    await server_side_apply(kube_api, binding, plural="clusterrolebindings", field_manager="scalable-tests", force=True)
    try:
        token = _token(await sa_kubeconfig("operator"))
        await create(kube_api, namespace, scalable_workflow("wf", "sim", scaling={"mode": "Off"}))
        ns = namespace
        granted = [
            ("GET", f"/apis/{GV}/namespaces/{ns}/scalableworkflows/wf", None),
            ("PATCH", f"/apis/{GV}/namespaces/{ns}/scalableworkflows/wf/status", {"status": {"desiredWorkers": 1}}),
            ("GET", f"/apis/kubernetes.dask.org/v1/namespaces/{ns}/daskautoscalers", None),
            ("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=dask.org%2Fcomponent%3Dworker", None),  # list only
        ]
        refused = [
            ("GET", f"/api/v1/namespaces/{ns}/secrets", None),
            ("GET", f"/api/v1/namespaces/{ns}/configmaps", None),
            ("GET", f"/api/v1/namespaces/{ns}/pods/x", None),
            ("GET", f"/api/v1/namespaces/{ns}/pods?watch=true", None),
            ("DELETE", f"/api/v1/namespaces/{ns}/pods/x", None),
            ("PATCH", f"/api/v1/namespaces/{ns}/pods/x", {"metadata": {"labels": {"x": "y"}}}),
            ("GET", f"/api/v1/namespaces/{ns}/pods/x/log", None),
            ("POST", f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                                        "spec": {"containers": [{"name": "x", "image": "x"}]}}),
            ("GET", "/api/v1/nodes", None),
            ("DELETE", f"/apis/{GV}/namespaces/{ns}/scalableworkflows/wf", None),
            ("PUT", f"/apis/{GV}/namespaces/{ns}/scalableworkflows/wf", {"apiVersion": GV, "kind": "ScalableWorkflow",
                                                                           "metadata": {"name": "wf"}, "spec": {}}),
            ("POST", f"/apis/{GV}/namespaces/{ns}/advisormodels", {"apiVersion": GV, "kind": "AdvisorModel", "metadata": {"name": "x"}}),
            ("DELETE", f"/apis/kubernetes.dask.org/v1/namespaces/{ns}/daskclusters/sim", None),
            ("POST", f"/apis/kubernetes.dask.org/v1/namespaces/{ns}/daskclusters", {"apiVersion": "kubernetes.dask.org/v1",
                                                                                     "kind": "DaskCluster", "metadata": {"name": "x"}}),
            ("GET", f"/apis/kubernetes.dask.org/v1/namespaces/{ns}/daskclusters", None),  # get by name only, no list
            ("PATCH", f"/apis/kubernetes.dask.org/v1/namespaces/{ns}/daskautoscalers/x", {"spec": {}}),
            ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {"apiVersion": "rbac.authorization.k8s.io/v1",
                                                                                "kind": "ClusterRoleBinding", "metadata": {"name": "x"},
                                                                                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                                                                                "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]}),
            ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/someone-else", None),
            ("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/operator/token", None),
        ]
        with _client(kubeconfig, token) as op:
            ok = {f"{m} {p}": _send(op, m, p, b) for m, p, b in granted}
            denied = {f"{m} {p}": _send(op, m, p, b) for m, p, b in refused}
        assert all(code < 400 or code == 404 for code in ok.values()), f"granted requests failed: {ok}"
        assert all(code == 403 for code in denied.values()), f"not refused: { {k: v for k, v in denied.items() if v != 403} }"
    finally:
        with _client(kubeconfig, yaml.safe_load(Path(kubeconfig).read_text())["users"][0]["user"]["token"]) as admin:
            admin.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
            admin.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
