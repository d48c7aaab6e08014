"""The checks every entry point applies to the same arguments, written once.

The constructors, ``recommend()`` and the CLI used to disagree: coverage was (0, 1) in one
place, (0, 1] in another, and a runs directory that did not exist was an error in the CLI but
an empty history for ``from_history``. Coverage is the open interval (0, 1): 1 would promise
that every future run fits, which no finite history can back. A missing runs directory is an
error everywhere, with one wording (the CLI prints the same message).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["check_coverage", "existing_runs_dir"]


def check_coverage(value: Any, name: str = "coverage") -> float:
    """``value`` as a float in the open interval (0, 1), else ``ValueError``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 < number < 1.0:
        raise ValueError(f"{name} must be between 0 and 1, exclusive (e.g. 0.95), not {value!r}")
    return number


def existing_runs_dir(runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """The runs directory (default ``$SCALABLE_RUNS_DIR`` or ``./.scalable/runs``), which must exist."""
    from scalable.telemetry.store import default_runs_dir

    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"no runs directory at {root} (record runs with a ScalableSession, or import history: "
            "scalable telemetry import FILE --format swf|sacct|nextflow --runs-dir DIR)")
    return root
