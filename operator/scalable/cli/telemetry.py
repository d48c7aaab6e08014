"""``scalable telemetry``: bring history in (import) and see what is there (report)."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from scalable.cli.errors import err_console, fail


app = typer.Typer(
    help="Import job history as telemetry runs and report what a runs directory holds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_PROGRESS_MIN_BYTES = 1 << 20
RunsDir = typer.Option(None, "--runs-dir", help="runs directory (default: $SCALABLE_RUNS_DIR or ./.scalable/runs)")


def _runs_dir(value: Optional[Path]) -> Path:
    from scalable.telemetry.store import default_runs_dir

    return value if value is not None else default_runs_dir()


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="the file to import (plain or gzip)", show_default=False),
    fmt: str = typer.Option(
        ..., "--format", "-f",
        help="swf (Standard Workload Format), sacct (sacct --parsable2) or nextflow (a Nextflow trace file or CSV export)",
    ),
    runs_dir: Optional[Path] = RunsDir,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="id of the new run (default: generated)"),
    timezone: Optional[str] = typer.Option(
        None, "--timezone",
        help="nextflow: the time zone of dates written without one, an IANA name (UTC, Europe/Berlin) "
             "or local (default: this machine's, where Nextflow wrote them if it ran here)",
    ),
) -> None:
    """Import a job trace into the runs directory as one run."""
    from scalable.telemetry.importers import FORMATS, import_file
    from scalable.telemetry.store import RunStore, is_run_dir_name

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise fail(f"unknown format {fmt!r}: use one of {', '.join(sorted(FORMATS))}")
    options = {}
    if timezone is not None:
        if fmt != "nextflow":
            raise fail(f"--timezone applies to --format nextflow only, not {fmt}")
        from scalable.telemetry.importers.nextflow import resolve_timezone

        try:
            resolve_timezone(timezone)
        except ValueError as exc:
            raise fail(str(exc)) from None
        options["timezone"] = timezone
    if not file.exists():
        raise fail(f"no such file: {file}")
    if not file.is_file():
        raise fail(f"not a file: {file}")
    if run_id is not None and not is_run_dir_name(run_id):
        raise fail(f"invalid run id {run_id!r}: use letters, digits and . _ : @ + -")
    root = _runs_dir(runs_dir)
    store = RunStore(root)
    if run_id is not None and (root / run_id).exists():
        raise fail(f"run {run_id} already exists in {root}")

    size = file.stat().st_size
    err = Console(stderr=True)
    try:
        if size >= _PROGRESS_MIN_BYTES and err.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            with Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                console=err, transient=True,
            ) as bar:
                task = bar.add_task(f"importing {file.name}", total=size)
                result = import_file(
                    fmt, file, store, run_id=run_id, progress=lambda done, total: bar.update(task, completed=done),
                    **options,
                )
        else:
            result = import_file(fmt, file, store, run_id=run_id, **options)
    except PermissionError as exc:
        raise fail(f"permission denied: {exc.filename or file}") from None
    except (EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename and Path(exc.filename) != file:
            raise fail(f"cannot write to {exc.filename}: {exc.strerror}") from None
        raise fail(f"cannot read {file} as {fmt}: {exc}") from None

    if result.imported == 0:
        if result.path is not None:
            shutil.rmtree(result.path, ignore_errors=True)
        read = f"read {result.read} rows, " if result.read is not None else ""
        raise fail(f"no {result.unit} imported from {file} as {fmt} ({read}{result.reasons() or 'empty'}); is it {fmt}?")
    typer.echo(f"{result.summary()} ({root})")


def _quantile(values: Any, q: float) -> float:
    values = values.dropna()
    return float(values.quantile(q)) if len(values) else math.nan


@app.command()
def report(
    runs_dir: Optional[Path] = RunsDir,
    fmt: str = typer.Option("text", "--format", "-f", help="text or json"),
    top: int = typer.Option(10, "--top", min=1, help="how many tasks to list"),
) -> None:
    """Summarise a runs directory: runs, records, tasks, and what was skipped."""
    from scalable.telemetry.loader import load_decisions, load_run_infos, load_tasks

    fmt = fmt.strip().lower()
    if fmt not in ("text", "json"):
        raise fail(f"unknown format {fmt!r}: use text or json")
    root = _runs_dir(runs_dir)
    if not root.is_dir():
        raise fail(f"no runs directory at {root}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(root)
        infos, info_skips = load_run_infos(root)
        decisions = load_decisions(root)
    frame = table.frame
    skipped = dict(table.skipped.counts)
    for reason, count in info_skips.counts.items():
        skipped[f"run.json {reason}"] = count
    for reason, count in decisions.attrs.get("skipped", {}).get("counts", {}).items():
        skipped[f"decisions {reason}"] = count

    tasks = []
    if len(frame):
        grouped = frame.groupby("task", sort=False)
        counts = grouped.size().sort_values(ascending=False, kind="stable").head(top)
        for name, count in counts.items():
            rows = grouped.get_group(name)
            tasks.append({
                "task": name,
                "count": int(count),
                "runs": int(rows["run_id"].nunique()),
                "memory_p50_bytes": _quantile(rows["peak_memory_bytes"], 0.5),
                "memory_p95_bytes": _quantile(rows["peak_memory_bytes"], 0.95),
                "duration_p50_s": _quantile(rows["duration_s"], 0.5),
                "duration_p95_s": _quantile(rows["duration_s"], 0.95),
            })
    summary = {
        "runs_dir": str(root),
        "runs": len(set(frame["run_id"]) | {i.run_id for i in infos}) if len(frame) else len(infos),
        "task_records": int(len(frame)),
        "tasks": int(frame["task"].nunique()) if len(frame) else 0,
        "decision_records": int(len(decisions)),
        "states": {str(k): int(v) for k, v in frame["state"].value_counts().items()} if len(frame) else {},
        "features": table.feature_names,
        "skipped": skipped,
        "top_tasks": tasks,
    }
    if fmt == "json":
        typer.echo(json.dumps(_finite(summary), indent=2))
        return
    _print_report(summary)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _print_report(summary: dict[str, Any]) -> None:
    from scalable.units import format_memory

    console = Console()
    overview = Table(title=f"Telemetry in {summary['runs_dir']}", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_row("runs", f"{summary['runs']:,}")
    overview.add_row("task records", f"{summary['task_records']:,}")
    overview.add_row("distinct tasks", f"{summary['tasks']:,}")
    overview.add_row("scaling decisions", f"{summary['decision_records']:,}")
    for state, count in summary["states"].items():
        overview.add_row(f"  {state}", f"{count:,}")
    skipped = summary["skipped"]
    overview.add_row("skipped", f"{sum(skipped.values()):,}")
    for reason, count in sorted(skipped.items()):
        overview.add_row(f"  {reason.replace('_', ' ')}", f"{count:,}")
    console.print(overview)

    if not summary["top_tasks"]:
        return

    def mem(value: float) -> str:
        return format_memory(value) if math.isfinite(value) else "-"

    def secs(value: float) -> str:
        return f"{value:,.1f}" if math.isfinite(value) else "-"

    tasks = Table(title="Top tasks by count")
    for name, justify in (("task", "left"), ("count", "right"), ("runs", "right"), ("memory p50", "right"),
                          ("memory p95", "right"), ("duration p50 s", "right"), ("duration p95 s", "right")):
        tasks.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in summary["top_tasks"]:
        tasks.add_row(row["task"], f"{row['count']:,}", f"{row['runs']:,}", mem(row["memory_p50_bytes"]),
                      mem(row["memory_p95_bytes"]), secs(row["duration_p50_s"]), secs(row["duration_p95_s"]))
    console.print(tasks)


@app.command("push")
def push(
    runs_dir: Optional[Path] = RunsDir,
    url: Optional[str] = typer.Option(None, "--url", envvar="SCALABLE_TELEMETRY_URL",
                                      help="the operator's ingestion endpoint, http(s)://host:8081 ($SCALABLE_TELEMETRY_URL)"),
    workflow: Optional[str] = typer.Option(None, "--workflow", envvar="SCALABLE_TELEMETRY_WORKFLOW",
                                           help="NAMESPACE/NAME of the ScalableWorkflow the runs belong to"),
    token_file: Optional[Path] = typer.Option(
        None, "--token-file", help="file holding the token, e.g. from `kubectl create token` (default: "
        "$SCALABLE_TELEMETRY_TOKEN, $SCALABLE_TELEMETRY_TOKEN_FILE, else the pod's ServiceAccount token)"),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", envvar="SCALABLE_TELEMETRY_CA_FILE",
                                           help="CA bundle that signed the operator's certificate (https)"),
    allow_insecure_http: bool = typer.Option(False, "--allow-insecure-http",
                                             help="send the token over plain http to a host that is not loopback"),
    run: list[str] = typer.Option([], "--run", help="push only this run id (repeatable; default: every run)"),
    spool_dir: Optional[Path] = typer.Option(None, "--spool-dir",
                                             help="where batches wait until stored (default: $SCALABLE_TELEMETRY_SPOOL "
                                                  "or ~/.cache/scalable/spool)"),
    deadline: float = typer.Option(120.0, "--deadline", min=0, help="seconds to keep retrying while the operator is away"),
    max_attempts: int = typer.Option(8, "--max-attempts", min=1, help="failed attempts in a row before giving up"),
    as_json: bool = typer.Option(False, "--json", help="print the outcome as JSON"),
) -> None:
    """Push recorded runs to the operator (at least once: batches wait in a spool until stored).

    Exit 0: everything is stored (the operator deduplicates, so pushing again is harmless);
    1: the operator refused some batch (invalid records) or every request (token, RBAC, URL);
    3: the operator stayed away or busy past --deadline: the rest waits in the spool, run again.
    """
    from scalable.telemetry.backoff import Backoff
    from scalable.telemetry.batches import run_batches
    from scalable.telemetry.credentials import TokenSource
    from scalable.telemetry.push import IngestClient, InsecureTransport
    from scalable.telemetry.spool import Spool, default_spool_root
    from scalable.telemetry.store import RunStore

    if not url:
        raise fail("give --url (or set SCALABLE_TELEMETRY_URL): the operator's ingestion endpoint")
    if not workflow or workflow.count("/") != 1 or not all(workflow.split("/")):
        raise fail(f"--workflow {workflow or ''!r}: expected NAMESPACE/NAME of the ScalableWorkflow")
    namespace, name = workflow.split("/")
    root = _runs_dir(runs_dir)
    if not root.is_dir():
        raise fail(f"no such runs directory: {root}")
    if token_file is not None and not token_file.is_file():
        raise fail(f"--token-file {token_file}: no such file")
    if ca_file is not None and not ca_file.is_file():
        raise fail(f"--ca-file {ca_file}: no such file")
    try:
        client = IngestClient(url, namespace, name, token=TokenSource.resolve(token_file=token_file),
                              ca_file=str(ca_file) if ca_file else None, allow_insecure_http=allow_insecure_http)
    except (InsecureTransport, ValueError) as exc:
        raise fail(str(exc)) from None
    store = RunStore(root)
    ids = store.run_ids()
    missing = sorted(set(run) - set(ids))
    if missing:
        raise fail(f"no such run in {root}: {', '.join(missing)}")
    if run:
        ids = [i for i in ids if i in set(run)]
    spool = Spool(spool_dir if spool_dir is not None else default_spool_root(), url, namespace, name)
    skipped: dict[str, int] = {}
    unreadable: list[str] = []
    for run_id in ids:
        try:
            batches = run_batches(store.run_path(run_id))
        except ValueError as exc:
            unreadable.append(str(exc))
            continue
        for why, n in batches.skipped.items():
            skipped[why] = skipped.get(why, 0) + n
        spool.add(batches)
    pending = spool.pending()
    runs_pending = {p.name.rsplit(".", 3)[0] for p in pending}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    backoff = Backoff(deadline_s=deadline, max_attempts=max_attempts)
    with Progress(TextColumn("pushing {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                  TimeRemainingColumn(), console=err_console, transient=True,
                  disable=as_json or len(pending) < 2) as progress:
        task = progress.add_task(f"{len(runs_pending)} runs", total=len(pending))
        try:
            report = spool.drain(client, backoff, progress=lambda path, result: progress.advance(task))
        finally:
            client.close()
    outcome = {
        "runs": len(ids), "batches_sent": report.sent, "accepted": report.accepted, "duplicates": report.duplicates,
        "retries": report.retries, "failed": [{"batch": n, "reason": r} for n, r in report.failed],
        "remaining": report.remaining, "spool": str(spool.dir), "stopped": report.stopped,
        "skipped_lines": skipped, "unreadable_runs": unreadable, "seconds": round(report.seconds, 3),
    }
    if as_json:
        typer.echo(json.dumps(outcome, indent=1))
    else:
        err_console.print(
            f"{report.sent} batches of {len(runs_pending)} runs delivered to {url} ({workflow}) in {report.seconds:.1f} s: "
            f"{report.accepted} records new, {report.duplicates} there already"
            + (f"; {report.retries} retries" if report.retries else ""), highlight=False, soft_wrap=True)
        for why, n in sorted(skipped.items()):
            err_console.print(f"skipped {n} lines ({why})", highlight=False)
        for text in unreadable:
            err_console.print(f"[yellow]not a run:[/] {text}", highlight=False, soft_wrap=True)
        for batch, reason in report.failed:
            err_console.print(f"[bold red]refused:[/] {batch}: {reason} (kept in {spool.dir / 'failed'})",
                              highlight=False, soft_wrap=True)
    if report.busy:
        raise fail(f"another process is draining {spool.dir}; its batches go with it", code=3)
    if report.failed or report.refused:
        if report.stopped:
            err_console.print(f"[bold red]error:[/] {report.stopped}; {report.remaining} batches wait in {spool.dir}",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if report.remaining:
        raise fail(f"{report.stopped}; gave up after the backoff's bound: {report.remaining} batches wait in "
                   f"{spool.dir}; run the same command again", code=3)
