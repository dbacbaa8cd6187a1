#!/usr/bin/env bash
# Builds a container image from its Containerfile with buildah — no daemon,
# no base image pulled — and writes it as an OCI archive that the testbed's
# nodes import (`ctr images import`) and any OCI tool pushes
# (`skopeo copy oci-archive:OUT.oci.tar docker://REFERENCE`).
#
#   build.sh CONTAINERFILE BINARY OUT.oci.tar REFERENCE [BUILDAH-BUILD-ARG...]
#
# The build context is made here: the binary (stripped) as `bin`, and
# `passwd`/`group` naming the user the image runs as:
#   IMAGE_NAME  the user's name (default hapair)
#   IMAGE_USER  its number (default 65532); passed as the build argument
#               USER when the Containerfile declares `ARG USER`
#
# Reproducible: every timestamp is 0 and buildah's version label is left
# out, so the same binary gives the same manifest digest. Each build uses a
# storage of its own that is removed afterwards: nothing is shared between
# builds, nothing is left behind.
set -euo pipefail
file=$1 bin=$2 out=$3 ref=$4
shift 4
name=${IMAGE_NAME:-hapair} user=${IMAGE_USER:-65532}
command -v buildah >/dev/null || { echo "image: buildah is needed (Debian: apt-get install buildah)" >&2; exit 1; }
[ -f "$file" ] || { echo "image: no Containerfile at $file" >&2; exit 1; }
[ -x "$bin" ] || { echo "image: $bin is not an executable" >&2; exit 1; }
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q "INTERP"; then
  echo "image: $bin is dynamically linked; the image has no libc" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ctx=$work/context
mkdir -p "$ctx"
install -m 0755 "$bin" "$ctx/bin"
# Symbols are for debugging builds, not for the image.
command -v strip >/dev/null && strip "$ctx/bin"
printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/:/sbin/nologin\n' "$name" "$user" "$user" "$name" > "$ctx/passwd"
printf 'root:x:0:\n%s:x:%s:\n' "$name" "$user" > "$ctx/group"
args=("$@")
grep -q '^ARG USER' "$file" && args+=(--build-arg "USER=$user")

b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
b build --quiet --timestamp 0 --identity-label=false --format oci --layers=false \
  ${args[@]+"${args[@]}"} -f "$file" -t "$ref" "$ctx" >/dev/null
# An OCI layout first, packed here with fixed owners and times, so that the
# archive's bytes are reproducible too (the nodes import an archive again
# only when its bytes changed).
b push --quiet "$ref" "oci:$work/layout:$ref"
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/layout" -cf "$out.partial" oci-layout index.json blobs
mv -f "$out.partial" "$out"
manifest=$(tar -xOf "$out" index.json | grep -o '"digest":"sha256:[0-9a-f]*"' | head -1 | cut -d'"' -f4)
echo "image: $ref → $out (manifest $manifest)" >&2
