# hapair — run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
TESTBED := e2e/testbed/testbed.sh
# Tests that need a control plane read these; `make test` starts the testbed.
TESTBED_KUBECONFIG = $(shell $(TESTBED) kubeconfig)
TESTBED_BIN = $(shell e2e/testbed/cachedir.sh)

##@ General

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build the hapair and kubectl-hapair binaries (debug).
	$(CARGO) build --bins

CRD_FILE := crds/hapair.dev_highavailabilitypairs.yaml
GENERATED := target/generated

.PHONY: generate
generate: generated-files ## Write the generated CRD to crds/ and the API reference into README.md.
	cp $(GENERATED)/crd.yaml $(CRD_FILE)
	cp $(GENERATED)/README.md README.md

.PHONY: check-generated
check-generated: generated-files ## Fail when crds/ or the README's API reference differ from the code.
	@diff -u $(CRD_FILE) $(GENERATED)/crd.yaml && diff -u README.md $(GENERATED)/README.md \
	  || { echo "generated files are stale: run 'make generate' and commit the result" >&2; exit 1; }

.PHONY: generated-files
generated-files:
	@mkdir -p $(GENERATED)
	@grep -q "<!-- api-reference:start -->" README.md && grep -q "<!-- api-reference:end -->" README.md \
	  || { echo "README.md lacks the api-reference markers" >&2; exit 1; }
	@$(CARGO) run -q --bin hapair -- crd > $(GENERATED)/crd.yaml
	@$(CARGO) run -q --bin hapair -- crd --reference > $(GENERATED)/reference.md
	@awk -v ref=$(GENERATED)/reference.md \
	  '/<!-- api-reference:end -->/ { skip = 0 } \
	   !skip { print } \
	   /<!-- api-reference:start -->/ { while ((getline line < ref) > 0) print line; skip = 1 }' \
	  README.md > $(GENERATED)/README.md

.PHONY: fmt
fmt: ## Format the code.
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

##@ Tests

.PHONY: test
test: check-generated unit testbed-up integration ## Everything: generated files, unit tests, API tests on the testbed.

.PHONY: unit
unit: ## Unit tests (no cluster).
	$(CARGO) test --lib --bins

.PHONY: integration
integration: ## Tests against the running testbed's real API server.
	RUST_BACKTRACE=0 HAPAIR_TESTBED_KUBECONFIG=$(TESTBED_KUBECONFIG) HAPAIR_TESTBED_BIN=$(TESTBED_BIN) \
	  $(CARGO) test --test '*' -- --test-threads 4

##@ Testbed (real etcd, kube-apiserver, kube-controller-manager on loopback)

.PHONY: testbed-build
testbed-build: ## Build (or reuse) the pinned control-plane binaries.
	e2e/testbed/build.sh >/dev/null

.PHONY: testbed-up
testbed-up: ## Start the testbed (no-op when running); prints the kubeconfig path.
	@$(TESTBED) up

.PHONY: testbed-down
testbed-down: ## Stop the testbed and remove its state.
	@$(TESTBED) down

##@ Running hapair

.PHONY: demo
demo: ## Run hapair on a local control plane (arrives with the operator).
	@echo "make demo: the operator is not built yet; 'make test' exercises the API on the testbed" >&2; exit 1
