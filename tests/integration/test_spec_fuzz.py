"""Hostile custom resources: the operator's pydantic models and the API server agree.

Hypothesis mutates a valid ScalableWorkflow / AdvisorModel spec (boundaries, wrong types,
unknown fields, bad quantities, duplicate names ...) and asks both judges:

* the API server, with the generated CRD schema and its CEL rules (a dry-run create, so nothing
  is stored: ``dryRun=All``, ``fieldValidation=Strict``), and
* the models in ``scalable.controller.resources`` (JSON, strict), which the operator parses with.

What must hold: every object the API server stores is one the operator can parse (else the
operator would fail on it in a loop), and every object the models accept the API server stores
too, so a refusal comes at ``kubectl apply`` time with a readable message (not later as a
condition). Where the two disagree the test fails and prints the spec.

Rerun: ``pytest tests/integration/test_spec_fuzz.py -q``
"""

from __future__ import annotations

import copy
import json
import secrets

import httpx
import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalable.controller.resources import AdvisorModelSpec, ScalableWorkflowSpec

GV = "scalable.dev/v1alpha1"

_WORKFLOW = {
    "clusterRef": {"name": "sim"},
    "advisorModelRef": {"name": "am"},
    "workerGroups": [{"name": "default", "task": "simulate", "minWorkers": 1, "maxWorkers": 4,
                      "inputFeatures": {"size": "100"},
                      "resourcePolicy": {"mode": "Initial", "minAllowed": {"cpu": "500m", "memory": "1Gi"},
                                         "maxAllowed": {"cpu": "4", "memory": "16Gi"}}}],
    "scaling": {"mode": "Predictive", "scaleUpThreshold": 0.8, "scaleDownThreshold": 0.3, "cooldownSeconds": 60,
                "pollIntervalSeconds": 15, "prometheus": {"url": "http://127.0.0.1:9090", "timeoutSeconds": 5}},
}
_MODEL = {"modelType": "gradient_boosting", "targets": ["memory", "cpus"], "coverage": 0.95, "minHistory": 5,
          "confidenceThreshold": 0.5, "retrainInterval": "1h", "newRecordThreshold": 1000,
          "telemetry": {"workflows": ["wf"], "tasks": [], "maxRecords": 1000}}

_INTS = st.sampled_from([-1, 0, 1, 2, 4, 100, 10_000, 10_001, 86_400, 86_401, 3_600, 3_601, 50_000_000, 50_000_001, 2**31, 2**63])
_FLOATS = st.sampled_from([-0.5, 0.0, 0.001, 0.3, 0.5, 0.8, 0.999, 1.0, 1.5, 10.0, 10.5, 60.0, 61.0])
_WRONG = st.sampled_from([None, "3", "", True, [], {}, 2.5, "x" * 300])
_QUANTITIES = st.sampled_from(["1", "500m", "0.5", "1.5", "1Gi", "16Gi", "1e3", "1E3", "lots", "-1", "+1", "1Ki", "1.5Gi",
                               "0", "100000000000000000000000000000000", "1m", "1.", ".5", "1 Gi", "1gi", "Gi"])
_NAMES = st.sampled_from(["default", "sim", "a", "a.b", "a-b", "Bad_Name", "", "-a", "a-", "x" * 253, "x" * 254, "a..b", "ü"])
_DURATIONS = st.sampled_from(["1h", "30m", "1h30m", "90s", "0s", "1.5h", "soon", "", "1d", "h", "10"])

# path -> values a user (or an attacker) might write there
_WORKFLOW_MUTATIONS = {
    ("clusterRef", "name"): _NAMES | _WRONG,
    ("advisorModelRef",): st.sampled_from([None, {}, {"name": "am"}, {"name": ""}, {"nam": "x"}]),
    ("workerGroups", 0, "name"): _NAMES | _WRONG,
    ("workerGroups", 0, "task"): _NAMES | _WRONG,
    ("workerGroups", 0, "tag"): _NAMES | _WRONG,
    ("workerGroups", 0, "minWorkers"): _INTS | _WRONG,
    ("workerGroups", 0, "maxWorkers"): _INTS | _WRONG,
    ("workerGroups", 0, "inputFeatures"): st.sampled_from([{}, {"a": "1"}, {"a": 1}, {"a": None}, [], {"": "x"}]),
    ("workerGroups", 0, "resourcePolicy", "mode"): st.sampled_from(["Off", "Initial", "Auto", "Sometimes", "off", None]),
    ("workerGroups", 0, "resourcePolicy", "minAllowed", "memory"): _QUANTITIES | _WRONG,
    ("workerGroups", 0, "resourcePolicy", "maxAllowed", "memory"): _QUANTITIES | _WRONG,
    ("workerGroups", 0, "resourcePolicy", "minAllowed", "cpu"): _QUANTITIES | _WRONG,
    ("workerGroups", 0, "resourcePolicy", "maxAllowed", "cpu"): _QUANTITIES | _WRONG,
    ("workerGroups", 0, "resourcePolicy", "containerName"): _NAMES | _WRONG,
    ("workerGroups", 0, "unknown"): st.just(1),
    ("workerGroups",): st.sampled_from(["dup", "empty", "many"]),
    ("scaling", "mode"): st.sampled_from(["Predictive", "Reactive", "Off", "Magic", ""]),
    ("scaling", "scaleUpThreshold"): _FLOATS | _WRONG,
    ("scaling", "scaleDownThreshold"): _FLOATS | _WRONG,
    ("scaling", "cooldownSeconds"): _INTS | _WRONG,
    ("scaling", "pollIntervalSeconds"): _INTS | _WRONG,
    ("scaling", "prometheus", "url"): st.sampled_from(["http://p:9090", "https://p", "ftp://p", "", "p:9090", None, "http://"]),
    ("scaling", "prometheus", "timeoutSeconds"): _FLOATS | _WRONG,
    ("scaling", "prometheus", "queries", "queued"): st.sampled_from(["sum(x)", "", 5, "$cluster $namespace $group"]),
    ("replicas",): st.just(3),
}
_MODEL_MUTATIONS = {
    ("modelType",): st.sampled_from(["gradient_boosting", "random_forest", "quantile_regression", "neural_net", ""]),
    ("targets",): st.sampled_from([[], ["memory"], ["memory", "memory"], ["gpu"], "memory", ["cpus", "duration"]]),
    ("coverage",): _FLOATS | _WRONG,
    ("minHistory",): _INTS | _WRONG,
    ("confidenceThreshold",): _FLOATS | _WRONG,
    ("retrainInterval",): _DURATIONS | _WRONG,
    ("newRecordThreshold",): _INTS | _WRONG,
    ("telemetry", "workflows"): st.sampled_from([[], ["wf"], ["Bad_Name"], [""], "wf", [5]]),
    ("telemetry", "maxRecords"): _INTS | _WRONG,
    ("telemetry", "tasks"): st.sampled_from([[], ["a"], [5], None]),
    ("surprise",): st.just("x"),
}


def _set(doc, path, value):
    if path == ("workerGroups",):
        first = doc["workerGroups"][0]
        doc["workerGroups"] = {"dup": [first, copy.deepcopy(first)], "empty": [],
                               "many": [dict(copy.deepcopy(first), name=f"g{i}") for i in range(65)]}[value]
        return
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return  # an earlier mutation replaced the parent
    if isinstance(node, dict):
        node[path[-1]] = value


def _mutated(base, mutations):
    keys = sorted(mutations, key=repr)
    return st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True).flatmap(
        lambda paths: st.tuples(*[mutations[p] for p in paths]).map(lambda values: _apply(base, paths, values))
    )


def _apply(base, paths, values):
    doc = copy.deepcopy(base)
    for path, value in zip(paths, values):
        _set(doc, path, value)
    return doc


@pytest.fixture(scope="module")
def api(kube_cluster):
    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    user = config["users"][0]["user"]
    cluster = config["clusters"][0]["cluster"]
    with httpx.Client(base_url=cluster["server"], verify=cluster.get("certificate-authority") or False,
                      headers={"Authorization": f"Bearer {user['token']}"}, timeout=30) as client:
        namespace = f"t-spec-fuzz-{secrets.token_hex(3)}"
        client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).raise_for_status()
        try:
            yield client, namespace
        finally:
            client.delete(f"/api/v1/namespaces/{namespace}")


def _api_verdict(api, kind, plural, spec):
    client, namespace = api
    body = {"apiVersion": GV, "kind": kind, "metadata": {"name": "fuzzed"}, "spec": spec}
    r = client.post(f"/apis/{GV}/namespaces/{namespace}/{plural}", params={"dryRun": "All", "fieldValidation": "Strict"},
                    json=body)
    assert r.status_code in (201, 400, 422), f"{r.status_code}: {r.text[:300]}"
    return r.status_code == 201, r.json()


def _without_nulls(value):
    """The API server drops ``null`` fields of a custom resource (they mean "not set")."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _model_verdict(model, spec):
    try:
        model.model_validate_json(json.dumps(_without_nulls(spec)), strict=True)
        return True, ""
    except pydantic.ValidationError as exc:
        return False, str(exc.errors()[0])


def _has_int_beyond_int64(value) -> bool:
    if isinstance(value, dict):
        return any(_has_int_beyond_int64(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_int_beyond_int64(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63


def _judge(api, kind, plural, model, spec):
    stored, answer = _api_verdict(api, kind, plural, spec)
    parsed, why = _model_verdict(model, spec)
    if stored:
        # what the API server stores (with its defaults) must parse: the operator reads exactly that
        model.model_validate_json(json.dumps(answer["spec"]), strict=True)
    if parsed and not stored and _has_int_beyond_int64(spec) and "must be of type integer" in answer.get("message", ""):
        return  # Kubernetes integers are int64; the models leave some counts unbounded (refused at apply time: fine)
    assert stored == parsed, (
        f"API server {'stored' if stored else 'refused'} it, the models {'accept' if parsed else 'refuse'} it\n"
        f"spec: {json.dumps(spec)[:800]}\napi: {answer.get('message', '')[:400]}\nmodels: {why[:400]}"
    )


_SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(spec=_mutated(_WORKFLOW, _WORKFLOW_MUTATIONS))
def test_scalableworkflow_specs_api_server_and_models_agree(api, spec):
    _judge(api, "ScalableWorkflow", "scalableworkflows", ScalableWorkflowSpec, spec)


@_SETTINGS
@given(spec=_mutated(_MODEL, _MODEL_MUTATIONS))
def test_advisormodel_specs_api_server_and_models_agree(api, spec):
    _judge(api, "AdvisorModel", "advisormodels", AdvisorModelSpec, spec)
