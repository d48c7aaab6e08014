"""The committed CRDs are generated from the models and are structural."""

from pathlib import Path

import pytest
import yaml

from scalable.controller import crdgen
from scalable.controller.resources import ScalableWorkflowSpec

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(crdgen.render()))
def test_committed_crds_are_current(name):
    committed = (REPO / "crds" / name).read_text()
    assert committed == crdgen.render()[name], f"crds/{name} is out of date: run `make crds`"


def _walk(node, path="$"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(crdgen.render()))
def test_every_schema_node_is_typed_and_has_no_refs(name):
    doc = yaml.safe_load(crdgen.render()[name])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{name}: {path} has no type"
        assert not {"$ref", "anyOf", "allOf", "title"} & set(node), f"{name}: {path} is not structural"


def test_query_templates_name_cluster_and_namespace():
    spec = ScalableWorkflowSpec.model_validate({"clusterRef": {"name": "c"}, "workerGroups": [{"name": "default", "task": "t"}]})
    for query in spec.scaling.prometheus.queries.model_dump().values():
        assert "$cluster" in query and "$namespace" in query


def _columns(name):
    doc = yaml.safe_load(crdgen.render()[name])
    return {c["name"]: c for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}


@pytest.mark.parametrize("name", ["advisormodels.yaml", "scalableworkflows.yaml"])
def test_ready_column_reads_the_ready_condition(name):
    ready = _columns(name)["Ready"]
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status' and ready["type"] == "string"


def test_advisor_model_shows_when_it_was_trained():
    columns = _columns("advisormodels.yaml")
    assert columns["TrainedAt"] == {"name": "TrainedAt", "type": "date", "jsonPath": ".status.trainedAt",
                                    "description": "when training last ran"}
    assert list(columns)[:2] == ["Phase", "Ready"] and "Coverage" in columns and list(columns)[-1] == "Age"


def test_short_names_do_not_collide_with_the_trace_format():
    # swf is the Standard Workload Format users import (scalable telemetry import --format swf)
    names = {n: yaml.safe_load(t)["spec"]["names"]["shortNames"] for n, t in crdgen.render().items()}
    assert names == {"advisormodels.yaml": ["advm"], "scalableworkflows.yaml": ["scwf"]}
