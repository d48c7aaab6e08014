"""Issue 15, point 5: ``retrainInterval: 0s`` cannot make the operator train on every check.

Against the local API server with the operator running (training in its process pool): an
AdvisorModel asking for ``retrainInterval: 0s`` and ``newRecordThreshold: 1``, and fresh records
arriving all the while, is trained once in the window where it used to be trained on every
check (14 versions in 45 s before); its ``RetrainInterval`` condition says the spec asks for
less than the operator's minimum and what applies. The version store keeps the champion and
the newest N (tests/unit/advising/test_model_retention.py).

Rerun: ``pytest tests/integration/test_retrain_floor.py -q``
"""

from __future__ import annotations

import asyncio
import time

from scalable.controller.training import MIN_RETRAIN_INTERVAL_S
from tests.integration.harness import condition, create, get, operator_options, running_operator, wait_until, write_history
from tests.integration.test_advisor_model import _phase, advisor_model


async def test_a_zero_retrain_interval_is_clamped_and_reported(kube_api, namespace, tmp_path):
    runs = tmp_path / namespace / "runs"
    write_history(runs, n=60, peak_gib=3.0, spread=0.3)
    await create(kube_api, namespace, advisor_model("eager", retrainInterval="0s", newRecordThreshold=1))
    async with running_operator(operator_options(namespace, tmp_path)):  # checks every 2 s
        model = await wait_until(lambda: _phase(kube_api, namespace, "eager", "Ready"), timeout=180, what="AdvisorModel Ready")
        clamped = condition(model, "RetrainInterval")
        assert clamped["status"] == "False" and clamped["reason"] == "BelowMinimum", clamped
        assert "0s" in clamped["message"] and f"{MIN_RETRAIN_INTERVAL_S:g}s" in clamped["message"]
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline:  # new records keep arriving: each check would retrain
            n += 1
            write_history(runs, n=5, peak_gib=3.0, spread=0.3, start=1.8e9 + n * 1000)
            await asyncio.sleep(2)
        versions = sorted(p.name for p in (tmp_path / namespace / "models" / "eager" / "default").iterdir() if p.name.startswith("v"))
        assert versions == ["v1"], f"trained {len(versions)} times in 20 s with retrainInterval 0s: {versions}"
        model = await get(kube_api, namespace, "AdvisorModel", "eager")
        assert model["status"]["modelVersion"] == "v1"
