"""``scalable advise`` and ``scalable train``: recommendations and models from the command line.

``advise`` answers for one task, from a stored model (``--model-dir``) or by training on the
runs directory on the spot; ``train`` trains a model and stores a new version of it. Heavy
imports happen inside the commands so ``scalable --help`` stays fast. User mistakes (a bad
``--input``, an unknown model type, a missing runs directory) end with one line and exit 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from scalable.cli.errors import fail
from scalable.cli.options import AdvisorKind, ModelType, OutputFormat, coverage_value, format_option, runs_dir_value


def parse_input(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values that read as numbers become numbers, the rest stay text."""
    features: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise fail(f"--input expects key=value, got {item!r}")
        features[key] = _number_or_text(value.strip())
    return features


def _number_or_text(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value




def _runs_dir(runs_dir: Optional[Path]) -> Path:
    from scalable.telemetry.store import default_runs_dir

    return runs_dir if runs_dir is not None else default_runs_dir()


def _load_frame(runs_dir: Path):
    import warnings

    from scalable.telemetry.loader import load_tasks

    runs_dir = runs_dir_value(runs_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_tasks(runs_dir)
    return table.frame


def register(app: typer.Typer) -> None:
    """Add ``advise`` and ``train`` to the root command."""

    @app.command()
    def advise(
        task: str = typer.Option(..., "--task", "-t", help="task name, e.g. run_simulation"),
        input: list[str] = typer.Option([], "--input", "-i", help="an input feature as key=value (repeatable)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="telemetry runs (default ./.scalable/runs)"),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="use a stored model instead of training"),
        model_type: ModelType = typer.Option(ModelType.gradient_boosting, "--model-type", help="LearnedAdvisor model"),
        coverage: float = typer.Option(0.95, "--coverage", help="share of future runs the memory must fit"),
        advisor: AdvisorKind = typer.Option(AdvisorKind.learned, "--advisor", case_sensitive=False,
                                            help="the learned model (percentiles where history is short) or percentiles alone"),
        output: OutputFormat = format_option(),
        failed_memory: Optional[str] = typer.Option(
            None, "--failed-memory", help="the last attempt was OOM-killed at this memory (e.g. 4Gi): size the retry"),
    ) -> None:
        """Recommend cpus and memory for the next run of a task."""
        coverage = coverage_value(coverage)
        if failed_memory is not None:
            from scalable.units import QuantityError, parse_memory

            try:
                parse_memory(failed_memory)
            except QuantityError as exc:
                raise fail(f"--failed-memory: {exc}") from None
        features = parse_input(input)
        rec = _recommend(task, features, _runs_dir(runs_dir), runs_dir is not None, model_dir, model_type.value,
                         coverage, advisor.value, failed_memory)
        if output is OutputFormat.json:
            typer.echo(json.dumps(rec.as_dict(), indent=2, sort_keys=True))
            return
        _print_recommendation(rec, features)

    @app.command()
    def train(
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="telemetry runs (default ./.scalable/runs)"),
        model_dir: Path = typer.Option(..., "--model-dir", help="model store root; a new version is added"),
        model_type: ModelType = typer.Option(ModelType.gradient_boosting, "--model-type", help="LearnedAdvisor model"),
        coverage: float = typer.Option(0.95, "--coverage", help="share of future runs the memory must fit"),
        name: str = typer.Option("default", "--name", help="model name in the store"),
        output: OutputFormat = format_option(),
    ) -> None:
        """Train a LearnedAdvisor on the runs directory and store it as a new version."""
        coverage = coverage_value(coverage)
        model_type = model_type.value
        from rich.console import Console

        from scalable.advising.learned_advisor import LearnedAdvisor
        from scalable.advising.model_store import ModelStoreError

        console = Console(stderr=True)
        root = _runs_dir(runs_dir)
        with console.status(f"loading telemetry from {root}") as status:
            frame = _load_frame(root)
            if len(frame) == 0:
                raise fail(f"no task observations under {root}: nothing to train on")
            status.update(f"training {model_type} on {len(frame):,} task observations")
            advisor = LearnedAdvisor(model_type=model_type, coverage=coverage)
            advisor.fit(frame, progress=lambda stage: status.update(f"training {model_type}: {stage}"))
            status.update("saving")
            try:
                version_dir = advisor.save(model_dir, name=name)
            except (ModelStoreError, OSError) as exc:
                raise fail(f"cannot store the model in {model_dir}: {exc}", code=1)
        summary = {"version": version_dir.name, "path": str(version_dir), **advisor.metadata()}
        if output is OutputFormat.json:
            typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
            return
        _print_training(summary, advisor.ready)


def _recommend(task, features, runs_dir, runs_dir_given, model_dir, model_type, coverage, advisor, failed_memory=None):
    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.advising.resource_advisor import ResourceAdvisor

    if model_dir is not None:
        if not model_dir.exists():
            raise fail(f"no model store at {model_dir} (train one with: scalable train --model-dir {model_dir})")
        frame = _load_frame(runs_dir) if (runs_dir_given or runs_dir.is_dir()) else None
        loaded = LearnedAdvisor.load(model_dir, on_error="fallback", history=frame)
        reason = getattr(loaded, "unavailable_reason_", None)
        if reason:
            from scalable.cli.errors import err_console

            err_console.print(f"[yellow]warning:[/] {reason}; answering from the ResourceAdvisor", highlight=False)
        elif frame is not None:
            loaded.update(frame)
        return loaded.recommend(task, input_features=features, coverage=coverage, failed_memory=failed_memory)
    frame = _load_frame(runs_dir)
    if advisor == "percentile":
        return ResourceAdvisor(coverage=coverage).fit(frame).recommend(task, coverage=coverage, failed_memory=failed_memory)
    if len(frame) == 0:
        return LearnedAdvisor._unavailable("no task observations recorded", frame, None).recommend(task, coverage=coverage)
    return _current_advisor(frame, runs_dir, model_type, coverage).recommend(
        task, input_features=features, coverage=coverage, failed_memory=failed_memory)


def _current_advisor(frame, runs_dir: Path, model_type: str, coverage: float):
    """The advisor trained on exactly this telemetry: the one cached beside the runs directory
    (``<runs>/../models``) when its training digest matches, else trained now and cached.

    The cache is this user's own directory, and the store refuses what it did not write
    (:mod:`scalable.advising.model_store`); a cache that cannot be read or written only costs
    a retrain."""
    import shutil

    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.advising.model_store import ModelStore, ModelStoreError, frame_digest

    store = ModelStore(runs_dir.parent / "models")
    name = f"advise-{model_type}-{coverage:g}"
    digest = frame_digest(frame[["task", "end_time", "peak_memory_bytes", "duration_s"]])
    try:
        if store.latest(name) is not None and store.metadata(name).get("training_data_digest") == digest:
            return LearnedAdvisor.load(store.root, name)
    except (ModelStoreError, OSError):
        pass
    advisor = LearnedAdvisor(model_type=model_type, coverage=coverage).fit(frame)
    try:
        saved = advisor.save(store.root, name=name, training_digest=digest)
        for version in store.versions(name):
            if f"v{version}" != saved.name:
                shutil.rmtree(store.path(name, version), ignore_errors=True)
    except (ModelStoreError, OSError):
        pass
    return advisor


def _print_recommendation(rec: Any, features: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from scalable.units import format_memory

    table = Table(title=f"Recommendation for {rec.task}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("cpus", str(rec.cpus))
    table.add_row("memory", rec.memory)
    if rec.interval is not None:
        table.add_row("memory interval", f"{format_memory(rec.interval[0])} .. {format_memory(rec.interval[1])}")
    table.add_row("confidence", f"{rec.confidence:.2f}")
    table.add_row("method", rec.method)
    if rec.coverage is not None:
        table.add_row("coverage", f"{rec.coverage:g}")
    if rec.predicted_duration_s is not None:
        table.add_row("predicted duration", f"{rec.predicted_duration_s:.1f}s")
    if rec.model_version:
        table.add_row("model version", rec.model_version)
    if features:
        table.add_row("inputs", ", ".join(f"{k}={v}" for k, v in features.items()))
    table.add_row("basis", rec.basis)
    Console().print(table)


def _print_training(summary: dict[str, Any], ready: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    training = summary.get("training", {})
    console.print(
        f"[bold green]stored[/] {summary['version']} at {summary['path']} "
        f"({training.get('n_records', 0):,} records, {training.get('n_tasks', 0):,} tasks, "
        f"{training.get('seconds', 0):.1f}s{', subsampled' if training.get('subsampled') else ''})",
        highlight=False,
    )
    if not ready:
        console.print("[yellow]too little held-out history to calibrate: recommendations will come from the "
                      "ResourceAdvisor until more runs are recorded[/]")
    table = Table(title="Measured on held-out (latest) runs", title_justify="left")
    for column in ("target", "measure", "value"):
        table.add_column(column)
    for target, quality in (summary.get("quality") or {}).items():
        for measure, value in quality.items():
            if isinstance(value, float):
                text = f"{value:.4g}" if "mae" in measure else f"{value:.3f}"
            else:
                text = str(value)
            table.add_row(target, measure, text)
    console.print(table)
