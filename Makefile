# hapair — run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Every test build enables the test-only fault hooks (one build serves all
# test targets); `make build`, `make image` and releases never do.
TEST_FEATURES = --features fault-injection
TESTBED := e2e/testbed/testbed.sh
# Tests that need a control plane read these; `make test` starts the testbed.
TESTBED_KUBECONFIG = $(shell $(TESTBED) kubeconfig)
TESTBED_BIN = $(shell e2e/testbed/cachedir.sh)

##@ General

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build the hapair and kubectl-hapair binaries (debug).
	$(CARGO) build --bins

CRD_FILE := crds/hapair.dev_highavailabilitypairs.yaml
GENERATED := target/generated

.PHONY: generate
generate: generated-files ## Write the generated CRD (crds/, the chart), the API reference (README.md) and deploy/.
	cp $(GENERATED)/crd.yaml $(CRD_FILE)
	cp $(GENERATED)/crd.yaml charts/hapair/$(CRD_FILE)
	cp $(GENERATED)/README.md README.md
	cp -r $(GENERATED)/deploy/. deploy/

.PHONY: check-generated
check-generated: generated-files ## Fail when crds/, the chart's CRD, deploy/ or the README's API reference differ from their sources.
	@diff -u $(CRD_FILE) $(GENERATED)/crd.yaml && diff -u charts/hapair/$(CRD_FILE) $(GENERATED)/crd.yaml \
	  && diff -u README.md $(GENERATED)/README.md \
	  && diff -u deploy/base/crd.yaml $(GENERATED)/deploy/base/crd.yaml \
	  && diff -u deploy/base/hapair.yaml $(GENERATED)/deploy/base/hapair.yaml \
	  && diff -u deploy/overlays/monitoring/monitoring.yaml $(GENERATED)/deploy/overlays/monitoring/monitoring.yaml \
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
	@e2e/tools/build.sh >/dev/null
	@rm -rf $(GENERATED)/deploy && deploy/render.sh $$(e2e/tools/build.sh --dir)/helm $(GENERATED)/deploy $(GENERATED)/crd.yaml

.PHONY: fmt
fmt: ## Format the code.
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets $(TEST_FEATURES) -- -D warnings

##@ Tests

# The fastest e2e scenarios, run by `make test`; `make e2e` runs them all.
E2E_FAST := bootstraps killing_the_active a_confirmed_failure a_failover_under_writes an_active_cut_off the_plugin_shows files_written a_live_agent \
	switchovers_under_writes a_former_active a_resync_request a_split_brain_is_repaired \
	a_pair_the_operator_cannot_read a_deleted_pair_leaves a_hand_edited a_deleted_lease application_containers_hold \
	the_member_a_forced the_operator_leader an_application_whose hand_edits a_quarantine_past after_a_partition_the_default after_a_shorter \
	a_deleted_pair_keeps a_filling_volume a_member_whose_claim a_pair_runs_one_member a_primary_restarting a_secondary_restarting data_restored certificates_are_renewed \
	the_ca_rotates the_health_monitor_page alerts_reach_alertmanager

.PHONY: test
test: check-generated unit fuzz-brief chart image-check testbed-up integration chart-cluster e2e-fast e2e-nodes chaos-brief ## Generated files, unit tests, a brief fuzz, chart and image checks, API tests, the fastest e2e scenarios, the node faults and one chaos round on the testbed.

.PHONY: unit
unit: ## Unit tests (no cluster).
	$(CARGO) test $(TEST_FEATURES) --lib --bins

TESTBED_ENV = RUST_BACKTRACE=0 HAPAIR_TESTBED_KUBECONFIG=$(TESTBED_KUBECONFIG) HAPAIR_TESTBED_BIN=$(TESTBED_BIN) \
  HAPAIR_TESTBED_KUBE_VERSION=$(shell e2e/testbed/version.sh) HAPAIR_IMAGE_REF=$(IMAGE_REPO):$(IMAGE_TAG)

.PHONY: integration
integration: ## API tests against the running testbed's real API server.
	$(TESTBED_ENV) $(CARGO) test $(TEST_FEATURES) --test api_admission -- --test-threads 4

# The oldest Kubernetes hapair supports: its own pinned module, a control
# plane without nodes in a state directory of its own.
COMPAT_MODULE := e2e/testbed/compat
COMPAT_DIR := target/testbed-compat
COMPAT_ENV = HAPAIR_TESTBED_MODULE=$(COMPAT_MODULE) HAPAIR_TESTBED_NODES=0 HAPAIR_TESTBED_DIR=$(CURDIR)/$(COMPAT_DIR)

.PHONY: test-compat
test-compat: ## The admission and API tests on the oldest supported Kubernetes (built from its pinned module on first use, cached). Stops the testbed: one runs per machine.
	$(TESTBED) down
	$(COMPAT_ENV) $(TESTBED) up >/dev/null
	RUST_BACKTRACE=0 HAPAIR_TESTBED_KUBECONFIG=$(CURDIR)/$(COMPAT_DIR)/kubeconfig \
	  HAPAIR_TESTBED_BIN=$$($(COMPAT_ENV) e2e/testbed/cachedir.sh) \
	  HAPAIR_TESTBED_KUBE_VERSION=$$($(COMPAT_ENV) e2e/testbed/version.sh) \
	  $(CARGO) test $(TEST_FEATURES) --test api_admission -- --test-threads 4; \
	  rc=$$?; $(COMPAT_ENV) $(TESTBED) down; exit $$rc

.PHONY: e2e-fast
e2e-fast: testbed-up
	$(TESTBED_ENV) HAPAIR_ROTATIONS=1 HAPAIR_ALERTS_QUIET_SECONDS=60 $(CARGO) test $(TEST_FEATURES) --test failover --test operations --test sync --test operator --test lifecycle --test scenarios --test certificates --test ui --test leader --test alerts -- --test-threads 2 $(E2E_FAST)

.PHONY: ui-screenshot
ui-screenshot: testbed-up ## The README's picture of the Health Monitor page, taken by its browser test (docs/health-monitor.png).
	$(TESTBED_ENV) HAPAIR_UI_SCREENSHOT=$(CURDIR)/docs/health-monitor.png $(CARGO) test $(TEST_FEATURES) --test ui

.PHONY: e2e
e2e: testbed-up ## Every end-to-end scenario, on the testbed's real nodes (needs root).
	$(TESTBED_ENV) $(CARGO) test $(TEST_FEATURES) --test failover --test operations --test sync --test operator --test lifecycle --test scenarios --test certificates --test ui --test leader --test alerts -- --test-threads 3
	@$(MAKE) --no-print-directory e2e-nodes

# `make chaos`: every named fault case (e2e/chaos/cases.rs), the long ones
# too, ROUNDS times on PAIRS pairs at once; CASES=a,b picks (and repeats)
# cases, SEED replays a run, MINUTES=M starts no round after M minutes. The
# table is also written to target/chaos-report.txt.
ROUNDS ?= 1
PAIRS ?= 1
CASES ?=
SEED ?=
MINUTES ?= 0
CHAOS_ENV = HAPAIR_CHAOS_ROUNDS=$(ROUNDS) HAPAIR_CHAOS_PAIRS=$(PAIRS) HAPAIR_CHAOS_CASES=$(CASES) HAPAIR_CHAOS_SEED=$(SEED) \
  HAPAIR_CHAOS_MINUTES=$(MINUTES) HAPAIR_CHAOS_REPORT=target/chaos-report.txt

.PHONY: chaos
chaos: testbed-up ## The chaos suite on the real nodes: ROUNDS=N rounds of every fault case (PAIRS=, CASES=, SEED=); prints faults, failovers, breaches by kind, writes lost, epoch regressions, time to converge.
	$(TESTBED_ENV) $(CHAOS_ENV) HAPAIR_CHAOS_SOAK=1 $(CARGO) test $(TEST_FEATURES) --test chaos -- --nocapture chaos_rounds

.PHONY: chaos-brief
chaos-brief: testbed-up ## One round of every chaos case that fits `make test` (all but the 60 s API outage and the 30 s operator freeze).
	$(TESTBED_ENV) $(CHAOS_ENV) $(CARGO) test $(TEST_FEATURES) --test chaos -- --nocapture

.PHONY: e2e-nodes
e2e-nodes: testbed-up ## Whole nodes frozen, partitioned and killed under a pair; both members' nodes down (cold start); members kept apart (one test at a time).
	$(TESTBED_ENV) $(CARGO) test $(TEST_FEATURES) --test nodes --test cold_start -- --test-threads 1

##@ Fuzzing

FUZZ_TARGETS := manifest path order
FUZZ_SECONDS ?= 60
# cargo-fuzz and the instrumented build live outside the checkout, so only
# the first run on a machine pays for them.
FUZZ_ROOT ?= $(HOME)/.cache/hapair/cargo-fuzz
FUZZ_TARGET_DIR ?= $(HOME)/.cache/hapair/fuzz-target

.PHONY: fuzz-brief
fuzz-brief: ## Each fuzz target for 5 s (part of make test).
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=5

.PHONY: fuzz
fuzz: ## libFuzzer on what peers and users hand the agent (nightly toolchain; FUZZ_SECONDS per target).
	@command -v cargo-fuzz >/dev/null || [ -x $(FUZZ_ROOT)/bin/cargo-fuzz ] || \
	  $(CARGO) install cargo-fuzz --locked --root $(FUZZ_ROOT)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t target/fuzz-artifacts/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  PATH="$(FUZZ_ROOT)/bin:$$PATH" CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) \
	    $(CARGO) +nightly fuzz run $$t --fuzz-dir e2e/fuzz target/fuzz-corpus/$$t e2e/fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=target/fuzz-artifacts/$$t/ 2>&1 | tail -3; \
	done

##@ Shipping

IMAGE_REPO ?= ghcr.io/hapair/hapair
VERSION := $(shell awk -F'"' '/^version *=/ {print $$2; exit}' Cargo.toml)
IMAGE_TAG ?= $(VERSION)
MUSL := x86_64-unknown-linux-musl
IMAGE_ARCHIVE = target/image/hapair-$(IMAGE_TAG).oci.tar
TOOLS_BIN = $(shell e2e/tools/build.sh --dir)

.PHONY: image
image: ## Build the container image from its Containerfile with buildah (static binary, empty base, non-root) as an OCI archive under target/image/.
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL) || rustup target add $(MUSL)
	CC_x86_64_unknown_linux_musl=$${CC_x86_64_unknown_linux_musl:-$$(command -v x86_64-linux-musl-gcc || command -v musl-gcc || echo gcc)} \
	  $(CARGO) build --release --target $(MUSL) --bin hapair
	e2e/image/build.sh Containerfile target/$(MUSL)/release/hapair $(IMAGE_ARCHIVE) $(IMAGE_REPO):$(IMAGE_TAG) \
	  --build-arg VERSION=$(IMAGE_TAG)

.PHONY: image-ref
image-ref: ## Print the image reference `make image` builds (the chart's default image).
	@echo $(IMAGE_REPO):$(IMAGE_TAG)

.PHONY: image-check
image-check: image ## Inspect the OCI archive (digests, non-root user, a static binary that runs) and build it again: the same digest.
	e2e/image/build.sh Containerfile target/$(MUSL)/release/hapair $(IMAGE_ARCHIVE).again $(IMAGE_REPO):$(IMAGE_TAG) \
	  --build-arg VERSION=$(IMAGE_TAG)
	HAPAIR_IMAGE_ARCHIVE=$(IMAGE_ARCHIVE) HAPAIR_IMAGE_ARCHIVE_AGAIN=$(IMAGE_ARCHIVE).again HAPAIR_IMAGE_REF=$(IMAGE_REPO):$(IMAGE_TAG) \
	  $(CARGO) test $(TEST_FEATURES) --test image

.PHONY: plugin-archive
plugin-archive: ## The kubectl plugin's release archive (static binary) for krew, and its SHA-256 for the manifest (.krew.yaml).
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL) || rustup target add $(MUSL)
	CC_x86_64_unknown_linux_musl=$${CC_x86_64_unknown_linux_musl:-$$(command -v x86_64-linux-musl-gcc || command -v musl-gcc || echo gcc)} \
	  $(CARGO) build --release --target $(MUSL) --bin kubectl-hapair
	deploy/krew/archive.sh target/$(MUSL)/release/kubectl-hapair target/dist/kubectl-hapair_linux_amd64.tar.gz
	@sha256sum target/dist/kubectl-hapair_linux_amd64.tar.gz

.PHONY: tools
tools: ## Build (or reuse) helm, promtool, Prometheus, Alertmanager and krew from their pinned Go modules.
	@e2e/tools/build.sh >/dev/null

.PHONY: chart
chart: tools ## Chart checks: lint, values schema, RBAC, alerts (promtool), dashboard, the monitors as Prometheus scrape jobs; the plugin's krew manifest installed by krew.
	$(CARGO) test $(TEST_FEATURES) --test chart --test plugin --test alerts -- --skip the_api_server --skip every_pod --skip helm_installs --skip kubectl_apply --skip kubectl_completes --skip alerts_reach

.PHONY: chart-cluster
chart-cluster: tools testbed-up ## Chart checks on the testbed: server-side dry run, Pod Security, helm install/upgrade/uninstall, kustomize; the plugin's shell completion through kubectl's.
	$(TESTBED_ENV) $(CARGO) test $(TEST_FEATURES) --test chart --test plugin -- --test-threads 2 the_api_server every_pod helm_installs kubectl_apply kubectl_completes

##@ Benchmarks

.PHONY: bench
bench: bench-tools bench-images testbed-up ## Failover and switchover measured from outside (confirmed, frozen node, partitioned node; 1 s x 3, 5 s x 3) beside keepalived and client-go leader election, and file sync beside rsync (local and over ssh): prints BENCH lines.
	$(CARGO) build --release --example hapair-e2e-app
	$(TESTBED_ENV) HAPAIR_BENCH_APP=$(CURDIR)/target/release/examples/hapair-e2e-app \
	  $(CARGO) bench --bench failover --bench sync 2>target/bench.log | tee target/bench.txt
	@echo "per-run figures in target/bench.log"

.PHONY: bench-scale
bench-scale: tools testbed-up ## One operator with 200 and then 1,000 pairs on the real API server (their agents in one process on virtual nodes): its CPU and memory, API requests by verb, reconcile latency, one failover among them beside a lone pair's. PAIRS_SCALE=200,1000.
	$(TESTBED_ENV) HAPAIR_BENCH_SCALE_PAIRS=$(PAIRS_SCALE) \
	  $(CARGO) bench --bench scale 2>target/bench-scale.log | tee target/bench-scale.txt
	@echo "progress and failures in target/bench-scale.log"

PAIRS_SCALE ?= 200,1000

.PHONY: bench-images
bench-images: ## The failover bench's client-go peer (leader election as a sidecar), built from its pinned module into an image the testbed's nodes import.
	@mkdir -p $(TESTBED_IMAGES)
	cd e2e/peers/leaderelect && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(CURDIR)/$(TESTBED_IMAGES)/leaderelect .
	IMAGE_NAME=leaderelect \
	  e2e/image/build.sh e2e/image/Containerfile $(TESTBED_IMAGES)/leaderelect $(TESTBED_IMAGES)/e2e-leaderelect.oci.tar hapair.dev/e2e/leaderelect:1

.PHONY: bench-tools
bench-tools: ## The benchmarks' peers from Debian: keepalived (failover), rsync and OpenSSH (file sync).
	@command -v rsync >/dev/null && [ -x /usr/sbin/sshd ] && [ -x /usr/sbin/keepalived ] || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync openssh-server openssh-client keepalived >/dev/null; }

##@ Testbed (a real control plane and two real worker nodes on this machine)

.PHONY: testbed-build
testbed-build: ## Build (or reuse) the pinned Kubernetes binaries and CNI plugins.
	e2e/testbed/build.sh >/dev/null

TESTBED_IMAGES := target/image
E2E_APP := target/$(MUSL)/release/examples/hapair-e2e-app

.PHONY: testbed-images
testbed-images: image ## The images the nodes run (imported, never pulled): hapair, hapair with its fault hooks (the chaos suite's agents), the test application, the pause program.
	@mkdir -p $(TESTBED_IMAGES)
	gcc -static -Os -o $(TESTBED_IMAGES)/pause e2e/image/pause.c
	IMAGE_NAME=pause IMAGE_USER=65535 \
	  e2e/image/build.sh e2e/image/Containerfile $(TESTBED_IMAGES)/pause $(TESTBED_IMAGES)/e2e-pause.oci.tar hapair.dev/e2e/pause:1
	CC_x86_64_unknown_linux_musl=$${CC_x86_64_unknown_linux_musl:-$$(command -v x86_64-linux-musl-gcc || command -v musl-gcc || echo gcc)} \
	  $(CARGO) build --release --target $(MUSL) --example hapair-e2e-app
	IMAGE_NAME=hapair-e2e-app \
	  e2e/image/build.sh e2e/image/Containerfile $(E2E_APP) $(TESTBED_IMAGES)/e2e-app.oci.tar hapair.dev/e2e/app:1
	@# The chaos suite's agents: hapair with its fault hooks (a member's clock
	@# stepped), its own image so that the shipped one never has them.
	CC_x86_64_unknown_linux_musl=$${CC_x86_64_unknown_linux_musl:-$$(command -v x86_64-linux-musl-gcc || command -v musl-gcc || echo gcc)} \
	  $(CARGO) build --release --target $(MUSL) --bin hapair $(TEST_FEATURES)
	cp target/$(MUSL)/release/hapair $(TESTBED_IMAGES)/hapair-fault
	e2e/image/build.sh Containerfile $(TESTBED_IMAGES)/hapair-fault $(TESTBED_IMAGES)/e2e-hapair-fault.oci.tar hapair.dev/e2e/hapair-fault:1 \
	  --build-arg VERSION=$(IMAGE_TAG)

.PHONY: testbed-up
testbed-up: testbed-images ## Start the testbed (no-op when running); prints the kubeconfig path.
	@HAPAIR_TESTBED_IMAGES=$(TESTBED_IMAGES) $(TESTBED) up

.PHONY: testbed-down
testbed-down: ## Stop the testbed and remove its state.
	@$(TESTBED) down

##@ Running hapair

.PHONY: demo
demo: testbed-images ## Run hapair on a local Kubernetes with two real nodes: a pair comes up, its active is killed, the failover is shown.
	@HAPAIR_TESTBED_IMAGES=$(TESTBED_IMAGES) e2e/demo.sh up

.PHONY: demo-down
demo-down: ## Stop what `make demo` started (and the testbed).
	@e2e/demo.sh down
