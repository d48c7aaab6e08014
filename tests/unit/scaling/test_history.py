"""The scaler's state is passed in and committed by the caller; the one cooldown rule."""

from __future__ import annotations

import pytest

from scalable.scaling.config import DEFAULTS, ScalerConfig
from scalable.scaling.cooldown import cooldown
from scalable.scaling.history import ScalingHistory
from scalable.scaling.scaler import AdaptiveScaler


def snap(queued=0, processing=0, workers=1, idle=None):
    state = {"queued": queued, "processing": processing, "workers": workers}
    if idle is not None:
        state["idle_workers"] = idle
    return {"demeter": state}


def test_the_rule_holds_within_the_cooldown_except_a_scale_up_after_a_scale_down():
    assert cooldown("scale_up", None, None, 5.0, 60).allowed
    assert cooldown("scale_up", 100.0, "scale_up", 160.0, 60).allowed
    held = cooldown("scale_down", 100.0, "scale_up", 130.0, 60)
    assert not held.allowed and held.seconds_left == pytest.approx(30.0)
    assert not cooldown("scale_down", 100.0, "scale_down", 130.0, 60).allowed
    early = cooldown("scale_up", 100.0, "scale_down", 101.0, 60)
    assert early.allowed and "does not hold back a scale-up" in early.note
    assert not cooldown("scale_up", 100.0, None, 101.0, 60).allowed, "an unknown last change holds everything"


def test_evaluate_changes_nothing_it_is_given():
    scaler = AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=60)
    history = ScalingHistory()
    first = scaler.evaluate(snap(queued=30, processing=1, workers=1), 100, history)
    again = scaler.evaluate(snap(queued=30, processing=1, workers=1), 100, history)
    assert first.tags == again.tags and first.tags["demeter"].action == "scale_up"
    assert history.tags == {}, "the history passed in is not touched"
    assert first.observed.of("demeter").last_change is None, "observed, not applied"
    assert first.observed.of("demeter").forecast is not None


def test_a_change_not_applied_starts_no_cooldown():
    scaler = AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=60)
    wanted = scaler.evaluate(snap(queued=30, processing=1, workers=1), 100, ScalingHistory())
    refused = wanted.commit([])  # e.g. the replica patch hit a Conflict
    retry = scaler.evaluate(snap(queued=30, processing=1, workers=1), 105, refused)
    assert retry.tags["demeter"].action == "scale_up", retry.tags["demeter"].reason
    applied = retry.commit(["demeter"])
    assert (applied.of("demeter").last_change, applied.of("demeter").last_action) == (105.0, "scale_up")
    held = scaler.evaluate(snap(queued=60, processing=10, workers=10), 110, applied)
    assert held.tags["demeter"].action in ("hold",) and "in cooldown for 55s more" in held.tags["demeter"].reason
    with pytest.raises(ValueError, match="held"):
        held.commit(["demeter"])


def test_the_issue_sequence_scale_down_then_up_then_nothing_phantom():
    """Scale-down at 230, scale-up wanted at 241: applied at 241, and no cooldown from a change never applied."""
    scaler = AdaptiveScaler(min_workers=1, max_workers=20, cooldown_seconds=60)
    history = ScalingHistory().applied([("demeter", "scale_up", 100.0)])
    down = scaler.evaluate(snap(workers=20, idle=20), 230, history)
    assert down.tags["demeter"].action == "scale_down"
    history = down.commit(["demeter"])
    up = scaler.evaluate(snap(queued=30, processing=19, workers=19), 241, history)
    assert up.tags["demeter"].action == "scale_up", up.tags["demeter"].reason
    history = up.commit(["demeter"])
    down_again = scaler.evaluate(snap(workers=20, idle=20), 250, history)
    assert down_again.tags["demeter"].action == "hold" and "cooldown for 51s" in down_again.tags["demeter"].reason


def test_one_configuration_with_every_default_once():
    config = ScalerConfig(cooldown_seconds=40, worker_startup_seconds=20)
    assert config.horizon == 60 and ScalerConfig(horizon_seconds=7).horizon == 7
    assert DEFAULTS.horizon == DEFAULTS.cooldown_seconds + DEFAULTS.worker_startup_seconds
    assert DEFAULTS.utilisation_target == pytest.approx((DEFAULTS.scale_up_threshold + DEFAULTS.scale_down_threshold) / 2)
    scaler = AdaptiveScaler(config=config, min_workers=2)
    assert scaler.config.min_workers == 2 and scaler.config.cooldown_seconds == 40
    with pytest.raises(TypeError, match="unknown scaler settings"):
        AdaptiveScaler(cooldown=3)
    for bad in ({"scale_up_threshold": 0.2}, {"target_utilisation": 0.95}, {"cooldown_seconds": float("nan")},
                {"max_scale_up_step": 0}, {"min_workers": {"a": 3}, "max_workers": {"a": 2}}):
        with pytest.raises(ValueError):
            ScalerConfig(**bad)
