"""status.groups[].recommendation carries lowerBound / upperBound memory, as the VPA's status does.

They come from the advisor's memory interval (``Recommendation.interval``), capped by the group's
resourcePolicy like the target, and always bracket the target memory the template gets.
"""

from scalable.controller import sizing
from scalable.units import GiB, MiB, parse_memory


def _target(memory_bytes, low=None, high=None):
    return sizing.clamp(1, memory_bytes, low, high)


def test_bounds_are_the_interval_as_exact_quantities():
    target = _target(4 * GiB)
    bounds = sizing.memory_bounds((2 * GiB, 4 * GiB), target, None, None)
    assert bounds == {"lowerBound": "2Gi", "upperBound": "4Gi"}


def test_no_interval_no_bounds():
    assert sizing.memory_bounds(None, _target(4 * GiB), None, None) == {}


def test_bounds_bracket_the_target_rounded_up_to_whole_mib():
    target = _target(3 * GiB + 1)  # the template gets 3073Mi
    bounds = sizing.memory_bounds((1_500_000_000, 3 * GiB + 1), target, None, None)
    assert bounds["lowerBound"] == "1500000000"  # not a whole MiB: written as exact bytes
    assert parse_memory(bounds["lowerBound"]) <= target.memory_bytes <= parse_memory(bounds["upperBound"])
    assert bounds["upperBound"] == "3073Mi"


def test_bounds_are_capped_by_the_resource_policy_as_the_target_is():
    low, high = {"memory": "3Gi"}, {"memory": "6Gi"}
    target = _target(8 * GiB, low, high)
    assert target.memory == "6Gi"
    bounds = sizing.memory_bounds((1 * GiB, 8 * GiB), target, low, high)
    assert bounds == {"lowerBound": "3Gi", "upperBound": "6Gi"}


def test_an_oom_retry_interval_starts_at_the_killed_limit():
    # after_oom_kill answers (failed, memory): the lower bound is the limit that proved too small
    target = _target(6 * GiB)
    assert sizing.memory_bounds((4 * GiB, 6 * GiB), target, None, None) == {"lowerBound": "4Gi", "upperBound": "6Gi"}


def test_a_lower_bound_above_the_target_is_brought_down_to_it():
    target = _target(512 * MiB, None, {"memory": "512Mi"})
    bounds = sizing.memory_bounds((1 * GiB, 2 * GiB), target, None, {"memory": "512Mi"})
    assert bounds == {"lowerBound": "512Mi", "upperBound": "512Mi"}


def test_equal_min_and_max_allowed_pin_both_bounds():
    pinned = {"memory": "4Gi"}
    target = _target(2 * GiB, pinned, dict(pinned))
    assert sizing.memory_bounds((1 * GiB, 2 * GiB), target, pinned, dict(pinned)) == {"lowerBound": "4Gi", "upperBound": "4Gi"}
