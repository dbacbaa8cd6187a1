#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries from their published Go modules into a
# cache outside the repository, keyed by the pinned versions: the control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and
# what every worker node runs (kubelet, kube-proxy), all from the one pinned
# k8s.io/kubernetes module so nodes and control plane never skew.
#
# Resumable: each binary is written to a temporary name and renamed only when
# complete, and Go's own build cache keeps every package already compiled, so an
# interrupted build picks up where it stopped. A binary already in the cache is
# never rebuilt.
#
# HAPAIR_TESTBED_MODULE builds another wrapper module's Kubernetes (compat/:
# the oldest supported); HAPAIR_TESTBED_NODES=0 builds the control plane only
# (no scheduler, kubelet, kube-proxy or CNI plugins).
#
# Prints the cache's bin directory on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HAPAIR_TESTBED_MODULE=$(cd "${HAPAIR_TESTBED_MODULE:-$here}" && pwd)
export HAPAIR_TESTBED_MODULE
cd "$HAPAIR_TESTBED_MODULE"

bindir=$("$here/cachedir.sh")
mkdir -p "$bindir"

kube_version=$("$here/version.sh")
[ -n "$kube_version" ] || { echo "testbed: no k8s.io/kubernetes version in go.mod" >&2; exit 1; }
minor=$(echo "$kube_version" | cut -d. -f2)
# Stamp the version the apiserver reports (/version) and kubectl prints;
# without it they say v0.0.0-master and clients warn about skew.
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$kube_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$kube_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() { # name package
  local name=$1 pkg=$2
  if [ -x "$bindir/$name" ]; then
    echo "testbed: $name cached" >&2
    return
  fi
  echo "testbed: building $name ($pkg)" >&2
  # Global, not local: the EXIT trap runs after the function has returned.
  tmp="$bindir/.$name.partial.$$"
  trap 'rm -f "$tmp"' EXIT
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg"
  mv -f "$tmp" "$bindir/$name"
  trap - EXIT
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kubectl k8s.io/kubernetes/cmd/kubectl
if [ "${HAPAIR_TESTBED_NODES:-2}" = 0 ]; then
  echo "$bindir"
  exit 0
fi
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy

# The CNI reference plugins the nodes' pods are wired with, from their own
# module at a pinned version (`go install pkg@version` resolves it alone, so
# its dependencies never mix with the Kubernetes module graph above).
cni_version=v1.10.0
for plugin in main/bridge main/loopback main/host-device ipam/host-local meta/portmap; do
  name=${plugin#*/}
  if [ -x "$bindir/cni/$name" ]; then
    echo "testbed: cni $name cached" >&2
    continue
  fi
  echo "testbed: building cni $name ($cni_version)" >&2
  tmp="$bindir/.cni.partial.$$"
  mkdir -p "$tmp" "$bindir/cni"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/$plugin@$cni_version")
  mv -f "$tmp/$name" "$bindir/cni/$name"
  rm -rf "$tmp"
  trap - EXIT
done
echo "$bindir"
