"""Options that several commands share, declared once so they read and fail the same way.

``--format`` is a choice of ``text`` or ``json`` and ``--model-type`` a choice of the real model
types (typer lists them in ``--help`` and in shell completion, and refuses anything else with
click's one message). Coverage and the runs directory are checked by
:mod:`scalable.advising.arguments`, as the Python API checks them, and reported as a usage error.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Optional

import typer

from scalable.cli.errors import fail

__all__ = ["AdvisorKind", "OutputFormat", "ModelType", "format_option", "coverage_value", "runs_dir_value"]


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"


class AdvisorKind(str, enum.Enum):
    """Which advisor ``scalable advise`` asks: the LearnedAdvisor (falling back to percentiles
    where it has too little history) or the ResourceAdvisor's percentiles alone."""

    learned = "learned"
    percentile = "percentile"


class ModelType(str, enum.Enum):
    """The LearnedAdvisor's model types (scalable.advising.learned_advisor.MODEL_TYPES; a unit
    test keeps the two equal, so ``--help`` need not import scikit-learn)."""

    gradient_boosting = "gradient_boosting"
    random_forest = "random_forest"
    quantile_regression = "quantile_regression"


def format_option() -> Any:
    return typer.Option(OutputFormat.text, "--format", "-f", case_sensitive=False, help="output format")


def coverage_value(value: float) -> float:
    """``--coverage`` checked as the advisors check it: a usage error outside (0, 1)."""
    from scalable.advising.arguments import check_coverage

    try:
        return check_coverage(value, "--coverage")
    except ValueError as exc:
        raise fail(str(exc)) from None


def runs_dir_value(value: Optional[Path]) -> Path:
    """``--runs-dir`` (or its default), which must exist: the same message as ``from_history``."""
    from scalable.advising.arguments import existing_runs_dir

    try:
        return existing_runs_dir(value)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
