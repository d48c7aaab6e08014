"""``scalable init`` and ``scalable session``: write and check scalable.yaml, try the scaler.

``init`` writes a commented scalable.yaml that works as it is (one worker group tagged
``demeter`` on the local target). ``session check`` validates one and prints what a session
would start. ``session decide`` asks the AdaptiveScaler about a queue state given on the
command line, so a user can see how thresholds and bounds play out before a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from scalable.cli.errors import fail
from scalable.cli.options import OutputFormat, format_option, runs_dir_value
from scalable.scaling.config import DEFAULTS

session_app = typer.Typer(help="Check scalable.yaml and try the scaler.", no_args_is_help=True)


def init(
    path: Path = typer.Argument(Path("scalable.yaml"), help="where to write the file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a working, commented scalable.yaml with a worker group tagged 'demeter'."""
    from scalable.session.manifest import INIT_TEMPLATE

    if path.exists() and not force:
        raise fail(f"{path} exists; pass --force to overwrite it")
    if path.parent and not path.parent.exists():
        raise fail(f"directory {path.parent} does not exist")
    path.write_text(INIT_TEMPLATE)
    typer.echo(f"wrote {path}: ScalableSession.from_yaml({str(path)!r}).start(), then submit(..., tag='demeter')")


@session_app.command("check")
def check(path: Path = typer.Argument(Path("scalable.yaml"), help="the manifest to validate")) -> None:
    """Validate scalable.yaml and print its worker groups and scaling settings."""
    from scalable.session.manifest import ManifestError, load_manifest
    from scalable.units import format_cpu, format_memory

    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{path}: workflow {manifest.workflow!r}, target {manifest.target}")
    for group in manifest.worker_groups:
        typer.echo(
            f"  group {group.tag}: {group.workers.min}..{group.workers.max} workers x {group.threads} threads, "
            f"{format_cpu(group.cpus)} cpu, {format_memory(group.memory)}"
        )
    s = manifest.scaling
    typer.echo(
        f"  scaling {s.mode}: up above {s.scale_up_threshold}, down below {s.scale_down_threshold}, "
        f"cooldown {s.cooldown_seconds:g}s, poll {s.poll_interval_seconds:g}s"
    )


@session_app.command("decide")
def decide(
    queued: int = typer.Option(..., min=0, help="tasks waiting"),
    processing: int = typer.Option(0, min=0, help="tasks running"),
    workers: int = typer.Option(..., min=0, help="workers now"),
    threads: int = typer.Option(1, min=1, help="threads per worker"),
    min_workers: int = typer.Option(DEFAULTS.min_workers, min=0),
    max_workers: int = typer.Option(DEFAULTS.max_workers, min=1),
    scale_up_threshold: float = typer.Option(DEFAULTS.scale_up_threshold),
    scale_down_threshold: float = typer.Option(DEFAULTS.scale_down_threshold),
    task: Optional[str] = typer.Option(None, help="task name, for a predictive decision"),
    runs_dir: Optional[Path] = typer.Option(None, help="train a LearnedAdvisor on these runs"),
    output: OutputFormat = format_option(),
    as_json: bool = typer.Option(False, "--json", hidden=True, help="deprecated: use --format json"),
) -> None:
    """One decision of the AdaptiveScaler for one worker group."""
    from scalable.scaling.scaler import AdaptiveScaler

    if as_json:
        output = OutputFormat.json
    advisor = None
    if runs_dir is not None:
        from scalable.advising.learned_advisor import LearnedAdvisor

        advisor = LearnedAdvisor.from_history(runs_dir_value(runs_dir))
    try:
        scaler = AdaptiveScaler(
            advisor=advisor,
            min_workers=min_workers,
            max_workers=max_workers,
            scale_up_threshold=scale_up_threshold,
            scale_down_threshold=scale_down_threshold,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    snapshot = {"queued": queued, "processing": processing, "workers": workers, "threads_per_worker": threads, "task": task}
    decision = scaler.evaluate({"group": snapshot}).tags["group"]
    if output is OutputFormat.json:
        typer.echo(json.dumps(decision.to_record("cli", 0.0).model_dump(exclude={"run_id", "time", "schema_version"})))
    else:
        typer.echo(f"{decision.action} {decision.from_workers} -> {decision.to_workers} ({decision.mode}): {decision.reason}")


def register(app: typer.Typer) -> None:
    """Add ``scalable init`` and ``scalable session`` to the root CLI."""
    app.command("init")(init)
    app.add_typer(session_app, name="session")
