#!/usr/bin/env bash
# The plugin's release archive as krew installs it: the kubectl-hapair
# binary at the archive's top level, with fixed owner, mode and times so the
# same binary gives the same archive (and so the same SHA-256 in the
# manifest).
#
#   archive.sh BINARY OUT.tar.gz
set -euo pipefail
bin=$1 out=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/kubectl-hapair"
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - kubectl-hapair \
  | gzip -n -9 >"$out.partial"
mv -f "$out.partial" "$out"
