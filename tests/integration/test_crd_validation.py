"""The API server itself refuses invalid AdvisorModels and ScalableWorkflows, readably.

Every rule here is enforced by the generated CRD schema (types, enums, ranges, patterns) or its
CEL rules, so ``kubectl apply`` fails before the operator ever sees the object. Each case
checks the HTTP status and that the message names the problem in words a user understands.
"""

from __future__ import annotations

import copy
import json

import pytest

GROUP_VERSION = "scalable.dev/v1alpha1"


def workflow(**spec_changes):
    spec = {
        "clusterRef": {"name": "sim"},
        "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}],
    }
    spec.update(spec_changes)
    return {"apiVersion": GROUP_VERSION, "kind": "ScalableWorkflow", "metadata": {"name": "wf"}, "spec": spec}


def group(**changes):
    g = {"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4}
    g.update(changes)
    return g


def policy(**changes):
    return group(resourcePolicy=changes)


INVALID_WORKFLOWS = [
    ("min above max workers", workflow(workerGroups=[group(minWorkers=5, maxWorkers=2)]), "minWorkers must be <= maxWorkers"),
    ("minAllowed memory above max", workflow(workerGroups=[policy(minAllowed={"memory": "8Gi"}, maxAllowed={"memory": "4Gi"})]),
     "minAllowed.memory must be <= maxAllowed.memory"),
    ("minAllowed cpu above max", workflow(workerGroups=[policy(minAllowed={"cpu": "4"}, maxAllowed={"cpu": "500m"})]),
     "minAllowed.cpu must be <= maxAllowed.cpu"),
    ("thresholds inverted", workflow(scaling={"scaleUpThreshold": 0.3, "scaleDownThreshold": 0.8}),
     "scaleDownThreshold must be below scaleUpThreshold"),
    ("thresholds equal", workflow(scaling={"scaleUpThreshold": 0.5, "scaleDownThreshold": 0.5}),
     "scaleDownThreshold must be below scaleUpThreshold"),
    ("zero scale-down threshold", workflow(scaling={"scaleDownThreshold": 0}), "scaleDownThreshold"),
    ("unknown resource mode", workflow(workerGroups=[policy(mode="Sometimes")]), 'Unsupported value: "Sometimes"'),
    ("unknown scaling mode", workflow(scaling={"mode": "Magic"}), 'Unsupported value: "Magic"'),
    ("duplicate group names", workflow(workerGroups=[group(), group()]), "workerGroups names must be unique"),
    ("no clusterRef", {**workflow(), "spec": {"workerGroups": [group()]}}, "spec.clusterRef: Required value"),
    ("no worker groups", workflow(workerGroups=[]), "should have at least 1 items"),
    ("negative minWorkers", workflow(workerGroups=[group(minWorkers=-1)]), "should be greater than or equal to 0"),
    ("cooldown above a day", workflow(scaling={"cooldownSeconds": 90000}), "cooldownSeconds"),
    ("zero poll interval", workflow(scaling={"pollIntervalSeconds": 0}), "pollIntervalSeconds"),
    ("memory not a quantity", workflow(workerGroups=[policy(maxAllowed={"memory": "lots"})]), "maxAllowed.memory"),
    ("prometheus url scheme", workflow(scaling={"prometheus": {"url": "ftp://prom:9090"}}), "spec.scaling.prometheus.url"),
    ("zero prometheus timeout", workflow(scaling={"prometheus": {"timeoutSeconds": 0}}), "timeoutSeconds"),
    ("bad group name", workflow(workerGroups=[group(name="Bad_Name")]), "workerGroups[0].name"),
    ("empty task", workflow(workerGroups=[group(task="")]), "workerGroups[0].task"),
    ("unknown field", workflow(replicas=3), 'unknown field "spec.replicas"'),
]


def advisor_model(**spec):
    return {"apiVersion": GROUP_VERSION, "kind": "AdvisorModel", "metadata": {"name": "am"}, "spec": spec}


INVALID_MODELS = [
    ("unknown model type", advisor_model(modelType="neural_net"), 'Unsupported value: "neural_net"'),
    ("coverage above 0.999", advisor_model(coverage=1.5), "spec.coverage"),
    ("coverage below 0.5", advisor_model(coverage=0.1), "spec.coverage"),
    ("no targets", advisor_model(targets=[]), "should have at least 1 items"),
    ("duplicate targets", advisor_model(targets=["memory", "memory"]), "Duplicate value"),
    ("unknown target", advisor_model(targets=["gpu"]), 'Unsupported value: "gpu"'),
    ("unreadable retrain interval", advisor_model(retrainInterval="soon"), "spec.retrainInterval"),
    ("zero min history", advisor_model(minHistory=0), "spec.minHistory"),
    ("confidence threshold above 1", advisor_model(confidenceThreshold=2), "spec.confidenceThreshold"),
    ("zero new-record threshold", advisor_model(newRecordThreshold=0), "spec.newRecordThreshold"),
]


async def _create(api, namespace, obj, plural):
    async with api.call_api(
        "POST", version=GROUP_VERSION, namespace=namespace, url=plural, params={"fieldValidation": "Strict"},
        content=json.dumps(obj), headers={"Content-Type": "application/json"}, raise_for_status=False,
    ) as response:
        return response.status_code, response.json()


@pytest.mark.parametrize("case, obj, message", INVALID_WORKFLOWS, ids=[c[0] for c in INVALID_WORKFLOWS])
async def test_invalid_scalableworkflow_is_refused(kube_api, namespace, case, obj, message):
    status, body = await _create(kube_api, namespace, copy.deepcopy(obj), "scalableworkflows")
    assert status in (400, 422), f"{case}: accepted ({status}) but should be refused"
    assert message in body["message"], f"{case}: message does not explain: {body['message']}"


@pytest.mark.parametrize("case, obj, message", INVALID_MODELS, ids=[c[0] for c in INVALID_MODELS])
async def test_invalid_advisormodel_is_refused(kube_api, namespace, case, obj, message):
    status, body = await _create(kube_api, namespace, copy.deepcopy(obj), "advisormodels")
    assert status in (400, 422), f"{case}: accepted ({status}) but should be refused"
    assert message in body["message"], f"{case}: message does not explain: {body['message']}"


async def test_valid_objects_are_accepted_and_defaulted(kube_api, namespace):
    status, body = await _create(kube_api, namespace, workflow(), "scalableworkflows")
    assert status == 201, body
    spec = body["spec"]
    assert spec["scaling"]["mode"] == "Predictive" and spec["scaling"]["cooldownSeconds"] == 60
    assert spec["workerGroups"][0]["resourcePolicy"]["mode"] == "Initial"
    assert "$cluster" in spec["scaling"]["prometheus"]["queries"]["queued"]
    status, body = await _create(kube_api, namespace, advisor_model(), "advisormodels")
    assert status == 201, body
    assert body["spec"]["modelType"] == "gradient_boosting" and body["spec"]["coverage"] == 0.95


async def _table_columns(api, namespace, plural):
    async with api.call_api(
        "GET", version=GROUP_VERSION, namespace=namespace, url=plural,
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ) as response:
        return [c["name"] for c in response.json()["columnDefinitions"]]


async def _table(api, namespace, plural):
    async with api.call_api(
        "GET", version=GROUP_VERSION, namespace=namespace, url=plural,
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ) as response:
        table = response.json()
    names = [c["name"] for c in table["columnDefinitions"]]
    return [dict(zip(names, row["cells"])) for row in table["rows"]]


async def _patch_status(api, namespace, plural, name, status):
    async with api.call_api(
        "PATCH", version=GROUP_VERSION, namespace=namespace, url=f"{plural}/{name}/status",
        content=json.dumps({"status": status}), headers={"Content-Type": "application/merge-patch+json"},
    ) as response:
        return response.json()


async def test_ready_and_trained_at_columns_show_the_status(kube_api, namespace):
    """What `kubectl get` prints, as the API server renders it: the Ready condition's status
    and when the model was trained (microsecond RFC 3339, as the operator writes it)."""
    from scalable.controller.timestamps import precise_time

    await _create(kube_api, namespace, workflow(), "scalableworkflows")
    await _create(kube_api, namespace, advisor_model(), "advisormodels")
    conditions = [{"type": "Sized", "status": "True", "reason": "Sized"},
                  {"type": "Ready", "status": "False", "reason": "ClusterNotFound", "message": "no DaskCluster 'sim'"}]
    await _patch_status(kube_api, namespace, "scalableworkflows", "wf", {"conditions": conditions})
    [row] = await _table(kube_api, namespace, "scalableworkflows")
    assert row["Ready"] == "False" and row["Cluster"] == "sim", row
    import time

    await _patch_status(kube_api, namespace, "advisormodels", "am", {
        "phase": "Ready", "trainedAt": precise_time(time.time() - 7200),
        "conditions": [{"type": "Trained", "status": "False", "reason": "InsufficientData"},
                       {"type": "Ready", "status": "True", "reason": "ChampionServing"}]})
    [row] = await _table(kube_api, namespace, "advisormodels")
    assert row["Ready"] == "True" and row["Phase"] == "Ready", row
    assert row["TrainedAt"] in ("120m", "2h0m", "2h"), row  # a date column is shown as an age


async def test_printer_columns_and_short_names(kube_api, namespace):
    await _create(kube_api, namespace, workflow(), "scalableworkflows")
    await _create(kube_api, namespace, advisor_model(), "advisormodels")
    columns = await _table_columns(kube_api, namespace, "scalableworkflows")
    for name in ("Name", "Cluster", "Ready", "CPU", "Memory", "Confidence", "Current", "Desired", "Age"):
        assert name in columns
    columns = await _table_columns(kube_api, namespace, "advisormodels")
    for name in ("Name", "Phase", "Ready", "Version", "Records", "Coverage", "TrainedAt", "Age"):
        assert name in columns
    async with kube_api.call_api("GET", version=GROUP_VERSION, base="/apis", url="") as response:
        resources = {r["name"]: r for r in response.json()["resources"]}
    # not swf: that is the trace format users import (scalable telemetry import --format swf)
    assert resources["scalableworkflows"]["shortNames"] == ["scwf"]
    assert "advm" in resources["advisormodels"]["shortNames"]
    assert "scalableworkflows/status" in resources
