"""Arrival-rate forecast: follows a rising wave, forgets a finished one, never negative."""

from __future__ import annotations

import math

import pytest

from scalable.scaling.forecast import ArrivalForecaster


def test_steady_arrivals_are_forecast_at_their_rate():
    forecaster = ArrivalForecaster()
    for second in range(30):
        forecaster.observe(second, submitted=3 * second)
    assert forecaster.rate() == pytest.approx(3.0, rel=0.02)
    assert forecaster.arrivals(10) == pytest.approx(30.0, rel=0.05)


def test_rising_wave_is_followed_and_a_finished_one_forgotten():
    forecaster = ArrivalForecaster()
    submitted = 0
    for second in range(10):
        submitted += second
        forecaster.observe(second, submitted)
    assert forecaster.rate(ahead_s=2) > 8.5, "the trend keeps the forecast up with the rising rate (9/s last)"
    for second in range(10, 40):
        forecaster.observe(second, submitted)
    assert forecaster.arrivals(30) < 0.5, "30 s after the wave, almost nothing is forecast"
    assert forecaster.rate(ahead_s=100) >= 0


def test_no_history_forecasts_nothing_and_time_must_advance():
    forecaster = ArrivalForecaster()
    assert forecaster.arrivals(30) == 0
    forecaster.observe(5, 10)
    forecaster.observe(5, 50)
    assert forecaster.arrivals(30) == 0
    with pytest.raises(ValueError):
        ArrivalForecaster(half_life_s=0)


def test_a_steep_wave_is_not_extrapolated_without_bound():
    forecaster = ArrivalForecaster(half_life_s=2.0, trend_half_life_s=4.0)
    submitted = 0
    for second in range(8):
        submitted += 2 * second
        forecaster.observe(second, submitted)
    state = forecaster.state
    assert state.trend > 0
    ceiling = state.level + state.trend * 4.0 / math.log(2)
    assert forecaster.rate(1000) == pytest.approx(ceiling, rel=1e-6)
    assert forecaster.arrivals(10) < ceiling * 10


def test_a_new_wave_after_a_quiet_spell_is_forecast_as_the_first_one_was():
    """The end of a wave must not leave a negative trend that holds down the start of the next."""

    def onset(forecaster, t0, submitted):
        forecaster.observe(t0 + 1, submitted + 1)
        forecaster.observe(t0 + 2, submitted + 3)
        return forecaster.arrivals(10)

    fresh = ArrivalForecaster()
    fresh.observe(0, 0)
    first = onset(fresh, 0, 0)
    after = ArrivalForecaster()
    submitted = 0
    for second in range(10):  # a wave rising to 9 tasks/s ...
        submitted += second
        after.observe(second, submitted)
    for second in range(10, 24):  # ... then 14 quiet seconds
        after.observe(second, submitted)
    assert after.state.level + after.state.trend * after._damping_s >= -1e-9
    assert onset(after, 23, submitted) > 0.75 * first
