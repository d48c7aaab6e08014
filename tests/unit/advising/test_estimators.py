"""The composable estimators: VPA-like behaviour, bounds and monotonicity (property tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scalable.advising.estimators import (
    Chain,
    History,
    Minimum,
    OOMBump,
    Percentile,
    SafetyMargin,
    ShortHistoryWidening,
    oom_floor,
)

MiB = 1024**2
usage = st.lists(st.floats(min_value=1.0, max_value=1e12, allow_nan=False), min_size=1, max_size=60)
coverage = st.floats(min_value=0.01, max_value=1.0)


def chain(q: float) -> Chain:
    return Chain((Percentile(q), SafetyMargin(1.15), ShortHistoryWidening(), Minimum(250 * MiB), OOMBump()))


@settings(max_examples=150, deadline=None)
@given(usage, coverage)
def test_percentile_lies_within_observations(values, q):
    estimate = Percentile(q).apply(0.0, History.of(values))
    assert min(values) <= estimate <= max(values)


@settings(max_examples=150, deadline=None)
@given(usage, coverage, coverage, st.floats(min_value=0, max_value=1e11))
def test_more_coverage_never_less_memory(values, q1, q2, floor):
    low, high = sorted((q1, q2))
    history = History.of(values, oom_floor=floor)
    assert chain(low).estimate(history) <= chain(high).estimate(history)


@settings(max_examples=150, deadline=None)
@given(usage, coverage, st.floats(min_value=0.0, max_value=1e12))
def test_adding_a_larger_observation_never_lowers_the_percentile(values, q, extra):
    larger = max(values) + extra
    before = Percentile(q).apply(0.0, History.of(values))
    after = Percentile(q).apply(0.0, History.of([*values, larger]))
    assert after >= before


@settings(max_examples=150, deadline=None)
@given(usage, coverage, st.integers(min_value=0, max_value=59), st.floats(min_value=0.0, max_value=1e12))
def test_a_larger_observation_never_lowers_the_recommendation(values, q, index, extra):
    index = index % len(values)
    bigger = list(values)
    bigger[index] += extra
    assert chain(q).estimate(History.of(bigger)) >= chain(q).estimate(History.of(values))


@settings(max_examples=150, deadline=None)
@given(usage, coverage, st.floats(min_value=0, max_value=1e12))
def test_bounds_minimum_and_oom_floor(values, q, floor):
    value = chain(q).estimate(History.of(values, oom_floor=floor))
    assert value >= 250 * MiB and value >= floor
    assert value >= Percentile(q).apply(0.0, History.of(values))


def test_vpa_oom_bump():
    used = np.array([1000 * MiB, 100 * MiB, np.nan])
    limit = np.array([np.nan, np.nan, 2000 * MiB])
    floors = oom_floor(used, limit)
    assert floors[0] == 1.2 * 1000 * MiB  # 1.2 x used beats used + 100 MiB
    assert floors[1] == 200 * MiB  # used + 100 MiB beats 1.2 x used
    assert floors[2] == 1.2 * 2000 * MiB  # unknown usage: the worker's limit stands in
    assert oom_floor(np.array([np.nan]), np.array([np.nan]))[0] == 0.0


def test_widening_shrinks_with_history_and_stops():
    widening = ShortHistoryWidening(until=20)
    assert widening.factor(1) == 2.0
    assert widening.factor(5) > widening.factor(10) > 1.0
    assert widening.factor(20) == 1.0


def test_explain_names_only_steps_that_changed_the_number():
    values = np.full(50, 8 * 1024 * MiB)
    value, basis = Chain((Percentile(0.95), ShortHistoryWidening(), Minimum(250 * MiB), OOMBump())).explain(
        History.of(values)
    )
    assert basis == "p95 of 50 historical runs" and value == 8 * 1024 * MiB
    _, basis = chain(0.95).explain(History.of([10 * MiB] * 3, oom_floor=4096 * MiB))
    assert "OOM" in basis and "short history" in basis
