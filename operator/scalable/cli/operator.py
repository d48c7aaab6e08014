"""``scalable operator run``: the Kubernetes operator (kopf) as a command.

Two replicas may run; a Lease (``--lease-namespace``/``--lease-name``) makes exactly one act.
The controller comes with the ``[operator]`` extra and is imported only when the command runs
(never at module level: the CLI imports this module to list its commands), so ``scalable
--help`` and every other command work on the core install; without the extra this command
ends with one line naming ``pip install 'scalable-operator[operator]'``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The Kubernetes operator that sizes and scales Dask workflows.", no_args_is_help=True)


@app.command("run")
def run(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch this namespace (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace."),
    telemetry_path: Path = typer.Option(Path("/var/lib/scalable"), help="Root of telemetry and models (the PVC)."),
    prometheus_url: Optional[str] = typer.Option(None, help="Default Prometheus for workflows that name none."),
    prometheus_allowed_urls: Optional[str] = typer.Option(
        None, envvar="SCALABLE_PROMETHEUS_ALLOWED_URLS", show_default=False,
        help="Comma-separated scheme://host:port entries (scheme and port optional, host may be *.suffix) a workflow's "
             "spec.scaling.prometheus.url may name; '' allows only --prometheus-url. "
             "Default: in-cluster Services (*.svc,*.svc.cluster.local, the chart's default too).",
    ),
    scheduler_url: str = typer.Option(
        "http://$cluster-scheduler.$namespace.svc:8787",
        help="Template of the Dask scheduler's HTTP address, the fallback when Prometheus fails; '' disables it.",
    ),
    metrics_port: int = typer.Option(8080, help="Port of /metrics, /healthz and /readyz."),
    ingest_port: int = typer.Option(8081, help="Port of the telemetry ingestion endpoint (POST /v1/namespaces/...)."),
    ingest_tls_cert: Optional[Path] = typer.Option(None, help="TLS certificate of the ingestion endpoint (PEM)."),
    ingest_tls_key: Optional[Path] = typer.Option(None, help="Its private key (PEM)."),
    ingest_audience: list[str] = typer.Option([], help="Accept only tokens bound to this audience (repeatable)."),
    lease_namespace: str = typer.Option("scalable-system", envvar="POD_NAMESPACE", help="Namespace of the leader Lease."),
    lease_name: str = typer.Option("scalable-operator", help="Name of the leader Lease."),
    lease_seconds: int = typer.Option(15, help="Lease duration; a standby takes over this long after the leader stops renewing."),
    bind: str = typer.Option("0.0.0.0", help="Address the metrics and ingestion servers listen on."),
    identity: Optional[str] = typer.Option(None, envvar="POD_NAME", help="This replica's name in the Lease."),
    kubeconfig: Optional[str] = typer.Option(None, envvar="KUBECONFIG", help="Kubeconfig; in-cluster ServiceAccount without."),
    sizing_interval: float = typer.Option(300.0, help="Seconds between re-sizing checks of a workflow."),
    prometheus_batch_age: float = typer.Option(
        1.0, min=0.0, max=60.0,
        help="Workflows with the default queue queries due within this many seconds share one grouped Prometheus "
             "query per metric; 0 asks Prometheus per workflow."),
    training_workers: int = typer.Option(1, help="Training processes."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the operator until interrupted."""
    from scalable.cli.errors import SYSTEM_ERROR, fail
    from scalable.extras import OPERATOR, MissingExtraError, require

    try:  # the controller is the [operator] extra: a core install says what to install
        app_module, policy, runtime = (require(f"scalable.controller.{name}", extra=OPERATOR, needed_by="scalable operator")
                                       for name in ("app", "prometheus_policy", "runtime"))
    except MissingExtraError as exc:
        raise fail(str(exc), code=SYSTEM_ERROR) from None
    RunOptions, run_operator, OperatorConfig = app_module.RunOptions, app_module.run_operator, runtime.OperatorConfig
    parse_allowed_urls = policy.parse_allowed_urls
    if prometheus_allowed_urls is None:
        prometheus_allowed_urls = ",".join(policy.DEFAULT_ALLOWED_URLS)

    if not namespace and not all_namespaces:
        typer.echo("error: give --namespace NS (repeatable) or --all-namespaces", err=True)
        raise typer.Exit(2)
    if bool(ingest_tls_cert) != bool(ingest_tls_key):
        typer.echo("error: --ingest-tls-cert and --ingest-tls-key go together", err=True)
        raise typer.Exit(2)
    if namespace and all_namespaces:
        typer.echo("error: --namespace and --all-namespaces exclude each other", err=True)
        raise typer.Exit(2)
    try:
        allowed_urls = parse_allowed_urls(prometheus_allowed_urls)
    except ValueError as exc:
        typer.echo(f"error: --prometheus-allowed-urls: {exc}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # one line per HTTP request costs real CPU with hundreds of workflows polling
        logging.getLogger("httpx").setLevel(logging.WARNING)
    config = OperatorConfig(
        telemetry_path=str(telemetry_path), prometheus_url=prometheus_url, prometheus_allowed_urls=allowed_urls,
        scheduler_url_template=scheduler_url or None,
        sizing_interval_s=sizing_interval, training_workers=training_workers, prometheus_batch_age_s=prometheus_batch_age,
    )
    options = RunOptions(
        config=config, namespaces=list(namespace), clusterwide=all_namespaces, metrics_host=bind, metrics_port=metrics_port,
        ingest_host=bind, ingest_port=ingest_port, lease_namespace=lease_namespace, lease_name=lease_name, identity=identity,
        kubeconfig=kubeconfig, lease_seconds=lease_seconds,
        ingest_tls_cert=str(ingest_tls_cert) if ingest_tls_cert else None,
        ingest_tls_key=str(ingest_tls_key) if ingest_tls_key else None, ingest_audiences=list(ingest_audience) or None,
    )
    code = asyncio.run(run_operator(options))
    raise typer.Exit(code)
