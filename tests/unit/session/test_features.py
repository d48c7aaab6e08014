"""Input features and task names captured from a call, as the telemetry records them."""

from __future__ import annotations

import functools

from scalable.telemetry.dask_plugin import ProbedTask, capture_features, declare_features, task_name


def run(i, size_mb, scenario="base", *, data=None):
    return i


def test_scalar_arguments_are_captured_under_their_parameter_names():
    assert capture_features(run, (3,), {"size_mb": 200}) == {"i": 3, "size_mb": 200}
    assert capture_features(run, (3, 1.5, "peak"), {"data": [1, 2]}) == {"i": 3, "size_mb": 1.5, "scenario": "peak"}
    assert capture_features(run, (float("nan"), True), {}) == {"size_mb": True}


def test_partials_varargs_and_unbindable_calls():
    assert capture_features(functools.partial(run, size_mb=5), (1,), {}) == {"i": 1, "size_mb": 5}

    def many(*values, **options):
        return values

    assert capture_features(many, (1, "a", object()), {"level": 2}) == {"values0": 1, "values1": "a", "level": 2}
    assert capture_features(run, (1, 2, 3, 4, 5), {}) == {"arg0": 1, "arg1": 2, "arg2": 3, "arg3": 4, "arg4": 5}


def test_declared_features_replace_the_captured_ones():
    @declare_features(lambda path, scenario: {"size_mb": len(path), "scenario": scenario, "raw": [1]})
    def simulate(path, scenario):
        return path

    assert capture_features(simulate, ("abcd",), {"scenario": "peak"}) == {"size_mb": 4, "scenario": "peak"}


def test_task_name_is_the_function_name_through_wrappers():
    assert task_name(run) == "run"
    assert task_name(functools.partial(run, 1)) == "run"
    assert task_name(ProbedTask(functools.partial(run, 1))) == "run"
    assert task_name(lambda: 1) == "lambda"
    assert ProbedTask(run)(4, 1) == 4, "outside a worker the probe just calls the function"
