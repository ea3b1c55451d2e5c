# Kustos: the two commands are `make dev` and `make test`. Both set up what they need
# (virtual environment, control-plane binaries in ~/.cache/kustos) and are safe to rerun.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KUBECONFIG_LOCAL := $(CURDIR)/.cluster/kubeconfig
OPERATOR_LOG := $(CURDIR)/.cluster/logs/operator.log
OPERATOR_PID := $(CURDIR)/.cluster/run/operator.pid
PYTEST_ARGS ?=

ifeq ($(USE_EXISTING_CLUSTER),1)
KUBECONFIG_USE := $(or $(KUBECONFIG),$(HOME)/.kube/config)
else
KUBECONFIG_USE := $(KUBECONFIG_LOCAL)
endif

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml requirements/constraints.txt
	@echo "==> Python environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --progress-bar off -c requirements/constraints.txt \
		-e '.[serve,explain,dev]'
	@touch $@

.PHONY: lock
lock: ## re-resolve the main venv's packages and write requirements/constraints.txt
	@rm -rf $(VENV).lock && $(PYTHON) -m venv $(VENV).lock
	@$(VENV).lock/bin/python -m pip install --quiet --upgrade pip
	@$(VENV).lock/bin/python -m pip install --quiet -e '.[serve,explain,dev]'
	@{ sed -n '1,3p' requirements/constraints.txt; \
	   $(VENV).lock/bin/pip freeze --exclude-editable; } > requirements/constraints.txt.new
	@mv requirements/constraints.txt.new requirements/constraints.txt && rm -rf $(VENV).lock

.PHONY: venv
venv: $(STAMP) ## create the virtual environment with every extra

.PHONY: tools
tools: ## build etcd, the Kubernetes binaries (kubelet, kube-proxy too), kwok, helm, coredns, and the ecosystem the live tests run
	@bash hack/build-tools.sh
	@bash hack/metrics-server.sh build
	@bash hack/prometheus.sh build
	@bash hack/kube-router.sh build
	@bash hack/argocd.sh build
	@bash hack/keda.sh build
	@bash hack/traefik.sh build
	@bash hack/kafka.sh build

.PHONY: host-packages
host-packages: ## the Debian packages of the real node, the image builds, kube-router and Argo CD (apt-get, only what is missing)
	@bash hack/host-packages.sh node images netpol argocd kafka

.PHONY: crds
crds: venv ## regenerate crds/ from the pydantic models
	@$(BIN)/kustos crds --write crds

.PHONY: docs
docs: venv ## regenerate docs/reference/crds.md from the pydantic models
	@$(BIN)/python -m kustos.api.refdoc --write docs/reference/crds.md
	@$(BIN)/python -m kustos.rbac --docs docs/security.md

.PHONY: chart
chart: crds ## regenerate the chart's CRD copy and golden renders, and manifests/install/
	@$(BIN)/python -m kustos.rbac --write charts/kustos/files/rbac-rules.yaml
	@$(BIN)/python manifests/monitoring/gen-monitoring.py
	@$(BIN)/python manifests/argocd/gen-argocd-cm.py
	@PYTHON=$(BIN)/python bash hack/gen-chart.sh
	@PYTHON=$(BIN)/python bash hack/gen-manifests.sh

.PHONY: lint
lint: venv ## ruff and mypy
	@echo "==> ruff"
	@$(BIN)/ruff check operator tests
	@echo "==> mypy"
	@$(BIN)/mypy

.PHONY: cluster
cluster: tools venv host-packages ## start the local control plane (no-op when it runs)
ifeq ($(USE_EXISTING_CLUSTER),1)
	@echo "==> USE_EXISTING_CLUSTER=1: using $(KUBECONFIG_USE)"
else
	@bash hack/cluster.sh up
endif

.PHONY: down
down: ## stop the operator, the model store, the real node and the control plane
	@bash hack/dev-operator.sh stop || true
	@test ! -x $(BIN)/python || $(BIN)/python hack/model_store.py down
	@bash hack/cluster.sh down

.PHONY: dev
dev: cluster images ## real node + images + the chart's operator pod + samples; ends with a prediction
	@echo "==> CRDs"
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl apply --server-side --field-manager=kustos-crds --force-conflicts -f crds/ >/dev/null
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=kustos --timeout=60s >/dev/null
	@KUBECONFIG=$(KUBECONFIG_USE) bash hack/dev-install.sh
	@echo
	@echo "Kustos runs as a pod of the Helm chart in kustos-system. Watch it with:"
	@echo "  export KUBECONFIG=$(KUBECONFIG_USE) PATH=$(CURDIR)/$(BIN):\$$PATH"
	@echo "  kubectl get md -w                 # ModelDeployments"
	@echo "  kubectl describe md iris          # conditions, events"
	@echo "  kubectl logs -n kustos-system deploy/kustos"
	@echo "  kubectl port-forward svc/iris 8080:80   # then: curl localhost:8080/v2/models/iris"
	@echo "Stop everything with: make down"

.PHONY: dev-kwok
dev-kwok: venv tools ## fast mode: kwok only (no container runs), the operator as a local process
	@KUSTOS_REAL_NODE=0 bash hack/cluster.sh up
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl apply --server-side --field-manager=kustos-crds --force-conflicts -f crds/ >/dev/null
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=kustos --timeout=60s >/dev/null
	@KUBECONFIG=$(KUBECONFIG_USE) bash hack/dev-operator.sh start
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/python hack/model_store.py secret -n default | KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl apply -f - >/dev/null
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl apply -f manifests/samples/
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl wait --for=condition=Ready md --all --timeout=120s
	@KUBECONFIG=$(KUBECONFIG_USE) $(BIN)/kubectl get kustos

.PHONY: unit
unit: venv ## unit tests (no cluster)
	@$(BIN)/pytest tests/unit tests/monitoring -q $(PYTEST_ARGS)

.PHONY: test
test: venv tools host-packages lint drift-env images ## lint, unit, image, runtime and integration tests (real node and kwok)
	@echo "==> tests"
	@$(BIN)/pytest tests/unit tests/monitoring tests/images tests/runtimes tests/drift tests/truth tests/registry tests/integration -q -rfE --durations=15 $(PYTEST_ARGS)

.PHONY: drift-env
drift-env: ## the drift sidecar's own venv (alibi-detect needs numpy < 2), in ~/.cache/kustos
	@bash hack/drift-env.sh >/dev/null

.PHONY: bench
bench: venv ## serving benchmark: kustos serve vs MLServer vs a bare baseline
	@bash hack/bench-serving.sh

.PHONY: images
images: venv host-packages ## build the container images without Docker (hack/images.sh; root); CONTAINERD_ADDRESS=... to import
	@bash hack/images.sh build
	@# Into the running node's containerd (cluster.sh up imports them when it starts one).
	@if [ -n "$$CONTAINERD_ADDRESS" ]; then bash hack/images.sh import; \
	 elif [ -S .cluster/node/containerd.sock ]; then bash hack/node.sh images; fi
