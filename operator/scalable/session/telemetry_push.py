"""Where a session pushes its runs, and the push itself (at close).

The destination comes from the environment first (what a platform sets in the pod), then from
scalable.yaml's ``telemetry.push``:

=====================================  ===========================================
``SCALABLE_TELEMETRY_URL``             the operator's ingestion URL; unset: no push
``SCALABLE_TELEMETRY_WORKFLOW``        NAMESPACE/NAME of the ScalableWorkflow
``SCALABLE_TELEMETRY_TOKEN[_FILE]``    the token (default: the pod's ServiceAccount's)
``SCALABLE_TELEMETRY_CA_FILE``         CA bundle for https
``SCALABLE_TELEMETRY_ALLOW_INSECURE_HTTP=1``  a token over http to a non-loopback host
``SCALABLE_TELEMETRY_SPOOL``           the spool (default: ``spool`` next to the runs dir)
=====================================  ===========================================

The workflow defaults to the manifest's ``workflow`` in the pod's namespace (or the manifest's
``kubernetes.namespace`` outside a pod).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scalable.session.manifest import Manifest
from scalable.telemetry.backoff import Backoff
from scalable.telemetry.batches import run_batches
from scalable.telemetry.credentials import SA_NAMESPACE_PATH, TokenSource, in_cluster_namespace
from scalable.telemetry.push import IngestClient
from scalable.telemetry.spool import SPOOL_ENV, DrainReport, Spool

__all__ = ["PushTarget", "resolve_push_target", "push_run"]

logger = logging.getLogger(__name__)

URL_ENV = "SCALABLE_TELEMETRY_URL"
WORKFLOW_ENV = "SCALABLE_TELEMETRY_WORKFLOW"
CA_ENV = "SCALABLE_TELEMETRY_CA_FILE"
INSECURE_ENV = "SCALABLE_TELEMETRY_ALLOW_INSECURE_HTTP"


@dataclass(frozen=True)
class PushTarget:
    url: str
    namespace: str
    name: str
    token: TokenSource
    ca_file: str | None
    allow_insecure_http: bool
    spool_root: Path
    deadline_s: float

    def client(self) -> IngestClient:
        return IngestClient(self.url, self.namespace, self.name, token=self.token, ca_file=self.ca_file,
                            allow_insecure_http=self.allow_insecure_http)

    def spool(self) -> Spool:
        return Spool(self.spool_root, self.url, self.namespace, self.name)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_push_target(manifest: Manifest, runs_dir: Path, base_dir: Path = Path("."), env: Mapping[str, str] | None = None,
                        namespace_file: str | os.PathLike[str] = SA_NAMESPACE_PATH) -> PushTarget | None:
    """The destination, or None when nothing names one. Raises ValueError for a bad setting."""
    env = os.environ if env is None else env
    settings = manifest.telemetry.push
    url = env.get(URL_ENV) or settings.url
    if not url:
        return None
    workflow = env.get(WORKFLOW_ENV) or settings.workflow
    if workflow:
        namespace, sep, name = workflow.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"telemetry workflow {workflow!r}: expected NAMESPACE/NAME")
    else:
        namespace = in_cluster_namespace(namespace_file) or manifest.kubernetes.namespace
        name = manifest.workflow

    def path(value: str | None) -> str | None:
        return None if not value else str(value if Path(value).is_absolute() else base_dir / value)

    token_file = path(settings.token_file) if settings.token_file else None
    token = TokenSource.resolve(token_file=token_file, env=env)
    spool_root = env.get(SPOOL_ENV) or path(settings.spool_dir) or str(Path(runs_dir).parent / "spool")
    return PushTarget(
        url=url, namespace=namespace, name=name, token=token,
        ca_file=env.get(CA_ENV) or path(settings.ca_file),
        allow_insecure_http=_truthy(env.get(INSECURE_ENV)) or settings.allow_insecure_http,
        spool_root=Path(spool_root), deadline_s=settings.deadline_seconds,
    )


def push_run(target: PushTarget, run_dir: Path, backoff: Backoff | None = None) -> DrainReport:
    """Spool the run, then drain the spool (this run and whatever earlier sessions left)."""
    spool = target.spool()
    spool.add(run_batches(run_dir))
    client = target.client()
    try:
        return spool.drain(client, backoff or Backoff(deadline_s=target.deadline_s))
    finally:
        client.close()
