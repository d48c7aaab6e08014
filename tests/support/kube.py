"""Kubernetes helpers for tests, on kr8s's asyncio API (the one client the tests use).

- `install_crds(kubeconfig, paths)`: server-side apply CRD YAML files, wait until Established.
- `dask_kubernetes_crd_files()`: the CRDs shipped in the dask-kubernetes wheel.
- `repo_crd_files()`: ours, from the repository's crds/ directory (when it holds files).
- `service_account_kubeconfig(...)`: a TokenRequest token for a ServiceAccount, written as a
  kubeconfig, so a test can act as that ServiceAccount under RBAC.
- `server_side_apply(...)`: a raw server-side apply PATCH (field manager, force).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, Iterable

import httpx
import kr8s
import kr8s.asyncio
import yaml

from tests.support.controlplane import write_kubeconfig
from tests.support.testenv import REPO_ROOT


def dask_kubernetes_crd_files() -> list[Path]:
    import dask_kubernetes

    d = Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no CRDs in {d}; is dask-kubernetes installed from its wheel?")
    return files


def repo_crd_files() -> list[Path]:
    d = REPO_ROOT / "crds"
    return sorted(p for p in d.glob("*.y*ml") if p.is_file()) if d.is_dir() else []


def load_documents(paths: Iterable[Path]) -> list[dict]:
    docs = []
    for p in paths:
        docs.extend(d for d in yaml.safe_load_all(p.read_text()) if d)
    return docs


def _api_path(api_version: str, kind_plural: str, name: str, namespace: str | None = None) -> tuple[str, str, str]:
    """(version, base, url) for kr8s's call_api."""
    base = "/api" if "/" not in api_version else "/apis"
    url = f"{kind_plural}/{name}"
    return api_version, base, url


async def server_side_apply(
    api: kr8s.asyncio.Api,
    obj: dict,
    *,
    plural: str,
    field_manager: str,
    force: bool = False,
    namespace: str | None = None,
) -> httpx.Response:
    """PATCH application/apply-patch+yaml. Raises kr8s.ServerError on 4xx/5xx; its
    `.response.status_code` is 409 for a field-manager conflict."""
    version, base, url = _api_path(obj["apiVersion"], plural, obj["metadata"]["name"])
    params = {"fieldManager": field_manager}
    if force:
        params["force"] = "true"
    async with api.call_api(
        "PATCH",
        version=version,
        base=base,
        namespace=namespace or obj["metadata"].get("namespace"),
        url=url,
        params=params,
        headers={"Content-Type": "application/apply-patch+yaml"},
        content=json.dumps(obj),
    ) as resp:
        return resp


async def install_crds(
    kubeconfig: str | Path, paths: Iterable[Path], *, field_manager: str = "scalable-tests", timeout: float = 60.0
) -> list[str]:
    """Server-side apply every CustomResourceDefinition in paths; wait until each is Established."""
    api = await kr8s.asyncio.api(kubeconfig=str(kubeconfig))
    names = []
    for doc in load_documents(paths):
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        await server_side_apply(api, doc, plural="customresourcedefinitions", field_manager=field_manager, force=True)
        names.append(doc["metadata"]["name"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in names:
        while True:
            async with api.call_api(
                "GET", version="apiextensions.k8s.io/v1", base="/apis", url=f"customresourcedefinitions/{name}"
            ) as r:
                conds = {c["type"]: c["status"] for c in (r.json().get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                break
            if loop.time() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout} s: {conds}")
            await asyncio.sleep(0.1)
    return names


def _cluster_of(kubeconfig: Path) -> dict[str, Any]:
    """The cluster entry (server, CA) of the kubeconfig's current context."""
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = dict(next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"]))
    ca = cluster.get("certificate-authority")
    if ca and not Path(ca).is_absolute():
        cluster["certificate-authority"] = str((Path(kubeconfig).parent / ca).resolve())
    return cluster


async def request_token(
    api: kr8s.asyncio.Api,
    namespace: str,
    name: str,
    *,
    expiration_seconds: int = 3600,
    audiences: list[str] | None = None,
) -> str:
    """A bound token for ServiceAccount namespace/name via the TokenRequest API."""
    spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
    if audiences:
        spec["audiences"] = audiences
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    async with api.call_api(
        "POST", version="v1", namespace=namespace, url=f"serviceaccounts/{name}/token", content=json.dumps(body)
    ) as r:
        return r.json()["status"]["token"]


async def service_account_kubeconfig(
    api: kr8s.asyncio.Api,
    admin_kubeconfig: str | Path,
    namespace: str,
    name: str,
    path: str | Path,
    *,
    create: bool = True,
    expiration_seconds: int = 3600,
) -> Path:
    """Issue a token for ServiceAccount namespace/name (creating it if asked) and write a
    kubeconfig at path that authenticates as it (same server and CA as admin_kubeconfig)."""
    if create:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        await server_side_apply(api, sa, plural="serviceaccounts", field_manager="scalable-tests", force=True)
    token = await request_token(api, namespace, name, expiration_seconds=expiration_seconds)
    cluster = _cluster_of(Path(admin_kubeconfig))
    ca_data = cluster.get("certificate-authority-data")
    ca_file = cluster.get("certificate-authority")
    if not ca_data and ca_file:
        ca_data = base64.b64encode(Path(ca_file).read_bytes()).decode()
    return write_kubeconfig(
        Path(path),
        cluster["server"],
        token,
        ca_data=ca_data,
        user=f"system:serviceaccount:{namespace}:{name}",
        namespace=namespace,
    )
