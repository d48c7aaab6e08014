"""A model file on the volume corrupted or replaced by a hostile one: refused, the operator falls back.

The operator's AdvisorProvider (what every ScalableWorkflow sizes with) loads the AdvisorModel's
champion from the volume. Each hostile variant below, including a pickle whose unpickling would
run code and a skops file holding a callable, with the metadata's digest updated to match (an
attacker with write access to the volume), is refused: no code runs, the workflow gets the
percentile advisor, and the ModelReady condition says ModelLoadFailed and why.
(tests/unit/advising/test_model_store.py covers the model store alone.)

Rerun: ``pytest tests/unit/controller/test_hostile_model.py -q``
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle

import pytest

from scalable.advising.model_store import MODEL_FILE
from scalable.controller.resources import ScalableWorkflowSpec
from scalable.controller.storage import TelemetryRoot
from scalable.controller.training import AdvisorProvider, read_champion, train_job
from tests.integration.harness import write_history

SPEC = ScalableWorkflowSpec.model_validate({"clusterRef": {"name": "sim"}, "advisorModelRef": {"name": "am"},
                                            "workerGroups": [{"name": "default", "task": "simulate"}]})

pytestmark = pytest.mark.slow


class _Kube:
    async def get(self, kind, namespace, name):
        return {"metadata": {"name": name}, "status": {"phase": "Ready"}}


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume")
    tr = TelemetryRoot(root)
    write_history(tr.runs_dir("team-a", create=True), n=60)
    result = train_job({"runs_dir": str(tr.runs_dir("team-a")), "model_dir": str(tr.model_dir("team-a", "am", create=True)),
                        "min_history": 5})
    assert result["outcome"] == "promoted"
    return root


def _version_dir(root):
    model_dir = TelemetryRoot(root).model_dir("team-a", "am")
    return model_dir / "default" / read_champion(model_dir)["version"]


def _matching_digest(version_dir):
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256((version_dir / MODEL_FILE).read_bytes()).hexdigest()
    (version_dir / "metadata.json").write_text(json.dumps(meta))


def _flip_a_byte(version_dir, marker):
    data = bytearray((version_dir / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version_dir / MODEL_FILE).write_bytes(bytes(data))


def _pickle_payload(version_dir, marker):
    (version_dir / MODEL_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    _matching_digest(version_dir)


def _skops_callable(version_dir, marker):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump({"models": {"evil": FunctionTransformer(func=os.system, kw_args={"command": f"touch {marker}"})}},
             version_dir / MODEL_FILE)
    _matching_digest(version_dir)


def _truncated(version_dir, marker):
    data = (version_dir / MODEL_FILE).read_bytes()
    (version_dir / MODEL_FILE).write_bytes(data[: len(data) // 3])


def _metadata_garbage(version_dir, marker):
    (version_dir / "metadata.json").write_bytes(b"\x00{{{")


@pytest.mark.parametrize("tamper", [_flip_a_byte, _pickle_payload, _skops_callable, _truncated, _metadata_garbage])
def test_a_hostile_or_corrupt_model_is_refused_and_sizing_falls_back(tmp_path, trained, tamper):
    import shutil

    root = tmp_path / "volume"
    shutil.copytree(trained, root)
    provider = AdvisorProvider(_Kube(), TelemetryRoot(root))
    good = asyncio.run(provider.for_workflow("team-a", SPEC))
    assert good.condition["reason"] == "ModelLoaded" and good.learned is not None  # the untouched model works

    marker = tmp_path / "pwned"
    tamper(_version_dir(root), marker)
    provider = AdvisorProvider(_Kube(), TelemetryRoot(root))  # a restarted operator: nothing cached
    choice = asyncio.run(provider.for_workflow("team-a", SPEC))
    assert not marker.exists(), "loading the model ran code"
    assert choice.learned is None and choice.version is None
    assert choice.condition["status"] is False and choice.condition["reason"] == "ModelLoadFailed", choice.condition
    assert "percentile" in choice.condition["message"]
    rec = choice.advisor.recommend(task="simulate")
    assert rec.method == "percentile" and rec["memory"]
