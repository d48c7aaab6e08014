"""Telemetry paths are per namespace and cannot be steered outside it."""

import pytest

from scalable.controller.storage import StorageError, TelemetryRoot


def test_layout(tmp_path):
    root = TelemetryRoot(tmp_path)
    assert root.runs_dir("team-a", create=True) == tmp_path / "team-a" / "runs"
    assert root.model_dir("team-a", "demeter.v2") == tmp_path / "team-a" / "models" / "demeter.v2"
    assert (tmp_path / "team-a" / "runs").is_dir()


@pytest.mark.parametrize("namespace", ["", "..", "a/b", "A", "x" * 64, "-a", "a_b"])
def test_bad_namespaces_are_refused(tmp_path, namespace):
    with pytest.raises(StorageError):
        TelemetryRoot(tmp_path).runs_dir(namespace)


@pytest.mark.parametrize("name", ["", "..", "a/../../b", "a..b", "../team-b"])
def test_bad_model_names_are_refused(tmp_path, name):
    with pytest.raises(StorageError):
        TelemetryRoot(tmp_path).model_dir("team-a", name)


def test_symlink_escape_is_refused(tmp_path):
    (tmp_path / "team-b" / "runs").mkdir(parents=True)
    (tmp_path / "team-a").mkdir()
    (tmp_path / "team-a" / "runs").symlink_to(tmp_path / "team-b" / "runs")
    with pytest.raises(StorageError):
        TelemetryRoot(tmp_path).runs_dir("team-a")
