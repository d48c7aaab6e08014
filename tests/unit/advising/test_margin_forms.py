"""A task's margin as a factor on its line or an amount added to it, whichever wastes less."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scalable.advising.model_choice import margin_forms
from scalable.advising.trend import InputTrend


def _fit(x, peak, runtime, coverage=0.95):
    tasks = np.array(["t"] * len(x), dtype=object)
    return InputTrend(coverage=coverage).fit(tasks, pd.DataFrame({"size": x}), np.log(peak), runtime)


def test_steady_long_large_runs_and_erratic_short_small_ones_get_an_amount_not_a_factor():
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(1e9, 5e9, 40), rng.uniform(1e12, 2e12, 40)]
    noise = np.r_[rng.lognormal(0, 0.6, 40), rng.lognormal(0, 0.05, 40)]
    peak = 2e6 * x / 1e9 * noise * 1.0 + 1e8 * noise
    runtime = x / 1e9 * 10.0  # the large runs hold their memory for hours
    trend = _fit(x, peak, runtime)
    assert trend.trends_["t"].margin == "bytes"
    centre, upper, _, how = trend.upper("t", {"size": 1.5e12}, 0.95)
    assert "in bytes" in how
    as_factor = _fit(x, peak, runtime).with_margins({"t": "log"})
    _, upper_by_factor, _, _ = as_factor.upper("t", {"size": 1.5e12}, 0.95)
    assert upper < upper_by_factor - 0.2, (math.exp(upper - centre), math.exp(upper_by_factor - centre))
    # still an upper bound for the large runs it was fitted on
    large = x > 1e12
    bounds = trend.upper_log(np.array(["t"] * large.sum(), dtype=object), pd.DataFrame({"size": x[large]}), 0.95)
    assert np.mean(np.exp(bounds) >= peak[large]) >= 0.9


def test_runs_erring_by_the_same_factor_at_every_size_keep_the_factor():
    rng = np.random.default_rng(1)
    x = rng.uniform(1e9, 1e12, 80)
    peak = 1e-3 * x * rng.lognormal(0, 0.2, 80)
    trend = _fit(x, peak, x / 1e9)
    assert trend.trends_["t"].margin == "log"


def test_the_margin_form_survives_the_state_round_trip():
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(1e9, 5e9, 40), rng.uniform(1e12, 2e12, 40)]
    peak = 2e-3 * x * np.r_[rng.lognormal(0, 0.6, 40), rng.lognormal(0, 0.05, 40)] + 1e8
    trend = _fit(x, peak, x / 1e9)
    again = InputTrend.from_state(trend.to_state())
    assert again.trends_["t"].margin == trend.trends_["t"].margin
    assert again.upper("t", {"size": 1.7e12}, 0.95) == trend.upper("t", {"size": 1.7e12}, 0.95)


def test_the_hold_out_decides_the_form_by_what_each_would_have_wasted():
    tasks = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 3, dtype=object)
    peaks = np.full(15, math.log(1e9))
    runtime = np.full(15, 3600.0)
    factor = peaks + np.r_[[0.5] * 6, [0.05] * 6, [0.5] * 3]
    amount = peaks + np.r_[[0.1] * 6, [-0.1] * 6, [0.1] * 3]  # b: the amount falls short, a rerun at double
    forms = margin_forms(tasks, factor, amount, peaks, runtime)
    assert forms == {"a": "bytes", "b": "log"}, "c has too few held-out runs to be judged"
