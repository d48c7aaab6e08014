"""scalable.yaml: the template works, mistakes name the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scalable.cli.main import app
from scalable.session.kubernetes import KubernetesTarget, pod_resources, worker_command
from scalable.session.manifest import INIT_TEMPLATE, Manifest, ManifestError, load_manifest


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "scalable.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_init_writes_a_valid_manifest_with_a_demeter_group(tmp_path):
    runner = CliRunner()
    target = tmp_path / "scalable.yaml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(target)
    assert [g.tag for g in manifest.worker_groups] == ["demeter"]
    assert manifest.group("demeter").memory == 2 * 1024**3 and manifest.target == "local"
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 2 and "exists" in again.output
    checked = runner.invoke(app, ["session", "check", str(target)])
    assert checked.exit_code == 0 and "group demeter: 1..4 workers" in checked.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": "moon"}, "target: Input should be 'local' or 'kubernetes'"),
        ({"worker_groups": [{"tag": "Demeter"}]}, "worker_groups[0].tag: String should match pattern"),
        ({"worker_groups": [{"tag": "a", "workers": {"min": 5, "max": 2}}]}, "worker_groups[0].workers: Value error, min (5) must be <= max (2)"),
        ({"worker_groups": [{"tag": "a", "memory": "16 parsecs"}]}, "worker_groups[0].memory: Value error, unknown memory suffix 'parsecs'"),
        ({"worker_groups": [{"tag": "a"}, {"tag": "a"}]}, "repeated: a"),
        ({"worker_groups": []}, "worker_groups: List should have at least 1 item"),
        ({"scaling": {"mode": "psychic"}}, "scaling.mode: Input should be 'predictive', 'reactive' or 'off'"),
        ({"scaling": {"scale_up_threshold": 0.2}}, "scale_down_threshold (0.3) must be below scale_up_threshold (0.2)"),
        ({"scaling": {"cooldown": 5}}, "scaling.cooldown: unknown field"),
        ({"scaling": {"worker_startup_seconds": -1}}, "scaling.worker_startup_seconds: Input should be greater than or equal to 0"),
    ],
)
def test_mistakes_name_file_field_and_what_is_allowed(tmp_path, change, message):
    data = yaml.safe_load(INIT_TEMPLATE)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = _write(tmp_path, data)
    with pytest.raises(ManifestError) as error:
        load_manifest(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    result = CliRunner().invoke(app, ["session", "check", str(path)])
    assert result.exit_code == 2


def test_missing_or_broken_files_are_reported(tmp_path):
    with pytest.raises(ManifestError, match="no such file; `scalable init` writes one"):
        load_manifest(tmp_path / "absent.yaml")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(_write(tmp_path, "worker_groups: [\n"))
    with pytest.raises(ManifestError, match="expected a mapping"):
        load_manifest(_write(tmp_path, "- 1\n"))


def test_memory_in_any_unit_and_kubernetes_worker_spec():
    manifest = Manifest.model_validate(
        {"worker_groups": [{"tag": "gcam", "memory": "4G", "cpus": "500m", "threads": 2}], "kubernetes": {"cluster": "sweep"}}
    )
    group = manifest.group("gcam")
    assert group.memory == 4_000_000_000 and group.cpus == 0.5
    assert worker_command(group)[-2:] == ["--resources", "tag-gcam=1000000"]
    assert "--nthreads" in worker_command(group) and "4000000000" in worker_command(group)
    # the pod's limit is exactly the worker's --memory-limit (4G is not a whole MiB)
    assert pod_resources(group) == {"requests": {"cpu": "500m", "memory": "4000000000"}, "limits": {"cpu": "500m", "memory": "4000000000"}}
    KubernetesTarget(manifest)
    with pytest.raises(ValueError, match="kubernetes.cluster"):
        KubernetesTarget(Manifest.model_validate({"worker_groups": [{"tag": "gcam"}]}))


def test_scaler_decision_from_the_command_line():
    result = CliRunner().invoke(app, ["session", "decide", "--queued", "10", "--processing", "2", "--workers", "2", "--max-workers", "6"])
    assert result.exit_code == 0
    assert result.output.startswith("scale_up 2 -> 6 (reactive)")
    bad = CliRunner().invoke(app, ["session", "decide", "--queued", "1", "--workers", "1", "--scale-up-threshold", "0.1"])
    assert bad.exit_code == 2


def test_worker_start_up_for_the_scaler_defaults_by_target():
    from scalable.session.session import ScalableSession

    def startup(target, **scaling):
        manifest = Manifest.model_validate(
            {"worker_groups": [{"tag": "a"}], "kubernetes": {"cluster": "c"}, "scaling": {"cooldown_seconds": 10, **scaling}}
        )
        session = ScalableSession(manifest, target=target, advisor=None)
        return manifest.scaler_config(session.target_name).worker_startup_seconds

    assert startup("local") == 5.0 and startup("kubernetes") == 30.0
    assert startup("local", worker_startup_seconds=1.5) == 1.5
