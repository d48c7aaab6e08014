"""Champion/challenger: a challenger replaces the champion only if held-out quality is not worse."""

import pytest

from scalable.controller.training import COVERAGE_TOLERANCE, compare, parse_duration


def quality(measured, promised=0.95, slack=0.2):
    return {"memory": {"coverage_measured": measured, "coverage_promised": promised, "slack": slack}}


def test_first_model_is_promoted():
    assert compare(quality(0.9), None)[0]


def test_better_or_equal_coverage_is_promoted():
    assert compare(quality(0.95), quality(0.93))[0]
    assert compare(quality(0.94), quality(0.95))[0]  # within tolerance


def test_worse_coverage_keeps_the_champion_and_says_why():
    promote, why = compare(quality(0.95 - 3 * COVERAGE_TOLERANCE), quality(0.95))
    assert not promote and "kept the champion" in why and "shortfall" in why


def test_same_coverage_but_much_more_slack_keeps_the_champion():
    promote, why = compare(quality(0.95, slack=0.6), quality(0.95, slack=0.2))
    assert not promote and "slack" in why


def test_unmeasurable_challenger_does_not_replace_a_measured_champion():
    assert not compare({}, quality(0.95))[0]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "h1", "1h 30m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)
