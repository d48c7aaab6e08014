"""How much a task's memory grows with its input, learned from every task at once.

A task with one to four finished runs has no line of its own (:mod:`scalable.advising.trend`
needs three distinct inputs), and the first runs to finish are the short ones, usually on the
smallest inputs: a median of them, however widened, is too small for the large inputs still
running. Across a workflow's tasks the law is often shared (peak memory roughly proportional to
the bytes read, or to some power of them), so it can be learned where there is history and
lent to a task that has little:

    log peak = task's own level + exponent x log input

fitted once over all tasks, each task's runs centred on their own means (a within-task, or
fixed-effects, regression: tasks that differ in level do not fake a slope). Per numeric input
the exponent is the pooled least-squares slope, clipped to [0, ``MAX_SLOPE``] as the per-task
lines are; the input kept is the one that explains the most of the within-task variance, and
none when no input explains any. The short-history answer is then the median of the task's
runs times ``(x / x_ref) ** exponent``, ``x_ref`` the median input of those runs, and the
margin on it is calibrated on held-out short-history runs scaled the same way
(:mod:`scalable.advising.fallback_calibration`), so the promise is measured, not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scalable.advising.trend import MAX_SLOPE, positive_number

__all__ = ["Elasticity", "MIN_RUNS", "pooled_elasticity"]

#: runs (in tasks with at least two distinct inputs) a pooled exponent needs
MIN_RUNS = 10


@dataclass(frozen=True)
class Elasticity:
    """The pooled exponent of peak memory on one input (``feature`` None: no input helps) and
    each task's median log input, the reference its short-history median stands for."""

    feature: str | None = None
    exponent: float = 0.0
    n_tasks: int = 0
    n_runs: int = 0
    references: Mapping[str, float] = field(default_factory=dict)

    def log_factor(self, task: str, features: Mapping[str, Any]) -> float:
        """``exponent x log(x / x_ref)`` for a request of ``task`` (0 when either is unknown)."""
        if self.feature is None or self.exponent <= 0:
            return 0.0
        x = positive_number(features.get(self.feature))
        ref = self.references.get(task)
        if x is None or ref is None:
            return 0.0
        return self.exponent * (math.log(x) - ref)

    def to_state(self) -> dict[str, Any]:
        return {"feature": self.feature, "exponent": self.exponent, "n_tasks": self.n_tasks, "n_runs": self.n_runs,
                "reference_tasks": list(self.references), "references": np.array(list(self.references.values()), dtype=float)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Elasticity":
        references = dict(zip((str(t) for t in state["reference_tasks"]), np.asarray(state["references"], dtype=float).tolist()))
        return cls(state["feature"], float(state["exponent"]), int(state["n_tasks"]), int(state["n_runs"]), references)


def _log_inputs(inputs: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for name in inputs.columns:
        values = pd.to_numeric(inputs[name], errors="coerce").to_numpy(dtype=float, copy=True)
        values[~(values > 0)] = np.nan
        if np.isfinite(values).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                out[str(name)] = np.log(values)
    return out


def pooled_elasticity(tasks: Sequence[str], inputs: pd.DataFrame, log_memory: np.ndarray) -> Elasticity:
    """Fit the within-task exponent; ``inputs`` has one column per input feature (row-aligned
    with ``tasks``), ``log_memory`` the runs' log peaks (NaN: not a usable observation)."""
    codes, names = pd.factorize(pd.Series(np.asarray(tasks, dtype=object)).astype(str), sort=False)
    y = np.asarray(log_memory, dtype=float)
    best: tuple[float, str, float, int, int] | None = None
    logs = _log_inputs(inputs)
    for name in sorted(logs):
        u = logs[name]
        ok = np.isfinite(u) & np.isfinite(y)
        if not ok.any():
            continue
        frame = pd.DataFrame({"task": codes[ok], "u": u[ok], "y": y[ok]})
        grouped = frame.groupby("task")
        du = frame["u"] - grouped["u"].transform("mean")
        dy = frame["y"] - grouped["y"].transform("mean")
        spread = du.abs().groupby(frame["task"]).transform("max")
        varying = (spread > 1e-12).to_numpy()
        n_runs = int(varying.sum())
        if n_runs < MIN_RUNS:
            continue
        suu = float((du[varying] ** 2).sum())
        suy = float((du[varying] * dy[varying]).sum())
        exponent = min(max(suy / suu, 0.0), MAX_SLOPE) if suu > 0 else 0.0
        explained = exponent * suy
        if exponent > 0 and (best is None or explained > best[0]):
            best = (explained, name, exponent, int(frame.loc[varying, "task"].nunique()), n_runs)
    if best is None:
        return Elasticity()
    _, name, exponent, n_tasks, n_runs = best
    u = logs[name]
    known = np.isfinite(u)
    # numpy's "higher" median, the one the held-out answers were scaled from
    medians = pd.Series(u[known]).groupby(codes[known]).quantile(0.5, interpolation="higher")
    references = {str(names[int(code)]): float(value) for code, value in medians.items()}
    return Elasticity(name, float(exponent), n_tasks, n_runs, references)
