"""Small composable estimators over a task's observed usage, in the manner of VPA's recommender.

A recommendation from history is a chain: a percentile of what was used, a safety margin,
widening while history is short, a minimum, and a floor raised by OOM kills. Each step is a
tiny object with ``describe()`` so the advisor can say exactly how it got its number, and each
is monotone (more coverage or larger usage never gives less), which the property tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from scalable.units import MiB, format_memory

__all__ = [
    "History",
    "Estimator",
    "Percentile",
    "SafetyMargin",
    "ShortHistoryWidening",
    "Minimum",
    "OOMBump",
    "Chain",
    "oom_floor",
]

OOM_MARGIN_BYTES = 100 * MiB
OOM_RATIO = 1.2


@dataclass(frozen=True)
class History:
    """The observations one estimate is made from.

    ``values`` are observed usages (bytes, cpus or seconds), ``oom_floor`` is the least memory
    an OOM-killed run showed to be necessary (0 when there was none).
    """

    values: np.ndarray
    oom_floor: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, oom_floor: float = 0.0) -> "History":
        array = np.asarray(values, dtype=float)
        array = np.sort(array[np.isfinite(array)])
        return cls(array, float(oom_floor))

    @property
    def n(self) -> int:
        return int(self.values.size)


class Estimator(Protocol):
    """One step: takes the running estimate and the history, returns the new estimate."""

    def apply(self, estimate: float, history: History) -> float: ...

    def describe(self, history: History) -> str: ...


@dataclass(frozen=True)
class Percentile:
    """The ``q`` quantile of observed usage (the 'higher' order statistic, never interpolated
    below an observed value, so p100 is the maximum seen)."""

    q: float

    def __post_init__(self) -> None:
        if not 0.0 < self.q <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], not {self.q!r}")

    def apply(self, estimate: float, history: History) -> float:
        if history.n == 0:
            return estimate
        return float(np.quantile(history.values, self.q, method="higher"))

    def describe(self, history: History) -> str:
        runs = "run" if history.n == 1 else "runs"
        return f"p{_percent(self.q)} of {history.n} historical {runs}"


@dataclass(frozen=True)
class SafetyMargin:
    """Multiply by ``factor`` (VPA uses 1.15 on p90)."""

    factor: float = 1.15

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"a safety margin below 1 would cut the estimate, got {self.factor!r}")

    def apply(self, estimate: float, history: History) -> float:
        return estimate * self.factor

    def describe(self, history: History) -> str:
        return f"+{(self.factor - 1) * 100:.0f}% safety margin"


@dataclass(frozen=True)
class ShortHistoryWidening:
    """Widen by ``(1 + multiplier / n) ** exponent`` while fewer than ``until`` runs are known.

    VPA widens its bounds by a factor that shrinks with days of history; with task runs the
    natural unit is the number of runs, and the users' rule of thumb is that 20 runs are
    reliable, so widening stops there.
    """

    multiplier: float = 1.0
    exponent: float = 1.0
    until: int = 20

    def factor(self, n: int) -> float:
        if n >= self.until or n <= 0:
            return 1.0
        return (1.0 + self.multiplier / n) ** self.exponent

    def apply(self, estimate: float, history: History) -> float:
        return estimate * self.factor(history.n)

    def describe(self, history: History) -> str:
        return f"widened x{self.factor(history.n):.2f} for short history ({history.n} < {self.until} runs)"


@dataclass(frozen=True)
class Minimum:
    """Never below ``floor`` (VPA: 250 MiB of memory, 25 millicores of CPU)."""

    floor: float
    unit: str = "bytes"

    def apply(self, estimate: float, history: History) -> float:
        return max(estimate, self.floor)

    def describe(self, history: History) -> str:
        if self.unit == "bytes":
            return f"minimum {format_memory(self.floor)}"
        if self.unit == "cpus":
            return f"minimum {self.floor * 1000:.0f}m cpu"
        return f"minimum {self.floor:g} {self.unit}"


@dataclass(frozen=True)
class OOMBump:
    """Never below what an OOM kill proved necessary (see :func:`oom_floor`)."""

    def apply(self, estimate: float, history: History) -> float:
        return max(estimate, history.oom_floor)

    def describe(self, history: History) -> str:
        return f"raised to {format_memory(history.oom_floor)} after an OOM kill"


@dataclass(frozen=True)
class Chain:
    """Estimators applied in order; ``explain`` names only the steps that changed the number."""

    steps: tuple[Estimator, ...]
    start: float = 0.0

    def estimate(self, history: History) -> float:
        value = self.start
        for step in self.steps:
            value = step.apply(value, history)
        return value

    def explain(self, history: History) -> tuple[float, str]:
        value = self.start
        parts: list[str] = []
        for index, step in enumerate(self.steps):
            new = step.apply(value, history)
            if index == 0 or not math.isclose(new, value, rel_tol=1e-12):
                parts.append(step.describe(history))
            value = new
        return value, "; ".join(parts)


def oom_floor(peak_bytes: np.ndarray, worker_memory_bytes: np.ndarray) -> np.ndarray:
    """The memory each OOM-killed run needed at least: VPA's max(used + 100 MiB, 1.2 x used).

    When the peak was not recorded (the kill took the sampler with it), the worker's memory
    limit stands in for it: the task needed more than that.
    """
    used = np.where(np.isfinite(peak_bytes), peak_bytes, worker_memory_bytes)
    floor = np.maximum(used + OOM_MARGIN_BYTES, OOM_RATIO * used)
    return np.where(np.isfinite(floor), floor, 0.0)


def _percent(q: float) -> str:
    value = q * 100
    return f"{value:.0f}" if math.isclose(value, round(value)) else f"{value:g}"
