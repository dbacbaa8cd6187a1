#!/usr/bin/env bash
# Builds hapair's container image without a container daemon: the static
# (musl) binary as the only file of one layer on an empty base, run as a
# non-root numeric user, written as an OCI image layout and packed into an
# OCI archive.
#
#   build.sh BINARY OUT.oci.tar REPOSITORY TAG
#
# The same recipe makes the testbed's other images (the pod sandbox's pause
# program, the e2e test application), set through the environment:
#   IMAGE_NAME  the binary's name in the image and the title (default hapair)
#   IMAGE_CMD   the default arguments as a JSON list (default ["operator"])
#   IMAGE_USER  the numeric user (default 65532)
#
# The archive is reproducible: same binary, same bytes (sorted entries,
# owner 0, mtime 0, gzip without a timestamp). Push it with any OCI tool,
# e.g. `skopeo copy oci-archive:OUT.oci.tar docker://REPOSITORY:TAG`.
set -euo pipefail
bin=$1 out=$2 repo=$3 tag=$4
name=${IMAGE_NAME:-hapair} cmd=${IMAGE_CMD:-'["operator"]'} user=${IMAGE_USER:-65532}
[ -x "$bin" ] || { echo "image: $bin is not an executable" >&2; exit 1; }
if ! file "$bin" 2>/dev/null | grep -q "static"; then
  # Without `file`, ask the dynamic loader: a static binary has no interpreter.
  if command -v readelf >/dev/null && readelf -l "$bin" | grep -q "INTERP"; then
    echo "image: $bin is dynamically linked; the image has no libc" >&2
    exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# The layer: the binary, plus /etc/passwd and /etc/group naming the user, so
# tools that print the user have a name for it.
root=$work/rootfs
mkdir -p "$root/etc"
install -m 0755 "$bin" "$root/$name"
# Symbols are for debugging builds, not for the image.
command -v strip >/dev/null && strip "$root/$name"
printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/:/sbin/nologin\n' "$name" "$user" "$user" "$name" > "$root/etc/passwd"
printf 'root:x:0:\n%s:x:%s:\n' "$name" "$user" > "$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" "$name" etc
diff_id=$(sha "$work/layer.tar")
gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layer_digest=$(sha "$work/layer.tar.gz")
cp "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

created=1970-01-01T00:00:00Z
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"$created",
 "config":{"User":"$user:$user","Entrypoint":["/$name"],"Cmd":$cmd,"WorkingDir":"/",
  "Env":["PATH=/"],
  "Labels":{"org.opencontainers.image.title":"$name","org.opencontainers.image.version":"$tag",
   "org.opencontainers.image.source":"https://github.com/hapair/hapair"}},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
 "history":[{"created":"$created","created_by":"hapair e2e/image/build.sh"}]}
JSON
config_digest=$(sha "$work/config.json")
cp "$work/config.json" "$layout/blobs/sha256/$config_digest"

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$(size "$work/config.json")},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$(size "$work/layer.tar.gz")}],
 "annotations":{"org.opencontainers.image.version":"$tag"}}
JSON
manifest_digest=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"

printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
cat > "$layout/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
 "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$(size "$work/manifest.json"),
  "platform":{"architecture":"amd64","os":"linux"},
  "annotations":{"org.opencontainers.image.ref.name":"$tag","io.containerd.image.name":"$repo:$tag"}}]}
JSON
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$layout" -cf "$out.partial" oci-layout index.json blobs
mv -f "$out.partial" "$out"
echo "image: $repo:$tag → $out (manifest sha256:$manifest_digest, $(size "$work/layer.tar.gz") bytes compressed)" >&2
