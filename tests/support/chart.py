"""The Helm chart (charts/scalable-operator) as tests and the demo use it.

- `helm(*args)`: run the pinned helm (built by `make testenv`); a missing binary raises
  MissingBinaryError naming `make testenv`.
- `render(values=..., set_values=..., namespace=...)`: `helm template` -> list of documents.
- `rbac_documents(docs)`: the ServiceAccount, (Cluster)Roles and bindings of a rendering, so a
  test or the demo can run the operator under exactly the chart's permissions.
- `apply_documents(kubeconfig, docs)`: server-side apply with an admin kubeconfig (kubectl).
- `operator_args(docs)`: the `scalable operator run` arguments of the rendered Deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from tests.support.testenv import REPO_ROOT, MissingBinaryError, binary

CHART_DIR = REPO_ROOT / "charts" / "scalable-operator"
RELEASE = "scalable-operator"
RELEASE_NAMESPACE = "scalable-system"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def helm_path() -> Path:
    return binary("helm")


def kubectl_path() -> str:
    found = shutil.which("kubectl")
    if not found:
        raise MissingBinaryError("kubectl is not on PATH; install it (the CI machines have it)")
    return found


def helm(*args: str, kubeconfig: str | Path | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the pinned helm with its caches in a private directory (never the user's ~/.config/helm)."""
    home = Path(tempfile.gettempdir()) / "scalable-helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kubectl(*args: str, kubeconfig: str | Path, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([kubectl_path(), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template_args(values: Iterable[Path | str] = (), set_values: dict[str, Any] | None = None,
                  namespace: str = RELEASE_NAMESPACE, release: str = RELEASE) -> list[str]:
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for v in values:
        args += ["--values", str(v)]
    for key, value in (set_values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render(values: Iterable[Path | str] = (), set_values: dict[str, Any] | None = None, *,
           namespace: str = RELEASE_NAMESPACE, release: str = RELEASE, include_crds: bool = False) -> list[dict]:
    args = template_args(values, set_values, namespace, release)
    if include_crds:
        args.append("--include-crds")
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def rbac_documents(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def apply_documents(kubeconfig: str | Path, docs: list[dict], *, namespace: str | None = None,
                    dry_run: bool = False, field_manager: str = "scalable-tests") -> str:
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={field_manager}", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    if dry_run:
        args.append("--dry-run=server")
    return kubectl(*args, kubeconfig=kubeconfig, input="\n---\n".join(yaml.safe_dump(d) for d in docs)).stdout


def operator_args(docs: list[dict]) -> list[str]:
    """The arguments the rendered Deployment gives the image's `scalable` entry point."""
    deployment = find(docs, "Deployment")[0]
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    return list(container["args"])
