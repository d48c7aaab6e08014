"""Where the operator keeps telemetry and models on its volume, one directory tree per namespace.

Layout under the telemetry root (the operator's PVC)::

    <root>/<namespace>/runs/<run_id>/...            runs pushed by clients and observed by the operator
    <root>/<namespace>/models/<advisormodel>/...    the model store of one AdvisorModel

Namespaces are the tenancy boundary: every path is built from a validated namespace and object
name (Kubernetes DNS rules, so no ``/``, ``..`` or empty parts) and is checked to resolve inside
its namespace's directory, so one namespace's AdvisorModel can never read another's runs.

Telemetry outlives ScalableWorkflows on purpose: it is the namespace's history and trains every
AdvisorModel there; deleting and re-creating a workflow must not forget what was learned.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["StorageError", "TelemetryRoot", "validate_namespace", "validate_name"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class StorageError(ValueError):
    """A name that cannot become a path on the telemetry volume."""


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise StorageError(f"invalid namespace {namespace!r}: must be a DNS label (a-z, 0-9, -; at most 63)")
    return namespace


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name) or ".." in name:
        raise StorageError(f"invalid object name {name!r}: must be a DNS subdomain (a-z, 0-9, - and .)")
    return name


class TelemetryRoot:
    """The operator's telemetry volume."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"TelemetryRoot({str(self.root)!r})"

    def _inside(self, path: Path, namespace: str) -> Path:
        base = (self.root / namespace).resolve()
        resolved = path.resolve()
        if resolved != base and base not in resolved.parents:
            raise StorageError(f"{path} escapes the directory of namespace {namespace!r}")
        return path

    def namespace_dir(self, namespace: str) -> Path:
        return self._inside(self.root / validate_namespace(namespace), namespace)

    def runs_dir(self, namespace: str, create: bool = False) -> Path:
        path = self._inside(self.namespace_dir(namespace) / "runs", namespace)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def model_dir(self, namespace: str, advisor_model: str, create: bool = False) -> Path:
        path = self._inside(self.namespace_dir(namespace) / "models" / validate_name(advisor_model), namespace)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_model(self, namespace: str, advisor_model: str) -> bool:
        """Delete a model store (when its AdvisorModel is deleted); True if there was one."""
        path = self.model_dir(namespace, advisor_model)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True

    def free_bytes(self) -> int:
        """Free space on the volume, for refusing uploads before the disk is full."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free
