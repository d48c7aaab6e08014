"""``scalable evaluate`` on any runs directory, and a plot that shows every curve it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from scalable.advising.replay import (
    ReplayResult,
    margin_for_rate,
    margin_sweep,
    summarize_memory,
    tradeoff_curve,
)
from scalable.cli.evaluate import _curves, run_evaluation
from scalable.cli.main import app
from scalable.telemetry.loader import load_tasks
from scalable.telemetry.schema import TaskObservation
from scalable.telemetry.store import RunStore


def _session(root, runs=1, tasks=30):
    """What one ScalableSession records: all tasks submitted at once, finishing one by one."""
    store = RunStore(root)
    t = 1_700_000_000.0
    for r in range(runs):
        with store.open_run(workflow="demo", run_id=f"run-{r:02d}") as run:
            for i in range(tasks):
                run.append(TaskObservation(
                    run_id=f"run-{r:02d}", task="square", tag="demeter", input_features={"i": i},
                    submitted_at=t + i * 0.01, started_at=t + 1 + i, finished_at=t + 2 + i, duration_s=1.0,
                    cpu_seconds=1.0, peak_memory_bytes=100_000_000 + 1_000 * i))
        t += 1_000.0
    return root


def test_a_single_session_is_a_clear_message_not_a_traceback(tmp_path):
    runs = _session(tmp_path / "runs")
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(runs), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2, result.output  # before: KeyError 'LearnedAdvisor' from summarize_memory
    assert isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert "too short a history to evaluate" in text and "30 jobs" in text
    assert "Traceback" not in result.output


def test_two_sessions_are_evaluated(tmp_path):
    runs = _session(tmp_path / "runs", runs=2)
    plot = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["evaluate", "--runs-dir", str(runs), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_summarize_memory_of_a_replay_without_answers():
    empty = ReplayResult(target="memory", scored=pd.DataFrame({"used": pd.Series([], dtype=float)}))
    summary = summarize_memory(empty, ["LearnedAdvisor", "ResourceAdvisor"])
    assert summary["n_scored"] == 0
    assert set(summary["advisors"]) == {"LearnedAdvisor", "ResourceAdvisor"}


def test_the_sweep_reaches_the_margins_of_an_advisor_that_over_asks_tenfold():
    """The Sandia-Ross case: the table needs margin ~0.085; a sweep from 0.25 never left rate 0."""
    rng = np.random.default_rng(1)
    used = rng.uniform(1, 2, 2_000)
    recommended = used * rng.uniform(8, 12, used.size)
    needed = {r: margin_for_rate(recommended, used, r) for r in (0.01, 0.02, 0.05)}
    assert max(needed.values()) < 0.25
    curve = tradeoff_curve(recommended, used)
    assert curve["margin"].min() <= min(needed.values())
    assert curve["under_provision_rate"].max() >= 0.2   # the whole plotted range is drawn
    assert curve["under_provision_rate"].min() == 0.0
    # an advisor that under-asks needs margins above 1: covered the same way
    short = tradeoff_curve(used / 3, used)
    assert short["margin"].max() >= margin_for_rate(used / 3, used, 0.0)


def test_margin_sweep_contains_the_margins_it_is_given_exactly():
    used = np.linspace(1, 2, 100)
    sweep = margin_sweep(used * 2, used, include=[0.0851, 3.3])
    assert 0.0851 in sweep and 3.3 in sweep and 1.0 > sweep.min()
    assert np.all(np.diff(sweep) > 0)


def test_every_margin_the_table_reports_is_on_its_plotted_curve(tmp_path):
    runs = _session(tmp_path / "runs", runs=3)
    result, summary = run_evaluation(load_tasks(runs).frame, model_type="gradient_boosting", coverage=0.95,
                                     score_fraction=0.5, block_size=10, refit_every=40)
    curves = _curves(result, summary)
    for name, entry in summary["advisors"].items():
        margins = curves[name]["margin"].to_numpy()
        for at_rate in entry["at_rate"].values():
            if np.isfinite(at_rate["margin"]):
                assert np.isclose(margins, at_rate["margin"]).any(), (name, at_rate)
