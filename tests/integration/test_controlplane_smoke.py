"""Smoke tests proving the local control plane is the real thing: schema validation,
server-side apply conflicts, garbage collection, namespace deletion, RBAC, helm; and that
missing binaries fail loudly with the command that provides them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import kr8s
import kr8s.asyncio
import pytest

from tests.support import testenv
from tests.support.controlplane import ControlPlane
from tests.support.kube import install_crds, server_side_apply
from tests.support.prometheus import PrometheusServer
from tests.support.testenv import MissingBinaryError


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s")


async def create(api: kr8s.asyncio.Api, obj: dict, plural: str) -> dict:
    """POST a namespaced custom object; raises kr8s.ServerError (422 when the schema rejects it)."""
    async with api.call_api(
        "POST", version=obj["apiVersion"], base="/apis", namespace=obj["metadata"]["namespace"],
        url=plural, content=json.dumps(obj),
    ) as r:
        return r.json()


async def get_status(api: kr8s.asyncio.Api, **kw) -> int:
    async with api.call_api("GET", raise_for_status=False, **kw) as r:
        return r.status_code


def widget_crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0, "maximum": 10},
                                        "mode": {"type": "string", "enum": ["Auto", "Off"], "default": "Auto"},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


async def test_crd_structural_schema_validates_and_defaults(kube_api, kubeconfig, namespace, tmp_path):
    group = f"{namespace}.smoke.scalable.test"
    crd = widget_crd(group)
    path = tmp_path / f"{group}.json"
    path.write_text(json.dumps(crd))
    try:
        await install_crds(kubeconfig, [path])
        invalid = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": {"replicas": "many"},
        }
        with pytest.raises(kr8s.ServerError) as err:
            await create(kube_api, invalid, "widgets")
        assert err.value.response.status_code == 422, err.value.response.text
        assert "spec.replicas" in err.value.response.text

        too_many = dict(invalid, spec={"replicas": 11}, metadata={"name": "big", "namespace": namespace})
        with pytest.raises(kr8s.ServerError) as err:
            await create(kube_api, too_many, "widgets")
        assert err.value.response.status_code == 422
        assert "less than or equal to 10" in err.value.response.text

        missing = dict(invalid, spec={}, metadata={"name": "empty", "namespace": namespace})
        with pytest.raises(kr8s.ServerError) as err:
            await server_side_apply(kube_api, missing, plural="widgets", field_manager="smoke")
        assert err.value.response.status_code == 422
        assert "Required value" in err.value.response.text

        good = dict(invalid, spec={"replicas": 3}, metadata={"name": "good", "namespace": namespace})
        resp = await server_side_apply(kube_api, good, plural="widgets", field_manager="smoke")
        assert resp.json()["spec"] == {"replicas": 3, "mode": "Auto"}  # schema default applied
    finally:
        async with kube_api.call_api(
            "DELETE", version="apiextensions.k8s.io/v1", base="/apis",
            url=f"customresourcedefinitions/widgets.{group}", raise_for_status=False,
        ):
            pass
        path.unlink(missing_ok=True)


async def test_dask_kubernetes_crds_are_installed_and_validate(kube_api, kube_cluster, namespace):
    assert "daskclusters.kubernetes.dask.org" in kube_cluster.crds
    assert "daskworkergroups.kubernetes.dask.org" in kube_cluster.crds
    bad = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": "wg", "namespace": namespace},
        "spec": {"cluster": "c", "worker": {"replicas": "two", "spec": {"containers": []}}},
    }
    with pytest.raises(kr8s.ServerError) as err:
        await create(kube_api, bad, "daskworkergroups")
    assert err.value.response.status_code == 422, err.value.response.text
    assert "spec.worker.replicas" in err.value.response.text


async def test_server_side_apply_reports_field_manager_conflict(kube_api, namespace):
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "owned", "namespace": namespace},
        "data": {"replicas": "1"},
    }
    await server_side_apply(kube_api, cm, plural="configmaps", field_manager="alice")
    theirs = dict(cm, data={"replicas": "2"})
    with pytest.raises(kr8s.ServerError) as err:
        await server_side_apply(kube_api, theirs, plural="configmaps", field_manager="bob")
    assert err.value.response.status_code == 409
    assert "alice" in err.value.response.text  # the conflict names the other manager
    resp = await server_side_apply(kube_api, theirs, plural="configmaps", field_manager="bob", force=True)
    body = resp.json()
    assert body["data"] == {"replicas": "2"}
    assert {m["manager"] for m in body["metadata"]["managedFields"]} == {"bob"}


async def test_resource_version_conflict_on_stale_update(kube_api, namespace):
    cm = kr8s.asyncio.objects.ConfigMap(
        {"metadata": {"name": "rv", "namespace": namespace}, "data": {"a": "1"}}, api=kube_api
    )
    await cm.create()
    stale = dict(cm.raw)
    await cm.patch({"data": {"a": "2"}})
    async with kube_api.call_api(
        "PUT", namespace=namespace, url="configmaps/rv", content=json.dumps(stale | {"data": {"a": "3"}}),
        raise_for_status=False,
    ) as r:
        assert r.status_code == 409, r.text


async def test_deleting_owner_garbage_collects_dependents(kube_api, namespace):
    owner = kr8s.asyncio.objects.ConfigMap({"metadata": {"name": "owner", "namespace": namespace}}, api=kube_api)
    await owner.create()
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        dep = kr8s.asyncio.objects.Secret(
            {"metadata": {"name": f"dep-{i}", "namespace": namespace, "ownerReferences": [ref]}}, api=kube_api
        )
        await dep.create()
    await owner.delete(propagation_policy="Background")

    async def dependents_gone() -> bool:
        codes = [await get_status(kube_api, namespace=namespace, url=f"secrets/dep-{i}") for i in range(3)]
        return all(c == 404 for c in codes)

    await wait_until(dependents_gone, timeout=60, what="garbage collection of the owner's dependents")


async def test_namespace_deletion_completes(kube_api, kube_cluster):
    name = f"t-nsdel-{int(time.time() * 1000) % 10**8}"
    ns = kr8s.asyncio.objects.Namespace({"metadata": {"name": name}}, api=kube_api)
    await ns.create()
    cm = kr8s.asyncio.objects.ConfigMap({"metadata": {"name": "x", "namespace": name}}, api=kube_api)
    await cm.create()
    await ns.delete()

    async def gone() -> bool:
        return await get_status(kube_api, url=f"namespaces/{name}") == 404

    await wait_until(gone, timeout=60, what=f"deletion of namespace {name}")


async def test_service_account_without_rolebinding_is_forbidden(kube_api, namespace, sa_kubeconfig):
    path = await sa_kubeconfig("operator")
    sa_api = await kr8s.asyncio.api(kubeconfig=str(path))
    # SelfSubjectReview: who the API server says this token is (needs no RBAC grant).
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    async with sa_api.call_api(
        "POST", version="authentication.k8s.io/v1", base="/apis", url="selfsubjectreviews", content=json.dumps(review)
    ) as r:
        user = r.json()["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:operator"
    assert "system:serviceaccounts" in user["groups"]
    with pytest.raises(kr8s.ServerError) as err:
        async with sa_api.call_api("GET", namespace=namespace, url="configmaps"):
            pass
    assert err.value.response.status_code == 403
    assert "cannot list resource" in err.value.response.text

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "read-configmaps", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "operator-reads", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}],
    }
    await server_side_apply(kube_api, role, plural="roles", field_manager="smoke", namespace=namespace)
    await server_side_apply(kube_api, binding, plural="rolebindings", field_manager="smoke", namespace=namespace)

    async def allowed() -> bool:
        return await get_status(sa_api, namespace=namespace, url="configmaps") == 200

    await wait_until(allowed, timeout=10, what="RBAC allowing the bound ServiceAccount")
    # Still nothing beyond the Role.
    assert await get_status(sa_api, namespace=namespace, url="secrets") == 403


async def test_helm_installs_a_chart_into_the_api_server(helm_binary, kube_api, kubeconfig, namespace, tmp_path):
    v = testenv.versions()
    out = subprocess.run([str(helm_binary), "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(v["HELM_VERSION"]), out.stdout
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "KUBECONFIG": kubeconfig}
    run = subprocess.run(
        [str(helm_binary), "install", "smoke", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    cm = await kr8s.asyncio.objects.ConfigMap.get("smoke-cm", namespace=namespace, api=kube_api)
    assert cm.data["greeting"] == "hi"
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"


def test_missing_control_plane_binary_fails_naming_make_testenv(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALABLE_TESTENV_DIR", str(tmp_path / "empty"))
    with pytest.raises(MissingBinaryError, match=r"make testenv"):
        ControlPlane(tmp_path / "cp").start()
    with pytest.raises(MissingBinaryError, match=r"make testenv"):
        testenv.binary("helm")


def test_missing_prometheus_fails_naming_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingBinaryError, match=r"hack/install-system-deps\.sh"):
        PrometheusServer(workdir=tmp_path / "prom").start()


def test_start_failure_reports_each_components_log(tmp_path, monkeypatch):
    """A component that dies at start makes start() fail with the tail of every log."""
    from tests.support.controlplane import ControlPlaneError

    v = testenv.versions()
    fake = tmp_path / "env"
    (fake / f"etcd-{v['ETCD_VERSION']}").mkdir(parents=True)
    (fake / f"etcd-{v['ETCD_VERSION']}" / "etcd").symlink_to(testenv.binary("etcd"))
    kube = fake / f"kubernetes-{v['KUBERNETES_VERSION']}"
    kube.mkdir()
    for name in ("kube-apiserver", "kube-controller-manager"):
        (kube / name).write_text("#!/bin/sh\necho 'E0000 refusing to start: flag --nonsense' >&2\nexit 3\n")
        (kube / name).chmod(0o755)
    monkeypatch.setenv("SCALABLE_TESTENV_DIR", str(fake))
    cp = ControlPlane(tmp_path / "cp")
    with pytest.raises(ControlPlaneError) as err:
        cp.start(timeout=30)
    msg = str(err.value)
    assert "kube-apiserver exited with code 3" in msg
    assert "last 40 lines of kube-apiserver" in msg and "refusing to start: flag --nonsense" in msg
    assert "last 40 lines of etcd" in msg
    assert not cp.procs  # etcd was stopped again


async def test_pods_are_scheduled_and_run_on_fake_nodes(kube_api, namespace, fake_nodes):
    pod = kr8s.asyncio.objects.Pod(
        {
            "metadata": {"name": "worker", "namespace": namespace},
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "example/never-pulled:1",  # kwok runs no container
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                    }
                ]
            },
        },
        api=kube_api,
    )
    await pod.create()

    async def running() -> bool:
        await pod.refresh()
        return pod.status.get("phase") == "Running"

    await wait_until(running, timeout=60, what="the pod turning Running")
    assert pod.spec.nodeName in fake_nodes
