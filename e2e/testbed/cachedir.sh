#!/usr/bin/env bash
# Prints the cache directory for the testbed binaries: outside the repository,
# keyed by a hash of the pinned module graph so a version bump builds anew.
# HAPAIR_TESTBED_MODULE names another wrapper module (compat/: the oldest
# supported Kubernetes); its binaries get a directory of their own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mod=${HAPAIR_TESTBED_MODULE:-$here}
root=${HAPAIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hapair}
key=$(cat "$mod/go.mod" "$mod/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
kube=$("$here/version.sh")
echo "$root/testbed/kube-$kube-$key/bin"
