"""Generate CustomResourceDefinitions from the pydantic models in ``resources``.

pydantic emits JSON Schema; the API server wants a *structural* OpenAPI v3 schema: every
node typed, no ``$ref``, nullability as ``nullable``, no ``title``. This module does that
translation and adds what only a CRD has (names, printer columns, status subresource).
``python -m scalable.controller.crdgen crds/`` rewrites the files; a test keeps them current.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from scalable.controller import resources as r

_KEEP = {
    "type", "properties", "required", "items", "additionalProperties", "enum", "default",
    "description", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "format", "nullable",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = dict(defs[node["$ref"].split("/")[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any], default_objects: bool = False) -> dict[str, Any]:
    """One JSON Schema node as a structural OpenAPI node.

    With ``default_objects``, optional nested objects default to ``{}`` so that the API
    server fills in their own defaults (it only defaults inside objects that exist).
    """
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {non_null} in a structural schema")
        node = {**non_null[0], **node}
        if len(non_null) < len(any_of):
            node["nullable"] = True
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out = {k: v for k, v in node.items() if k in _KEEP or k.startswith("x-kubernetes-")}
    if node.get("default") is None:
        out.pop("default", None)
    if "properties" in out:
        required = set(out.get("required", []))
        out["properties"] = {k: _structural(v, default_objects) for k, v in out["properties"].items()}
        if default_objects:
            for name, prop in out["properties"].items():
                if name not in required and "properties" in prop and "default" not in prop and not prop.get("nullable"):
                    prop["default"] = {}
        if out.get("additionalProperties") is False:
            out.pop("additionalProperties")
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = _structural(out["items"], default_objects)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "type" not in out and "properties" in out:
        out["type"] = "object"
    return out


def openapi_schema(model: type[BaseModel], default_objects: bool = False) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for ``model``."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs), default_objects)


def _crd(kind: str, plural: str, short_names: list[str], spec: type[BaseModel], status: type[BaseModel],
         columns: list[dict[str, str]], spec_required: bool) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec, default_objects=True),
            "status": openapi_schema(status),
        },
    }
    if spec_required:
        root["required"] = ["spec"]
    else:
        root["properties"]["spec"]["default"] = {}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{r.GROUP}"},
        "spec": {
            "group": r.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["scalable", "dask"],
            },
            "versions": [
                {
                    "name": r.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _column(name: str, path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


def custom_resource_definitions() -> dict[str, dict[str, Any]]:
    """File name -> CRD document for every custom resource of the operator."""
    age = _column("Age", ".metadata.creationTimestamp", "date")
    ready = _column("Ready", '.status.conditions[?(@.type=="Ready")].status', description="status of the Ready condition")
    return {
        "advisormodels.yaml": _crd(
            "AdvisorModel", "advisormodels", ["advm"], r.AdvisorModelSpec, r.AdvisorModelStatus,
            [
                _column("Phase", ".status.phase"),
                ready,
                _column("Model", ".spec.modelType", priority=1),
                _column("Version", ".status.modelVersion"),
                _column("Records", ".status.records", "integer"),
                _column("Coverage", ".status.coverage", description="measured held-out coverage"),
                _column("TrainedAt", ".status.trainedAt", "date", description="when training last ran"),
                age,
            ],
            spec_required=False,
        ),
        "scalableworkflows.yaml": _crd(
            "ScalableWorkflow", "scalableworkflows", ["scwf"], r.ScalableWorkflowSpec, r.ScalableWorkflowStatus,
            [
                _column("Cluster", ".spec.clusterRef.name"),
                ready,
                _column("CPU", ".status.cpu", description="recommended cpu of the first worker group"),
                _column("Memory", ".status.memory", description="recommended memory of the first worker group"),
                _column("Confidence", ".status.confidence"),
                _column("Current", ".status.currentWorkers", "integer"),
                _column("Desired", ".status.desiredWorkers", "integer"),
                _column("Mode", ".spec.scaling.mode", priority=1),
                age,
            ],
            spec_required=True,
        ),
    }


def render() -> dict[str, str]:
    """File name -> YAML text, exactly as committed under ``crds/``."""
    header = "# Generated by `make crds` from operator/scalable/controller/resources.py. Do not edit.\n"
    return {
        name: header + yaml.safe_dump(doc, sort_keys=False, width=120)
        for name, doc in custom_resource_definitions().items()
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(path)
