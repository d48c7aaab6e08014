"""``scalable evaluate``: how would the advisors have done on this history?

It replays the runs directory in submit order (each recommendation sees only what had finished
before the job was submitted), scores the later part, and prints under-provision rate and slack
for the LearnedAdvisor, the ResourceAdvisor and what the jobs requested, plus the slack of each
at equal under-provision rates, the only fair way to compare them. The trade-off curve goes to a
PNG. Everything heavy is imported inside the command so that ``scalable --help`` stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from scalable.cli.errors import fail
from scalable.cli.options import ModelType, OutputFormat, coverage_value, format_option, runs_dir_value


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f}%"


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item"):
        return _finite(obj.item())
    return obj


def run_evaluation(frame, *, model_type: str, coverage: float, score_fraction: float,
                   block_size: int, refit_every: int, progress=None):
    """Replay ``frame`` through both advisors and the percentile baselines; return result and
    summary. Kept apart from the command so tests and benchmarks can call it directly."""
    from scalable.advising.learned_advisor import LearnedAdvisor
    from scalable.advising.replay import AdvisorPredictor, PercentileBaseline, replay_many, summarize_memory
    from scalable.advising.resource_advisor import ResourceAdvisor

    learned = AdvisorPredictor("LearnedAdvisor", lambda: LearnedAdvisor(model_type=model_type, coverage=coverage))
    resource = AdvisorPredictor("ResourceAdvisor", lambda: ResourceAdvisor(coverage=coverage))
    result = replay_many(frame, [learned, resource, PercentileBaseline()], target="memory",
                         score_fraction=score_fraction, block_size=block_size,
                         refit_every=refit_every, progress=progress)
    summary = summarize_memory(result, ["LearnedAdvisor", "ResourceAdvisor"])
    summary["replay"] = {"jobs": result.n_jobs, "blocks": result.blocks, "refits": result.refits,
                         "seconds": result.seconds, "predictors": result.predictors}
    return result, summary


def _curves(result, summary: dict[str, Any]) -> dict[str, Any]:
    """The trade-off curve of each advisor the table reports, swept over margins derived from
    what the table needs (every margin it reports lies on its curve)."""
    from scalable.advising.replay import margin_sweep, tradeoff_curve

    truth = result.truth
    max_rate = max([0.2, *summary["rates"]])

    def curve(column: str, margins: list[float]):
        rec = result.scored[column]
        return tradeoff_curve(rec, truth, margins=margin_sweep(rec, truth, max_rate=max_rate, include=margins))

    curves = {name: curve(name, [e["margin"] for e in entry["at_rate"].values()])
              for name, entry in summary["advisors"].items()}
    best = (summary.get("best_percentile") or {}).get("0.02")
    if best and best.get("variant"):
        margins = [e["margin"] for e in summary["best_percentile"].values() if e.get("variant") == best["variant"]]
        curves[f"percentile ({best['variant']})"] = curve(best["variant"], margins)
    return curves


def _plot(result, summary: dict[str, Any], path: Path) -> Path:
    from scalable.advising.plots import plot_tradeoff
    from scalable.advising.replay import requested_baseline

    curves = _curves(result, summary)
    points = {name: (e["as_is"]["under_provision_rate"], e["as_is"]["slack"])
              for name, e in summary["advisors"].items()}
    requested = requested_baseline(result)
    if requested is not None:
        req = summary["requested"]
        points["requested"] = (req["under_provision_rate"], req["slack"])
    return plot_tradeoff(curves, path, points=points, rates=summary["rates"])


def _print_table(summary: dict[str, Any], runs_dir: Path, coverage: float) -> None:
    from rich.console import Console
    from rich.table import Table

    rates = [f"{r:g}" for r in summary["rates"]]
    table = Table(title=f"Memory advice replayed in time order ({summary['n_scored']} jobs scored, "
                        f"coverage {coverage:g})")
    table.add_column("advisor", no_wrap=True)
    table.add_column("under", justify="right")
    table.add_column("slack", justify="right")
    for r in rates:
        table.add_column(f"slack@{100 * float(r):g}%", justify="right")
    table.add_column("dur. MAE", justify="right")
    for name, entry in summary["advisors"].items():
        dur = entry.get("duration", {}).get("mae_s")
        table.add_row(
            name,
            _pct(entry["as_is"]["under_provision_rate"]),
            _pct(entry["as_is"]["slack"]),
            *[_pct(entry["at_rate"][r]["slack"]) for r in rates],
            "n/a" if dur is None or not math.isfinite(dur) else f"{dur:,.0f}s",
        )
    best = summary.get("best_percentile")
    if best:
        table.add_row("best percentile*", "-", "-", *[_pct(best[r]["slack"]) for r in rates], "")
    req = summary.get("requested")
    if req is None:
        table.add_row("requested", "n/a", "n/a", *["" for _ in rates], "")
    else:
        table.add_row("requested", _pct(req["under_provision_rate"]), _pct(req["slack"]),
                      *["" for _ in rates], "")
    console = Console()
    console.print(table)
    notes = [f"runs: {runs_dir}",
             "under: share of jobs whose recommendation < used (they would be OOM-killed); slack: share "
             "of recommended memory left idle by the jobs that fit; slack@x: each advisor scaled by the "
             "margin that gives exactly x under-provisioning (the fair comparison)."]
    if best:
        notes.append("* best of several per-task percentile rules, tuned the same way: "
                     + ", ".join(f"{100 * float(r):g}%: {best[r]['variant']}" for r in rates))
    if req is None:
        notes.append("requested: the history records no requested memory")
    for note in notes:
        console.print(note, style="dim", highlight=False)


def evaluate(
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="telemetry runs directory "
                                            "(default $SCALABLE_RUNS_DIR or ./.scalable/runs)"),
    model_type: ModelType = typer.Option(ModelType.gradient_boosting, "--model-type", help="LearnedAdvisor model"),
    coverage: float = typer.Option(0.95, "--coverage", help="memory coverage target of both advisors"),
    plot: Path = typer.Option(Path("scalable-evaluate.png"), "--plot", help="where to write the trade-off PNG"),
    output_format: OutputFormat = format_option(),
    score_fraction: float = typer.Option(0.5, "--score-fraction", help="later fraction of jobs that is scored"),
    block_size: int = typer.Option(200, "--block-size", help="jobs answered per knowledge cutoff"),
    refit_every: int = typer.Option(5000, "--refit-every", help="scored jobs between refits"),
) -> None:
    """Replay history in time order and score the advisors' memory advice."""
    model_type = model_type.value
    coverage = coverage_value(coverage)
    if not 0 < score_fraction < 1:
        raise fail(f"--score-fraction must be between 0 and 1 (exclusive), not {score_fraction:g}")
    if block_size < 1 or refit_every < 1:
        raise fail("--block-size and --refit-every must be at least 1")

    from scalable.telemetry.loader import load_tasks

    runs_dir = runs_dir_value(runs_dir)
    frame = load_tasks(runs_dir).frame
    if frame.empty or "peak_memory_bytes" not in frame.columns or frame["peak_memory_bytes"].notna().sum() < 4:
        raise fail(f"{runs_dir} holds too few task records with observed peak memory to evaluate "
                   f"({0 if frame.empty else int(frame['peak_memory_bytes'].notna().sum())}; need at least 4)")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=Console(stderr=True), transient=True) as bar:
        task_id = bar.add_task("", total=None)

        def progress(done: int, total: int, message: str) -> None:
            bar.update(task_id, completed=done, total=total, description=message)

        # Inputs were checked above; an exception from here on is a failure of the system, not
        # a user mistake, and must not be disguised as one (it exits 1 with its traceback).
        result, summary = run_evaluation(frame, model_type=model_type, coverage=coverage,
                                         score_fraction=score_fraction, block_size=block_size,
                                         refit_every=refit_every, progress=progress)
    if summary["n_scored"] == 0:
        raise fail(f"{runs_dir} is too short a history to evaluate: none of its {len(frame)} jobs was submitted "
                   "after an earlier job had finished (a replay answers each job only from jobs that ended "
                   "before it was submitted, and one session submits its tasks at once); record more runs "
                   "and evaluate again")
    plot_path = _plot(result, summary, plot)
    summary["plot"] = str(plot_path)
    summary["coverage"] = coverage
    summary["model_type"] = model_type
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(_finite(summary), indent=2))
    else:
        _print_table(summary, runs_dir, coverage)
        typer.echo(f"trade-off plot: {plot_path}")


def register(app: typer.Typer) -> None:
    """Add ``scalable evaluate`` to the root CLI."""
    app.command("evaluate")(evaluate)
