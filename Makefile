# Every target is what CI runs too; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest
export SCALABLE_TESTENV_DIR ?= $(HOME)/.cache/scalable-testenv

.PHONY: help install test test-unit test-integration test-e2e test-demo lint crds schemas bench \
	      testenv testenv-up testenv-down images demo setup clean \
	      chart-crds chart-docs crd-docs manifests image kind-up kind-load deploy-kind e2e-kind kind-down

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: ## install the package, the operator and ml extras and the test dependencies (editable)
	$(PYTHON) -m pip install -q -e '.[operator,ml,test]'

test: setup lint test-unit test-integration test-e2e test-demo ## on a fresh machine: set up, then run every tier (lint, unit, integration, e2e, demo)

setup: install testenv ## everything the tests and the demo need: system packages, Python packages, pinned binaries
	hack/install-system-deps.sh

test-unit: ## pure-Python unit tests (seconds)
	$(PYTEST) tests/unit -q

test-integration: testenv ## tests against a real kube-apiserver and etcd
	$(PYTEST) tests/integration -q

test-e2e: testenv images ## on the real node: dask-kubernetes' controller, real pods, Prometheus, the operator in-process and Helm-installed
	$(PYTEST) tests/e2e -q

test-demo: testenv images ## hack/demo.py end to end on the real node (its own pytest session: one node per machine)
	$(PYTEST) tests/demo -q

lint: ## layer contracts (import-linter) and generated files up to date
	lint-imports

crds: testenv ## regenerate crds/ from the custom resource models, and everything made from them (chart, deploy/, docs)
	$(PYTHON) -m scalable.controller.crdgen crds
	$(PYTHON) hack/chart_sync.py all
	$(PYTHON) hack/crd_reference.py

schemas: ## regenerate the telemetry JSON Schemas
	$(PYTHON) -m scalable.telemetry.jsonschema operator/scalable/schemas

bench: ## run the benchmarks and record their figures under benchmarks/results
	$(PYTHON) benchmarks/run_all.py

testenv: ## build (or reuse) the pinned control-plane binaries outside the repo
	hack/testenv-build.sh

images: ## build (or reuse) the test node's container images as OCI archives outside the repo (no registry)
	PYTHON=$(PYTHON) hack/images-build.sh

testenv-up: testenv images ## start the control plane and one real node (kubelet, containerd, kube-proxy, CoreDNS)
	hack/testenv-up.sh

testenv-down: ## stop the local control plane and remove its data
	hack/testenv-down.sh

# --- the chart, plain manifests, image and kind (issue 6) ---------------------------------
# helm: the one on PATH, else the pinned one `make testenv` builds.
HELM ?= $(shell command -v helm 2>/dev/null || echo $(SCALABLE_TESTENV_DIR)/bin/helm)
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= scalable
KIND_KUBECONFIG ?= $(CURDIR)/_output/kind.kubeconfig
IMAGE ?= scalable-operator:dev
# The namespace the in-cluster operator watches on kind (the examples go there); test
# namespaces are left to the operators the tests start themselves.
KIND_DEMO_NAMESPACE ?= scalable-demo

chart-crds: ## crds/ as chart templates behind crds.install (charts/scalable-operator/templates/crds), so helm upgrade upgrades them; a test keeps them identical
	$(PYTHON) hack/chart_sync.py crds

crd-docs: ## regenerate docs/crd-reference.md (the custom resources' fields) from crds/
	$(PYTHON) hack/crd_reference.py

chart-docs: ## regenerate the chart README's values table from the `# --` comments in values.yaml
	$(PYTHON) hack/chart_sync.py docs

manifests: testenv ## regenerate chart CRDs, values table and deploy/ (kustomize base) from the chart
	$(PYTHON) hack/chart_sync.py all

image: ## build the operator image from operator/Dockerfile (needs a Docker engine)
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE) .

kind-up: ## create the kind cluster of kind-config.yaml (needs Docker and kind)
	@mkdir -p $(dir $(KIND_KUBECONFIG))
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(KIND) get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	@echo "export KUBECONFIG=$(KIND_KUBECONFIG)"

kind-load: image ## build the image and load it into the kind cluster's nodes
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)

deploy-kind: kind-up kind-load ## Helm-install the dask-kubernetes operator, Prometheus and ours into kind
	$(HELM) --kubeconfig $(KIND_KUBECONFIG) upgrade --install dask-kubernetes-operator dask-kubernetes-operator \
	  --repo https://helm.dask.org --namespace dask-operator --create-namespace --wait
	$(HELM) --kubeconfig $(KIND_KUBECONFIG) upgrade --install prometheus prometheus \
	  --repo https://prometheus-community.github.io/helm-charts --namespace monitoring --create-namespace \
	  --set alertmanager.enabled=false --set prometheus-pushgateway.enabled=false \
	  --set kube-state-metrics.enabled=false --set prometheus-node-exporter.enabled=false --wait
	kubectl --kubeconfig $(KIND_KUBECONFIG) create namespace $(KIND_DEMO_NAMESPACE) --dry-run=client -o yaml \
	  | kubectl --kubeconfig $(KIND_KUBECONFIG) apply -f -
	$(HELM) --kubeconfig $(KIND_KUBECONFIG) upgrade --install scalable-operator charts/scalable-operator \
	  --namespace scalable-system --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(IMAGE))) --set image.tag=$(lastword $(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --set-json 'watchNamespaces=["$(KIND_DEMO_NAMESPACE)"]' \
	  --set operator.prometheusUrl=http://prometheus-server.monitoring.svc --wait
	@echo "next: kubectl --kubeconfig $(KIND_KUBECONFIG) -n $(KIND_DEMO_NAMESPACE) apply -f examples/"

e2e-kind: testenv deploy-kind ## run the integration and e2e suites against the kind cluster
	SCALABLE_TEST_KUBECONFIG=$(KIND_KUBECONFIG) $(PYTEST) tests/integration tests/e2e -q

demo: setup images ## on a fresh machine: control plane and a real node, dask-kubernetes, Prometheus, the operator, a sample workflow; plot in _output/demo
	$(PYTHON) hack/demo.py

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

clean:
	rm -rf build dist .pytest_cache .hypothesis
