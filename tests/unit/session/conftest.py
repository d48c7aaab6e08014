"""Session tests run a real LocalCluster; this writes the scalable.yaml each test needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scalable.session.manifest import INIT_TEMPLATE


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write scalable.yaml from ``scalable init``'s template, with ``changes`` merged in."""

    def write(groups=None, **changes) -> Path:
        data = yaml.safe_load(INIT_TEMPLATE)
        data["telemetry"]["dir"] = str(tmp_path / "runs")
        data["scaling"].update({"poll_interval_seconds": 0.5, "cooldown_seconds": 1, "advisor": "none"})
        if groups is not None:
            data["worker_groups"] = groups
        for section, values in changes.items():
            data[section].update(values)
        path = tmp_path / "scalable.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write
