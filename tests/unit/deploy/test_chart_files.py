"""The chart's files against their sources, without helm: CRDs identical to crds/, every value
documented, the README table current, the schema knowing every value, the image and the chart
agreeing on the user and the entry point."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import yaml

from tests.support.testenv import REPO_ROOT

CHART = REPO_ROOT / "charts" / "scalable-operator"


def _chart_sync():
    spec = importlib.util.spec_from_file_location("chart_sync", REPO_ROOT / "hack" / "chart_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_sync"] = module
    spec.loader.exec_module(module)
    return module


chart_sync = _chart_sync()


def test_chart_crds_are_the_repository_crds_as_templates():
    """templates/crds/ is generated from crds/ (`make chart-crds`), and the chart has no crds/
    directory: Helm would install both and fail on the second, and would never upgrade crds/."""
    repo = sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in chart_sync.CRD_TEMPLATES.glob("*.yaml"))
    assert repo and chart == repo, "run `make chart-crds`"
    assert chart_sync.stale(chart_sync.expected_crds()) == [], "run `make chart-crds`"
    assert not (CHART / "crds").exists(), "Helm installs crds/ once and never upgrades it: the CRDs are templates"


def _without_template_lines(text: str) -> dict:
    kept = [l for l in text.splitlines() if not l.strip().startswith("{{") and not l.strip().startswith("#")]
    return yaml.safe_load("\n".join(kept))


def test_a_crd_template_is_the_crd_behind_crds_install_and_kept_on_uninstall():
    for source in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        text = (chart_sync.CRD_TEMPLATES / source.name).read_text()
        lines = [l for l in text.splitlines() if not l.startswith("{{- /*")]
        assert lines[0] == "{{- if .Values.crds.install }}" and lines[-1] == "{{- end }}"
        rendered = _without_template_lines(text)
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        original = yaml.safe_load(source.read_text())
        assert rendered["spec"] == original["spec"] and rendered["metadata"]["name"] == original["metadata"]["name"]


def test_a_crd_description_that_helm_would_read_as_a_template_is_refused():
    crd = "apiVersion: v1\nmetadata:\n  name: x\nspec:\n  description: use {{ .Values }}\n"
    with pytest.raises(SystemExit, match="template"):
        chart_sync.crd_template("x.yaml", crd)


def test_every_value_is_documented_and_the_readme_table_is_current():
    values, undocumented = chart_sync.parse_values((CHART / "values.yaml").read_text())
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    assert len(values) > 40
    assert chart_sync.stale(chart_sync.expected_docs()) == [], "run `make chart-docs`"


def test_the_docs_parser_finds_an_undocumented_value():
    text = "a:\n  # -- documented\n  b: 1\n  c: 2\n# -- a block\nd:\n  e: 1\n"
    values, undocumented = chart_sync.parse_values(text)
    assert [v.key for v in values] == ["a.b", "d"] and undocumented == ["a.c"]


def _leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_the_schema_describes_every_value_and_forbids_unknown_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    for path in _leaf_paths(values):
        node = schema
        for part in path.split("."):
            props = node.get("properties")
            if props is None:  # a free-form block (resources, securityContext, ...)
                break
            assert part in props, f"values.schema.json does not describe {path}"
            node = props[part]


def test_the_image_runs_the_entry_point_as_the_chart_user_on_a_read_only_root():
    dockerfile = (REPO_ROOT / "operator" / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(froms) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", dockerfile, re.M), "pinned base"
    assert "USER 65532:65532" in dockerfile
    assert values["podSecurityContext"]["runAsUser"] == 65532 == values["podSecurityContext"]["runAsGroup"]
    assert 'ENTRYPOINT ["scalable"]' in dockerfile and 'CMD ["operator", "run"' in dockerfile
    installs = re.findall(r"pip install (.+?) \\$", dockerfile, re.M)
    assert installs == ["'.[operator]'"], f"the core and the operator extra only (runtime, no test extra): {installs}"
    for var in ("HOME=/tmp", "MPLCONFIGDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"):
        assert var in dockerfile, f"{var}: the root filesystem is read-only"
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!operator/scalable/"]


def test_the_operator_ports_and_paths_are_the_chart_defaults():
    """The chart passes --metrics-port/--ingest-port explicitly; its defaults match the CLI's."""
    import inspect

    from scalable.cli.operator import run

    defaults = {name: p.default.default for name, p in inspect.signature(run).parameters.items()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["service"]["metricsPort"] == defaults["metrics_port"] == 8080
    assert values["service"]["ingestPort"] == defaults["ingest_port"] == 8081
    assert values["telemetry"]["mountPath"] == str(defaults["telemetry_path"])
    assert values["operator"]["schedulerUrl"] == defaults["scheduler_url"]


def test_the_crd_reference_is_generated_from_the_crds():
    spec = importlib.util.spec_from_file_location("crd_reference", REPO_ROOT / "hack" / "crd_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run `make crd-docs`"
    text = module.render()
    for field in ("`spec.workerGroups[].resourcePolicy.mode`", "`spec.scaling.cooldownSeconds`", "`spec.modelType`"):
        assert field in text
