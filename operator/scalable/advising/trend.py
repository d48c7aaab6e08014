"""InputTrend: how a task's peak memory grows with an input size, learned from a handful of runs.

Trees answer within the inputs they saw: for an input twice the largest seen they repeat the
largest peak, and the first run on a bigger input is the one the kernel kills. Memory usually
follows its input: a fixed base plus a cost per unit (linear), or a power of the size
(sorting buffers, matrices). Per task, both laws are fitted on each numeric input, the linear
one in bytes and the power one as a straight line in log-log space, and the law and input
whose line predicts the task's own runs best left-one-out is kept, only when it beats the
task's mean. Slopes are kept non-negative (a larger input never gets less memory) and a
power's exponent at most ``MAX_SLOPE``.

Two uses, both in :class:`~scalable.advising.learned_advisor.LearnedAdvisor`:

* **beyond the seen range** the model's centre is continued along the line:
  :meth:`InputTrend.extrapolation` is how much the line rises (in log space) from the largest
  input the task ran with to ``x``, 0 inside;
* **as the task's model** (too few runs to train and calibrate the trees, or the line chosen
  over them for this task, see :mod:`scalable.advising.model_choice`) the line answers, with
  an upper bound from left-one-out errors (:meth:`InputTrend.upper`, jackknife+ style: each
  error from a fit that did not see the run). A task with enough errors of its own to promise
  the coverage (19 at 95%) gets the conformal quantile of those (Mondrian: a steady task is
  not charged for an erratic one); below that the residuals of every task, studentised by
  their task's spread, give a pooled conformal quantile once there are enough of them, and
  below that Student's t prediction interval of the regression, which assumes log-normal
  errors and says so in its ``method``. A task's spread is shrunk towards the spread of all
  tasks, so five runs that happen to agree do not promise a razor-thin interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalable.advising.calibration import conditional_quantile, conformal_quantile
from scalable.advising.wastage import retry_wastage

__all__ = ["InputTrend", "TaskTrend", "MAX_SLOPE", "positive_number"]

#: exponents above this are taken as noise on few runs, not as a law of the task
MAX_SLOPE = 2.0
#: distinct input values a line needs
MIN_DISTINCT = 3
#: the smallest spread (natural log) a task is credited with: peaks are measured by sampling
MIN_SIGMA = 0.03
#: pseudo-observations of the pooled spread in a task's own
SIGMA_PRIOR_WEIGHT = 2.0
#: a task's line is fitted on its latest runs: enough to see a trend, cheap on a million records
RECENT_RUNS = 200


@dataclass(frozen=True)
class TaskTrend:
    """One task's line (``feature`` None: its mean) and what its interval needs."""

    feature: str | None
    intercept: float
    slope: float
    n: int
    sigma: float
    mean_u: float = 0.0
    suu: float = 0.0
    x_max: float = 0.0
    #: "power": log peak = intercept + slope log x; "linear": peak = intercept + slope x
    form: str = "power"
    #: how the task's own errors widen it: "log" (a factor on the centre) or "bytes" (an amount added)
    margin: str = "log"

    def _u(self, x: float) -> float:
        return math.log(x) if self.form == "power" else x

    def centre(self, x: float | None) -> float:
        """Log peak memory the line gives for input ``x`` (its mean input when unknown)."""
        u = self.mean_u if self.feature is None or x is None else self._u(x)
        value = self.intercept + self.slope * u
        return value if self.form == "power" else math.log(max(value, 1.0))

    def leverage(self, x: float | None) -> float:
        if self.feature is None or x is None or self.suu <= 0:
            return 1.0 / self.n
        return 1.0 / self.n + (self._u(x) - self.mean_u) ** 2 / self.suu

    @property
    def exponent(self) -> str:
        """The law in words for a basis: ``size^0.82`` or ``size (linear)``."""
        return f"{self.feature}^{self.slope:.2f}" if self.form == "power" else f"{self.feature} (linear, {self.slope:.3g} bytes per unit)"

    @property
    def degrees_of_freedom(self) -> int:
        return self.n - (2 if self.feature is not None else 1)


def positive_number(value: Any) -> float | None:
    """``value`` as a finite positive number, else None (booleans and text are not sizes)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _line(u: np.ndarray, v: np.ndarray, max_slope: float) -> tuple[float, float, np.ndarray, np.ndarray, float, float]:
    """Least squares ``v = a + b u`` with ``b`` clipped to [0, max_slope]: intercept, slope, the
    fitted values, the left-one-out predictions, mean and Suu of ``u``."""
    n = len(v)
    mean_u = float(u.mean())
    suu = float(((u - mean_u) ** 2).sum())
    slope = float(((u - mean_u) * (v - v.mean())).sum() / suu) if suu > 0 else 0.0
    slope = min(max(slope, 0.0), max_slope)
    intercept = float((v - slope * u).mean())
    fitted = intercept + slope * u
    leverage = 1.0 / n + ((u - mean_u) ** 2 / suu if suu > 0 else 0.0)
    loo = v - (v - fitted) / np.maximum(1.0 - leverage, 1e-6)
    return intercept, slope, fitted, loo, mean_u, suu


def _candidates(x: np.ndarray, y: np.ndarray) -> list[tuple[str, float, float, np.ndarray, float, float]]:
    """Both laws for one input: (form, intercept, slope, left-one-out log errors, mean and Suu of
    the form's input). Linear is fitted in bytes (a fixed base plus a cost per unit is the
    commonest memory law, and its log-log line bends: a power fitted to it falls short beyond
    the sizes seen); its errors are measured in log space like the power law's."""
    out = []
    intercept, slope, _, loo, mean_u, suu = _line(np.log(x), y, MAX_SLOPE)
    out.append(("power", intercept, slope, y - loo, mean_u, suu))
    peak = np.exp(y)
    intercept, slope, _, loo, mean_u, suu = _line(x, peak, math.inf)
    out.append(("linear", intercept, slope, y - np.log(np.maximum(loo, 1.0)), mean_u, suu))
    return out


def _mean(y: np.ndarray) -> tuple[float, np.ndarray]:
    n = len(y)
    residual = y - y.mean()
    return float(y.mean()), residual * n / max(n - 1, 1)


class InputTrend:
    """Per task lines of peak memory on an input size; see the module docstring.

    ``min_runs`` is the fewest runs of a task it fits anything for; ``coverage`` the level at
    which a task's two margin forms are compared (:meth:`_margin_form`).
    """

    def __init__(self, min_runs: int = 3, coverage: float = 0.95) -> None:
        self.min_runs = min_runs
        self.coverage = coverage

    def fit(self, tasks: Sequence[str], inputs: pd.DataFrame, log_memory: np.ndarray,
            runtimes_s: np.ndarray | None = None) -> "InputTrend":
        """``inputs`` has one column per input feature (row-aligned with ``tasks``), ``log_memory``
        the runs' log peaks (NaN: not a usable observation), ``runtimes_s`` their durations (what
        an answer's waste is weighed by; None: every run the same). A task's latest
        ``RECENT_RUNS`` usable runs are what its line is fitted on: the law a task follows now."""
        tasks = np.asarray(tasks, dtype=object)
        log_memory = np.asarray(log_memory, dtype=float)
        runtimes = np.full(len(tasks), np.nan) if runtimes_s is None else np.asarray(runtimes_s, dtype=float)
        numeric = {}
        for name in inputs.columns:
            values = pd.to_numeric(inputs[name], errors="coerce").to_numpy(dtype=float, copy=True)
            values[~(values > 0)] = np.nan
            if np.isfinite(values).any():
                numeric[str(name)] = values
        usable = np.flatnonzero(np.isfinite(log_memory))
        order = usable[np.argsort(tasks[usable].astype(str), kind="stable")]
        names = tasks[order].astype(str)
        starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]]) if len(order) else np.zeros(0, dtype=int)
        fits: dict[str, tuple[TaskTrend, np.ndarray, np.ndarray, np.ndarray]] = {}
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            rows = order[start:end][-RECENT_RUNS:]
            if len(rows) < self.min_runs:
                continue
            y = log_memory[rows]
            mean, loo_mean = _mean(y)
            best = (float((loo_mean**2).sum()), None, "power", mean, 0.0, loo_mean, 0.0, 0.0, 0.0)
            for name in sorted(numeric):
                values = numeric[name][rows]
                if not np.isfinite(values).all() or len(np.unique(values)) < MIN_DISTINCT:
                    continue
                x_max = float(np.nanmax(numeric[name][order[start:end]]))
                for form, intercept, slope, loo, mean_u, suu in _candidates(values, y):
                    error = float((loo**2).sum())
                    if slope > 0 and error < best[0]:
                        best = (error, name, form, intercept, slope, loo, mean_u, suu, x_max)
            _, name, form, intercept, slope, loo, mean_u, suu, x_max = best
            dof = len(rows) - (2 if name is not None else 1)
            sigma = float(np.sqrt((loo**2).sum() / len(rows))) if dof > 0 else float("nan")
            trend = TaskTrend(name, intercept, slope, len(rows), sigma, mean_u, suu, x_max, form)
            fits[str(names[start])] = (trend, loo, y, runtimes[rows])
        known = [t.sigma for t, *_ in fits.values() if math.isfinite(t.sigma)]
        self.pooled_sigma_ = max(float(np.median(known)) if known else MIN_SIGMA, MIN_SIGMA)
        self.trends_: dict[str, TaskTrend] = {}
        self.task_errors_: dict[str, np.ndarray] = {}
        self.task_byte_errors_: dict[str, np.ndarray] = {}
        scores = []
        for task, (trend, loo, y, runtime) in fits.items():
            trend = self._shrunk(trend)
            scores.append(loo / trend.sigma)
            self.task_errors_[task] = np.sort(loo)
            self.task_byte_errors_[task] = np.sort(np.exp(y) - np.exp(y - loo))
            margin = self._margin_form(task, loo, y, runtime)
            self.trends_[task] = trend if margin == trend.margin else TaskTrend(**{**asdict(trend), "margin": margin})
        self.scores_ = np.sort(np.concatenate(scores)) if scores else np.zeros(0)
        return self

    def _margin_form(self, task: str, loo: np.ndarray, y: np.ndarray, runtime: np.ndarray) -> str:
        """"bytes" when an amount added to the centre would have wasted less on the task's own
        runs than a factor on it, both at ``coverage`` from its left-one-out errors, else "log".

        Where a task's large runs are steady and its small ones erratic (methylseq's
        BISMARK_METHYLATIONEXTRACTOR: 0.6 GB to 1.8 TB read), one factor wide enough for the
        small runs doubles the large ones, which hold the memory for hours; an amount enough
        for the large runs is generous but cheap on the small. Both are conformal quantiles of
        the same left-one-out errors, so either keeps the promise on the task's runs."""
        log_errors = np.sort(loo)
        byte_errors = self.task_byte_errors_[task]
        q_log = conformal_quantile(log_errors, self.coverage)
        q_bytes = conformal_quantile(byte_errors, self.coverage)
        if not (math.isfinite(q_log) and math.isfinite(q_bytes)):
            return "log"
        predicted = y - loo
        by_factor = retry_wastage(predicted + max(q_log, 0.0), y, runtime).sum()
        by_amount = retry_wastage(np.log(np.maximum(np.exp(predicted) + max(q_bytes, 0.0), 1.0)), y, runtime).sum()
        return "bytes" if by_amount < by_factor else "log"

    def _own_upper(self, trend: TaskTrend, task: str, centre: float, x: float | None, coverage: float) -> float | None:
        """The log upper bound from the task's own errors, in its margin form; None without enough of them."""
        own = self._own(task, coverage)
        if own is None:
            return None
        if trend.margin == "bytes" and task in self.task_byte_errors_:
            q = max(conformal_quantile(self.task_byte_errors_[task], coverage), 0.0)
            return math.log(max(math.exp(min(centre, 700.0)) + q * self._scale(trend, x), 1.0))
        return centre + max(conformal_quantile(own, coverage), 0.0) * self._scale(trend, x)

    def _shrunk(self, trend: TaskTrend) -> TaskTrend:
        dof = max(trend.degrees_of_freedom, 0)
        own = trend.sigma if math.isfinite(trend.sigma) else self.pooled_sigma_
        variance = (dof * own**2 + SIGMA_PRIOR_WEIGHT * self.pooled_sigma_**2) / (dof + SIGMA_PRIOR_WEIGHT)
        return TaskTrend(**{**asdict(trend), "sigma": max(math.sqrt(variance), MIN_SIGMA)})

    def predict_log(self, tasks: Sequence[str], inputs: pd.DataFrame) -> np.ndarray:
        """Each row's log peak on its task's line (NaN for a task without one); ``inputs`` as in
        :meth:`fit`, row-aligned with ``tasks``."""
        out = np.full(len(tasks), np.nan)
        for _, trend, rows in self._rows_by_task(tasks, inputs):
            for i, x in rows:
                out[i] = trend.centre(x)
        return out

    def _rows_by_task(self, tasks: Sequence[str], inputs: pd.DataFrame):
        """(task, its line, [(row, its input or None), ...]) for every task of ``tasks`` with a line."""
        tasks = np.asarray(tasks, dtype=object).astype(str)
        columns = {str(c): pd.to_numeric(inputs[c], errors="coerce").to_numpy(dtype=float) for c in inputs.columns}
        for task, rows in pd.Series(tasks).groupby(tasks, sort=False).indices.items():
            trend = self.trends_.get(str(task))
            if trend is None:
                continue
            values = columns.get(trend.feature) if trend.feature is not None else None
            xs = [values[i] if values is not None else math.nan for i in rows]
            yield str(task), trend, [(i, x if math.isfinite(x) and x > 0 else None) for i, x in zip(rows, xs)]

    def with_margins(self, forms: Mapping[str, str]) -> "InputTrend":
        """The same lines with the margin form of the tasks in ``forms`` replaced (the form a
        time hold-out preferred, see :func:`scalable.advising.model_choice.margin_forms`)."""
        for task, form in forms.items():
            trend = self.trends_.get(task)
            if trend is not None and trend.margin != form:
                self.trends_[task] = TaskTrend(**{**asdict(trend), "margin": form})
        return self

    def upper_log(self, tasks: Sequence[str], inputs: pd.DataFrame, coverage: float,
                  margin: str | None = None) -> np.ndarray:
        """Each row's log upper bound on its task's line at ``coverage`` (NaN without a line): what
        :meth:`upper` answers, for many rows at once; ``inputs`` as in :meth:`fit`. ``margin``
        ("log" or "bytes") overrides each task's own margin form."""
        out = np.full(len(tasks), np.nan)
        for task, trend, rows in self._rows_by_task(tasks, inputs):
            if margin is not None and margin != trend.margin:
                trend = TaskTrend(**{**asdict(trend), "margin": margin})
            pooled_q = self.quantile(trend, coverage)[0]
            for i, x in rows:
                centre = trend.centre(x)
                own = self._own_upper(trend, task, centre, x, coverage)
                out[i] = own if own is not None else centre + pooled_q * trend.sigma * math.sqrt(1.0 + trend.leverage(x))
        return out

    def _input(self, trend: TaskTrend, features: Mapping[str, Any]) -> float | None:
        return None if trend.feature is None else positive_number(features.get(trend.feature))

    def extrapolation(self, task: str, features: Mapping[str, Any]) -> tuple[float, TaskTrend | None, float | None]:
        """(log-space addition, the task's line, the input) for an input above the largest seen; 0 inside."""
        trend = self.trends_.get(task)
        if trend is None or trend.feature is None or trend.slope <= 0:
            return 0.0, trend, None
        x = self._input(trend, features)
        if x is None or x <= trend.x_max:
            return 0.0, trend, x
        return trend.centre(x) - trend.centre(trend.x_max), trend, x

    def _own(self, task: str, coverage: float) -> np.ndarray | None:
        """The task's own sorted left-one-out log errors when there are enough of them to
        promise ``coverage`` (at 95%, 19), else None."""
        errors = self.task_errors_.get(task)
        if errors is None or not math.isfinite(conformal_quantile(errors, coverage)):
            return None
        return errors

    def _scale(self, trend: TaskTrend, x: float | None) -> float:
        """How much wider than on its own runs a prediction at ``x`` is: 1 within them, growing
        with the distance beyond them (the leverage of a new point against a typical fitted one)."""
        typical = 1.0 + (2.0 if trend.feature is not None else 1.0) / trend.n
        return max(1.0, math.sqrt((1.0 + trend.leverage(x)) / typical))

    def quantile(self, trend: TaskTrend, coverage: float) -> tuple[float, str]:
        """The studentised error quantile pooled over tasks for ``coverage`` and how it was obtained."""
        n = len(self.scores_)
        level = math.ceil((n + 1) * coverage)
        if n and level <= n:
            return float(self.scores_[level - 1]), f"conformal on {n} left-one-out errors of all tasks"
        from scipy.stats import t as student

        dof = max(trend.degrees_of_freedom, 1)
        return float(student.ppf(coverage, dof)), f"t prediction interval ({dof} degrees of freedom, log-normal errors assumed)"

    def after_failure(self, task: str, features: Mapping[str, Any], failed_log: float, coverage: float) -> tuple[float, str] | None:
        """Log memory for the next attempt of a run that failed at ``exp(failed_log)``: the
        ``coverage`` quantile of the errors above the one that failure implies."""
        trend = self.trends_.get(task)
        if trend is None:
            return None
        x = self._input(trend, features)
        centre = trend.centre(x)
        own = self._own(task, coverage)
        if own is not None:
            scale = self._scale(trend, x)
            found = conditional_quantile(own, (failed_log - centre) / scale, coverage)
            if found is not None:
                return centre + found[0] * scale, f"conformal on the {found[1]} left-one-out errors of this task above it"
        scale = trend.sigma * math.sqrt(1.0 + trend.leverage(x))
        above = (failed_log - centre) / scale
        found = conditional_quantile(self.scores_, above, coverage)
        if found is not None:
            return centre + found[0] * scale, f"conformal on the {found[1]} left-one-out errors of all tasks above it"
        from scipy.stats import t as student

        dof = max(trend.degrees_of_freedom, 1)
        level = student.cdf(above, dof)
        if level >= 1.0 - 1e-12:
            return None
        q = float(student.ppf(level + coverage * (1.0 - level), dof))
        return centre + q * scale, f"t prediction interval above it ({dof} degrees of freedom)"

    def upper(self, task: str, features: Mapping[str, Any], coverage: float) -> tuple[float, float, TaskTrend, str] | None:
        """(log centre, log upper bound, the line, how the bound was obtained); None without a line."""
        trend = self.trends_.get(task)
        if trend is None:
            return None
        x = self._input(trend, features)
        centre = trend.centre(x)
        own = self._own_upper(trend, task, centre, x, coverage)
        if own is not None:
            n = self.task_errors_[task].size
            how = " in bytes (added, not a factor: less waste on its runs)" if trend.margin == "bytes" else ""
            return centre, own, trend, f"conformal on this task's {n} left-one-out errors{how}"
        q, method = self.quantile(trend, coverage)
        return centre, centre + q * trend.sigma * math.sqrt(1.0 + trend.leverage(x)), trend, method

    def to_state(self) -> dict[str, Any]:
        return {
            "min_runs": self.min_runs,
            "pooled_sigma": self.pooled_sigma_,
            "scores": self.scores_.tolist(),
            "trends": {task: asdict(trend) for task, trend in self.trends_.items()},
            "error_tasks": list(self.task_errors_),
            "error_counts": np.array([e.size for e in self.task_errors_.values()], dtype=np.int64),
            "errors": (np.concatenate(list(self.task_errors_.values())) if self.task_errors_ else np.zeros(0)),
            "byte_errors": (np.concatenate([self.task_byte_errors_[t] for t in self.task_errors_])
                            if self.task_errors_ else np.zeros(0)),
            "coverage": self.coverage,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "InputTrend":
        trend = cls(int(state["min_runs"]), float(state.get("coverage", 0.95)))
        trend.pooled_sigma_ = float(state["pooled_sigma"])
        trend.scores_ = np.asarray(state["scores"], dtype=float)
        trend.trends_ = {task: TaskTrend(**fields) for task, fields in state["trends"].items()}
        trend.task_errors_ = {}
        trend.task_byte_errors_ = {}
        if "errors" in state:  # absent in models stored before per-task intervals
            errors = np.asarray(state["errors"], dtype=float)
            ends = np.cumsum(np.asarray(state["error_counts"], dtype=np.int64))
            byte_errors = np.asarray(state["byte_errors"], dtype=float) if "byte_errors" in state else None
            for task, end, count in zip(state["error_tasks"], ends, state["error_counts"]):
                trend.task_errors_[str(task)] = errors[end - count:end]
                if byte_errors is not None:
                    trend.task_byte_errors_[str(task)] = byte_errors[end - count:end]
        return trend
