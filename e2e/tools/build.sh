#!/usr/bin/env bash
# Builds the pinned tools the chart, alert and plugin checks use (helm;
# promtool, Prometheus and Alertmanager; krew) from their published Go
# modules into a cache outside the repository, keyed by each wrapper
# module's go.mod and go.sum, and prints the cache's bin directory.
#
# Resumable like the testbed's build: a binary is written under a temporary
# name and renamed when complete, and Go's build cache keeps every compiled
# package, so an interrupted build resumes where it stopped.
#
#   build.sh            build them all (or reuse them)
#   build.sh --dir      only print the bin directory
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${HAPAIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hapair}
key=$(cat "$here"/helm/go.mod "$here"/helm/go.sum "$here"/prometheus/go.mod "$here"/prometheus/go.sum \
  "$here"/alertmanager/go.mod "$here"/alertmanager/go.sum \
  "$here"/krew/go.mod "$here"/krew/go.sum "$here/build.sh" | sha256sum | cut -c1-12)
bindir="$root/tools/$key/bin"
if [ "${1:-}" = --dir ]; then
  echo "$bindir"
  exit 0
fi
mkdir -p "$bindir"

version() { # module dir, module path
  awk -v m="$2" '$1 == m {print $2}' "$here/$1/go.mod" | head -n 1
}

build() { # name, module dir, package, ldflags
  local name=$1 dir=$2 pkg=$3 ldflags=$4
  if [ -x "$bindir/$name" ]; then
    echo "tools: $name cached" >&2
    return
  fi
  echo "tools: building $name ($pkg)" >&2
  # Global, not local: the EXIT trap runs after the function has returned.
  tmp="$bindir/.$name.partial.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$here/$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
  mv -f "$tmp" "$bindir/$name"
  trap - EXIT
}

helm_version=$(version helm helm.sh/helm/v4)
prom_version=$(version prometheus github.com/prometheus/prometheus)
am_version=$(version alertmanager github.com/prometheus/alertmanager)
build helm helm helm.sh/helm/v4/cmd/helm \
  "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
# Module v0.315.0 is Prometheus 3.15.0.
build promtool prometheus github.com/prometheus/prometheus/cmd/promtool \
  "-s -w -X github.com/prometheus/common/version.Version=3.${prom_version#v0.3}"
# The web UI's assets are not compiled in (no `builtinassets` tag): the tests
# use the HTTP API only.
build prometheus prometheus github.com/prometheus/prometheus/cmd/prometheus \
  "-s -w -X github.com/prometheus/common/version.Version=3.${prom_version#v0.3}"
build alertmanager alertmanager github.com/prometheus/alertmanager/cmd/alertmanager \
  "-s -w -X github.com/prometheus/common/version.Version=${am_version#v}"
krew_version=$(version krew sigs.k8s.io/krew)
build krew krew sigs.k8s.io/krew/cmd/krew \
  "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$krew_version"
echo "$bindir"
