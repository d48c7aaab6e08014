"""Arrival-rate forecast for one tag, from the snapshots the scaler has seen.

Tasks arrive in waves, so the scaler needs to know not only how many tasks are queued but
how many are about to arrive. Holt's linear smoothing (a level and a trend, each an
exponentially weighted average) follows a rising wave within a couple of polls and forgets
a finished one as quickly, which a plain moving average over a window does not. Snapshots
come at irregular intervals, so both weights are turned into per-second decay rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ArrivalForecaster", "HoltState"]


@dataclass(frozen=True)
class HoltState:
    """What the forecaster knows after the last observation (rates in tasks per second)."""

    time: float
    submitted: float
    level: float = 0.0
    trend: float = 0.0
    observations: int = 0


class ArrivalForecaster:
    """Holt's linear exponential smoothing of the arrival rate of one tag.

    Arrivals between two snapshots are the increase of the cumulative ``submitted`` counter
    when the snapshot has one, else the increase of the tasks in the system (queued plus
    processing) which misses tasks that arrived and finished in between; the session
    always supplies the counter.

    ``half_life_s`` is how long the level takes to forget half of an old rate;
    ``trend_half_life_s`` the same for the trend. ``state`` resumes from an earlier
    forecaster's :attr:`state` (the scaler keeps it in its history, not in the forecaster). The forecast never goes below zero, and
    neither does the rate the damped trend leads to: a falling trend is cut where it
    would, so that a quiet spell after one wave starts the next from zero, not from a
    negative trend left over from the last wave's end.
    """

    def __init__(self, half_life_s: float = 2.0, trend_half_life_s: float = 4.0, state: HoltState | None = None) -> None:
        if half_life_s <= 0 or trend_half_life_s <= 0:
            raise ValueError("half-lives must be positive")
        self.half_life_s = half_life_s
        self.trend_half_life_s = trend_half_life_s
        self.state: HoltState | None = state

    @staticmethod
    def _weight(dt: float, half_life: float) -> float:
        return 1.0 - math.pow(0.5, dt / half_life)

    def observe(self, now: float, submitted: float) -> HoltState:
        """Take the cumulative count of tasks submitted so far at ``now``."""
        previous = self.state
        if previous is None or now <= previous.time:
            if previous is None:
                self.state = HoltState(time=now, submitted=submitted)
            return self.state
        dt = now - previous.time
        rate = max(0.0, submitted - previous.submitted) / dt
        if previous.observations == 0:
            level, trend = rate, 0.0
        else:
            alpha = self._weight(dt, self.half_life_s)
            beta = self._weight(dt, self.trend_half_life_s)
            projected = max(0.0, previous.level + previous.trend * dt)
            level = max(0.0, alpha * rate + (1 - alpha) * projected)
            trend = beta * (level - previous.level) / dt + (1 - beta) * previous.trend
            # a rate cannot fall below zero: the trend may take the damped forecast down to
            # zero, no further, or the end of one wave would hold down the start of the next
            trend = max(trend, -level / self._damping_s)
        self.state = HoltState(
            time=now,
            submitted=max(submitted, previous.submitted),
            level=level,
            trend=trend,
            observations=previous.observations + 1,
        )
        return self.state

    @property
    def _damping_s(self) -> float:
        return self.trend_half_life_s / math.log(2)

    def rate(self, ahead_s: float = 0.0) -> float:
        """Forecast arrival rate (tasks per second) ``ahead_s`` seconds after the last snapshot.

        The trend is damped (Gardner's damped Holt): it adds at most ``trend x tau`` with
        ``tau = trend_half_life_s / ln 2``, so a wave caught at its steepest is not
        extrapolated into an ever faster one.
        """
        if self.state is None or self.state.observations == 0:
            return 0.0
        tau = self._damping_s
        return max(0.0, self.state.level + self.state.trend * tau * (1.0 - math.exp(-max(0.0, ahead_s) / tau)))

    def arrivals(self, horizon_s: float, steps: int = 64) -> float:
        """Expected number of tasks to arrive within ``horizon_s``: the forecast rate integrated.

        Integrated numerically (midpoint rule) so that a falling forecast stops at zero
        instead of subtracting arrivals.
        """
        if self.state is None or self.state.observations == 0 or horizon_s <= 0:
            return 0.0
        dt = horizon_s / steps
        return sum(self.rate((i + 0.5) * dt) for i in range(steps)) * dt
