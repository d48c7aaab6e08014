# Every target is what CI runs too; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest
export SCALABLE_TESTENV_DIR ?= $(HOME)/.cache/scalable-testenv

.PHONY: help install test test-unit test-integration test-e2e lint crds schemas bench \
	      testenv testenv-up testenv-down demo clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: ## install the package with its test dependencies (editable)
	$(PYTHON) -m pip install -q -e '.[test]'

test: lint test-unit test-integration test-e2e ## run every tier: lint, unit, integration, e2e

test-unit: ## pure-Python unit tests (seconds)
	$(PYTEST) tests/unit -q

test-integration: testenv ## tests against a real kube-apiserver and etcd
	$(PYTEST) tests/integration -q

test-e2e: testenv ## integration plus real Prometheus and real Dask
	$(PYTEST) tests/e2e -q

lint: ## layer contracts (import-linter) and generated files up to date
	lint-imports

crds: ## regenerate crds/ from the custom resource models
	$(PYTHON) -m scalable.controller.crdgen crds

schemas: ## regenerate the telemetry JSON Schemas
	$(PYTHON) -m scalable.telemetry.jsonschema operator/scalable/schemas

bench: ## run the benchmarks and record their figures under benchmarks/results
	$(PYTHON) benchmarks/run_all.py

testenv: ## build (or reuse) the pinned control-plane binaries outside the repo
	hack/testenv-build.sh

testenv-up: testenv ## start etcd, kube-apiserver and kube-controller-manager on loopback
	hack/testenv-up.sh

testenv-down: ## stop the local control plane and remove its data
	hack/testenv-down.sh

clean:
	rm -rf build dist .pytest_cache .hypothesis
