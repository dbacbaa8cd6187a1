#!/usr/bin/env bash
# Prints the pinned Kubernetes version from the wrapper module's go.mod
# (this directory's, or $HAPAIR_TESTBED_MODULE's).
set -euo pipefail
awk '($1 == "k8s.io/kubernetes" && $2 ~ /^v/) {print $2} ($1 == "require" && $2 == "k8s.io/kubernetes") {print $3}' \
  "${HAPAIR_TESTBED_MODULE:-$(dirname "$0")}/go.mod" | head -n 1
