# The testbed's worker nodes, sourced by testbed.sh (which sets $state,
# $bindir and the log helpers).
#
# Each node is a network namespace `hapair-node-N` holding its own containerd
# (Debian's package, with runc), kubelet and kube-proxy, with every process it
# runs — daemons, shims, containers — under one freezer cgroup
# `/hapair-node-N`, so a node fails as a whole:
#
#   frozen       the freezer cgroup is FROZEN: kubelet, containers, everything
#                stops at once, as when a VM is paused; thawing resumes it
#   partitioned  every frame on its uplink is dropped (nftables netdev hooks):
#                its processes run on, nobody hears them and they hear nobody
#   killed       every process in the cgroup gets SIGKILL and the uplink drops
#                everything, so its addresses answer nothing: a powered-off node
#
# Addresses: the host is 10.214.0.1 on the bridge `hpnodes0` (the API server
# listens there); node N is 10.214.0.(10+N) with pod range 10.244.N.0/24 on
# its own CNI bridge; the host routes each pod range to its node, so pods
# reach each other and the API server without NAT. The test client lives in
# `hapair-client` (10.214.0.100) with a kube-proxy of its own, so it reaches
# Services through their ClusterIPs exactly as a pod would.

NODE_COUNT=${HAPAIR_TESTBED_NODES:-2}
HOST_BRIDGE=hpnodes0
HOST_IP=10.214.0.1
CLIENT_NS=hapair-client
CLIENT_IP=10.214.0.100
CLUSTER_CIDR=10.244.0.0/16
# Images the nodes hold (imported, never pulled).
PAUSE_IMAGE=hapair.dev/e2e/pause:1
CGROUP_HIERARCHIES="cpu cpuacct cpuset memory devices freezer blkio pids systemd"

node_name() { echo "hapair-node-$1"; }
node_ip() { echo "10.214.0.$((10 + $1))"; }
node_dir() { echo "$state/nodes/$1"; }
# containerd's sockets: /run keeps the unix socket paths short.
node_run() { echo "/run/hapair-$(echo "$state" | sha256sum | cut -c1-8)/node-$1"; }

host_network() {
  sysctl -qw net.ipv4.ip_forward=1
  if ! ip link show "$HOST_BRIDGE" >/dev/null 2>&1; then
    ip link add "$HOST_BRIDGE" type bridge
    ip addr add "$HOST_IP/24" dev "$HOST_BRIDGE"
  fi
  ip link set "$HOST_BRIDGE" up
}

# A network namespace on the host bridge: name, address, host-side link name.
netns_on_bridge() {
  local ns=$1 addr=$2 link=$3
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$link" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "$link" type veth peer name eth0 netns "$ns"
  ip link set "$link" master "$HOST_BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$HOST_IP"
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
  # kube-proxy's rules for ClusterIPs also apply to bridged pod traffic.
  ip netns exec "$ns" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.route_localnet=1
}

node_cgroups() { # n
  local n=$1 h dir
  for h in $CGROUP_HIERARCHIES; do
    [ -d "/sys/fs/cgroup/$h" ] || continue
    for dir in "/sys/fs/cgroup/$h/$(node_name "$n")" "/sys/fs/cgroup/$h/$(node_name "$n")/daemons"; do
      mkdir -p "$dir"
      if [ "$h" = cpuset ]; then
        cat "$(dirname "$dir")/cpuset.cpus" >"$dir/cpuset.cpus"
        cat "$(dirname "$dir")/cpuset.mems" >"$dir/cpuset.mems"
      fi
    done
  done
}

# Runs a node daemon inside the node: its cgroup, its network namespace.
# nsenter, not `ip netns exec`: that one also gives the process a mount
# namespace of its own with a fresh /sys, which hides the cgroup mounts from
# the kubelet and would hide the kubelet's volume mounts from containerd.
start_in_node() { # n name args...
  local n=$1 name=$2 dir
  shift 2
  dir=$(node_dir "$n")
  log "node $n: starting $name"
  # shellcheck disable=SC2016
  setsid bash -c '
    for h in '"$CGROUP_HIERARCHIES"'; do
      f=/sys/fs/cgroup/$h/'"$(node_name "$n")"'/daemons/cgroup.procs
      [ -f "$f" ] && echo $$ >"$f"
    done
    exec nsenter --net=/var/run/netns/"$0" "$@"' "$(node_name "$n")" "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

node_pki() { # n
  local n=$1 pki=$state/pki name
  name=$(node_name "$n")
  [ -f "$pki/$name.crt" ] && return
  sign_cert "$name" "/O=system:nodes/CN=system:node:$name" "subjectAltName=IP:$(node_ip "$n"),DNS:$name
extendedKeyUsage=clientAuth,serverAuth"
}

containerd_config() { # n
  local n=$1 dir run
  dir=$(node_dir "$n") run=$(node_run "$n")
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd"
state = "$run/state"
[grpc]
  address = "$run/containerd.sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Lowering a process's oom_score_adj is denied here even to root; clamp
  # the kubelet's request instead of failing every sandbox.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$bindir/cni"
    conf_dir = "$dir/cni"
EOF
  mkdir -p "$dir/cni"
  cat >"$dir/cni/10-pods.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.$n.0/24", "gateway": "10.244.$n.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
}

kubelet_config() { # n
  local n=$1 dir pki=$state/pki name
  dir=$(node_dir "$n") name=$(node_name "$n")
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$name
containerRuntimeEndpoint: unix://$(node_run "$n")/containerd.sock
address: $(node_ip "$n")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $pki/$name.crt
tlsPrivateKeyFile: $pki/$name.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
failSwapOn: false
resolvConf: /etc/resolv.conf
# Each node keeps its containers' logs apart. In the default /var/log/pods,
# shared by every kubelet on this machine, each kubelet's minutely garbage
# collection removes the log directories of pods it does not know — the
# other node's running pods — and their logs vanish mid-run.
podLogsDir: $dir/pod-logs
# The images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
# A container that crashed is started again within 2 s, not after a back-off
# that doubles up to 5 min: the chaos suite kills the same member's containers
# many times in a row, and a member held minutes in CrashLoopBackOff would
# make every later round wait on the kubelet, not on hapair.
featureGates: {KubeletCrashLoopBackOffMax: true}
crashLoopBackOff: {maxContainerRestartPeriod: 2s}
EOF
  write_kubeconfig_cert "$dir/kubelet.kubeconfig" "$name" "$pki/$name.crt" "$pki/$name.key"
}

kube_proxy_config() { # dir name
  local dir=$1 name=$2 pki=$state/pki
  sign_cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  write_kubeconfig_cert "$dir/kube-proxy.kubeconfig" kube-proxy "$pki/kube-proxy.crt" "$pki/kube-proxy.key"
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $name
mode: iptables
clusterCIDR: $CLUSTER_CIDR
# Leave the machine's conntrack limits alone: they are not the namespace's.
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

# Imports the images into the node's containerd; an image already imported
# with the same bytes is skipped, so `up` on a running testbed refreshes only
# what `make testbed-images` rebuilt.
import_images() { # n
  local n=$1 img sum stamp
  for img in "$state"/images/*.oci.tar; do
    sum=$(sha256sum "$img" | cut -c1-16) stamp="$(node_dir "$n")/imported.$(basename "$img")"
    [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] && continue
    node_ctr "$n" images import "$img" >/dev/null
    echo "$sum" >"$stamp"
  done
}

node_up() { # n
  local n=$1 dir name
  dir=$(node_dir "$n") name=$(node_name "$n")
  # Names, addresses and cgroups are the machine's, not the checkout's: clear
  # what an earlier testbed may have left (one testbed runs per machine).
  node_down "$n"
  mkdir -p "$dir/pod-logs" "$(node_run "$n")"
  netns_on_bridge "$name" "$(node_ip "$n")" "hpn$n"
  ip route replace "10.244.$n.0/24" via "$(node_ip "$n")"
  node_cgroups "$n"
  node_pki "$n"
  containerd_config "$n"
  kubelet_config "$n"
  kube_proxy_config "$dir" "$name"
  node_daemons "$n"
}

node_daemons() { # n
  local n=$1 dir name
  dir=$(node_dir "$n") name=$(node_name "$n")
  start_in_node "$n" containerd containerd --config "$dir/containerd.toml"
  wait_for "node $n containerd" 30 node_ctr "$n" version
  import_images "$n"
  start_in_node "$n" kubelet "$bindir/kubelet" --config "$dir/kubelet.yaml" \
    --kubeconfig "$dir/kubelet.kubeconfig" --hostname-override "$name" --node-ip "$(node_ip "$n")" \
    --root-dir "$dir/kubelet" --node-labels "hapair.dev/testbed-node=$n" --v 1
  start_in_node "$n" kube-proxy "$bindir/kube-proxy" --config "$dir/kube-proxy.yaml" --v 1
}

client_up() {
  local dir=$state/nodes/client
  mkdir -p "$dir"
  netns_on_bridge "$CLIENT_NS" "$CLIENT_IP" hpclient
  kube_proxy_config "$dir" "$CLIENT_NS"
  log "starting the client's kube-proxy"
  setsid nsenter --net=/var/run/netns/"$CLIENT_NS" "$bindir/kube-proxy" --config "$dir/kube-proxy.yaml" --v 1 \
    >"$dir/kube-proxy.log" 2>&1 </dev/null &
  echo $! >"$dir/kube-proxy.pid"
}

node_ready() { # name
  "$bindir/kubectl" --kubeconfig "$kubeconfig" get node "$1" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

nodes_up() {
  local n
  for n in $(seq 1 "$NODE_COUNT"); do node_up "$n"; done
  client_up
  for n in $(seq 1 "$NODE_COUNT"); do
    wait_for "node $n Ready" 90 node_ready "$(node_name "$n")"
  done
  # The kubernetes Service's rules are in place in the client's namespace
  # once its kube-proxy has synced.
  wait_for "kube-proxy rules" 60 ip netns exec "$CLIENT_NS" iptables -t nat -S KUBE-SERVICES
}

node_processes() { # n: every process of the node, daemons and containers
  local f
  f=/sys/fs/cgroup/freezer/$(node_name "$1")
  [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
}

# Drops every frame on the node's uplink, both ways.
node_cut() { # n on|off
  local name
  name=$(node_name "$1")
  ip netns exec "$name" nft delete table netdev hapair_partition 2>/dev/null || true
  [ "$2" = on ] || return 0
  ip netns exec "$name" nft -f - <<EOF
table netdev hapair_partition {
  chain in { type filter hook ingress device eth0 priority -500; policy drop; }
  chain out { type filter hook egress device eth0 priority -500; policy drop; }
}
EOF
}

node_freeze() { # n FROZEN|THAWED
  local state_file
  state_file=/sys/fs/cgroup/freezer/$(node_name "$1")/freezer.state
  echo "$2" >"$state_file"
  # Freezing is asynchronous: wait until the whole subtree has stopped.
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(cat "$state_file")" = "$2" ] && return 0
    sleep 0.05
  done
  log "node $1: freezer still $(cat "$state_file") after 5 s"
  return 1
}

node_kill() { # n
  node_cut "$1" on
  node_freeze "$1" FROZEN || true
  node_processes "$1" | xargs -r kill -9 2>/dev/null || true
  node_freeze "$1" THAWED || true
}

# Stops a node and removes everything it made on the host.
node_down() { # n
  local n=$1 dir name pid i
  dir=$(node_dir "$n") name=$(node_name "$n")
  if [ -d "/sys/fs/cgroup/freezer/$name" ]; then
    # Thaw the whole subtree: a pod a test froze on its own stays frozen
    # under a thawed node, and a frozen process never takes its SIGKILL.
    find "/sys/fs/cgroup/freezer/$name" -name freezer.state | while read -r f; do echo THAWED >"$f"; done 2>/dev/null || true
    for i in 1 2 3; do
      node_processes "$n" | xargs -r kill -9 2>/dev/null || true
      [ -z "$(node_processes "$n")" ] && break
      sleep 0.2
    done
  fi
  # The kubelet mounted volumes, containerd the containers' root filesystems
  # and shared memory on the host: unmount them before the files go.
  local under
  for under in "$dir" "$(node_run "$n")"; do
    awk -v p="$under/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
      xargs -r -n1 umount -l 2>/dev/null || true
  done
  ip netns del "$name" 2>/dev/null || true
  ip link del "hpn$n" 2>/dev/null || true
  ip route del "10.244.$n.0/24" 2>/dev/null || true
  rm -rf "$(node_run "$n")"
  local h
  for h in $CGROUP_HIERARCHIES; do
    [ -d "/sys/fs/cgroup/$h/$name" ] || continue
    find "/sys/fs/cgroup/$h/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

nodes_down() {
  local n dir=$state/nodes/client
  for n in $(seq 1 "$NODE_COUNT"); do node_down "$n"; done
  if [ -f "$dir/kube-proxy.pid" ]; then kill -9 "$(cat "$dir/kube-proxy.pid")" 2>/dev/null || true; fi
  ip netns del "$CLIENT_NS" 2>/dev/null || true
  ip link del hpclient 2>/dev/null || true
  # The pods' network namespaces, which containerd pins under /var/run/netns.
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  rmdir "$(dirname "$(node_run 1)")" 2>/dev/null || true
}

# Local PersistentVolumes: PV_PER_NODE directories on each node under the
# default StorageClass `hapair-local` (WaitForFirstConsumer, so the scheduler
# picks the node first and the PV controller binds a volume on it). A volume
# is Retained when its claim goes; `testbed.sh recycle` (the harness calls it)
# wipes Released ones and makes them Available again, as a static local
# provisioner does. Small volumes (class `hapair-small`) are each a tmpfs of
# SMALL_PV_MIB MiB: volumes that can fill up (the chaos suite fills its
# standby's) without filling the disk the rest of the testbed shares.
storage_up() {
  local n k dir out=$state/storage.yaml
  : >"$out"
  storage_class hapair-local true >>"$out"
  storage_class hapair-small false >>"$out"
  for n in $(seq 1 "$NODE_COUNT"); do
    for k in $(seq 1 "$PV_PER_NODE"); do
      dir=$(node_dir "$n")/pv/$k
      mkdir -p "$dir"
      local_pv "$(node_name "$n")-pv-$k" "$n" "$dir" 10Gi hapair-local >>"$out"
    done
    for k in $(seq 1 "$SMALL_PV_PER_NODE"); do
      dir=$(node_dir "$n")/pv-small/$k
      mkdir -p "$dir"
      mountpoint -q "$dir" || mount -t tmpfs -o "size=${SMALL_PV_MIB}m,mode=0755" hapair-small "$dir"
      local_pv "$(node_name "$n")-small-pv-$k" "$n" "$dir" "${SMALL_PV_MIB}Mi" hapair-small >>"$out"
    done
  done
  "$bindir/kubectl" --kubeconfig "$kubeconfig" apply -f "$out" >/dev/null
}

storage_class() { # name default
  cat <<EOF2
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $1
  annotations: {storageclass.kubernetes.io/is-default-class: "$2"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF2
}

local_pv() { # name node path capacity class
  cat <<EOF2
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $1, labels: {hapair.dev/testbed-node: "$2"}}
spec:
  capacity: {storage: $4}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $5
  local: {path: $3}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$(node_name "$2")]}]
EOF2
}

storage_recycle() {
  local pv path
  # Tests recycle as they start, several at once: one at a time.
  exec 9>"$state/recycle.lock"
  flock 9
  for pv in $("$bindir/kubectl" --kubeconfig "$kubeconfig" get pv \
    -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}'); do
    path=$("$bindir/kubectl" --kubeconfig "$kubeconfig" get pv "$pv" -o jsonpath='{.spec.local.path}')
    case "$path" in "$state"/nodes/*/pv/* | "$state"/nodes/*/pv-small/*) ;; *) continue ;; esac
    find "$path" -mindepth 1 -delete
    # Another test's recycle may have freed it first: that is fine.
    "$bindir/kubectl" --kubeconfig "$kubeconfig" patch pv "$pv" --type json \
      -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null 2>&1 || true
  done
}

# Cuts one pod (by address) off from the API server, leaving its other
# traffic alone: what a member sees when only the control plane is
# unreachable. Packets are dropped after kube-proxy's DNAT, so it holds for
# the kubernetes Service's ClusterIP and the API server's own address alike.
pod_cut_api() { # n ip on|off
  local name table
  name=$(node_name "$1") table="hapair_cut_api_$(echo "$2" | tr . _)"
  ip netns exec "$name" nft delete table inet "$table" 2>/dev/null || true
  [ "$3" = on ] || return 0
  local api_port
  api_port=$(awk -F= '$1 == "apiserver" {print $2}' "$state/ports")
  ip netns exec "$name" nft -f - <<EOF2
table inet $table {
  chain cut {
    type filter hook forward priority -10;
    ip saddr $2 ip daddr $HOST_IP tcp dport $api_port drop
    ip saddr $HOST_IP tcp sport $api_port ip daddr $2 drop
  }
}
EOF2
}

# Sends one pod's new connections to the API server (the kubernetes
# Service's ClusterIP or the server's own address) to a proxy at
# HOST_IP:PORT instead, and ends the connections it has open so that its
# next call goes through the proxy: a test's proxy that delays what the API
# server answers. A nat chain ahead of kube-proxy's (priority -150 < -100)
# translates first, and the first translation of a connection is the one
# kept. Off: the rule goes; the proxy ends its own connections.
pod_via_proxy() { # n ip port on|off
  local name table api_port
  name=$(node_name "$1") table="hapair_via_proxy_$(echo "$2" | tr . _)"
  ip netns exec "$name" nft delete table ip "$table" 2>/dev/null || true
  [ "$4" = on ] || return 0
  api_port=$(awk -F= '$1 == "apiserver" {print $2}' "$state/ports")
  ip netns exec "$name" nft -f - <<EOF2
table ip $table {
  chain steer {
    type nat hook prerouting priority -150;
    ip saddr $2 ip daddr { 10.96.0.1, $HOST_IP } tcp dport { 443, $api_port } dnat to $HOST_IP:$3
  }
}
EOF2
  # The open connections' next packets find no conntrack entry, are taken
  # for new ones, go to the proxy, and are reset there.
  ip netns exec "$name" conntrack -D -p tcp -s "$2" -d 10.96.0.1 >/dev/null 2>&1 || true
  ip netns exec "$name" conntrack -D -p tcp -s "$2" -d "$HOST_IP" --dport "$api_port" >/dev/null 2>&1 || true
}

# Cuts two pods (by address) off from each other, leaving their other
# traffic alone: the members of a pair that can no longer hear one another.
# Set on the first pod's node, which forwards every packet of that pod.
pods_cut_apart() { # n ip-a ip-b on|off
  local name table
  name=$(node_name "$1") table="hapair_cut_peer_$(echo "$2_$3" | tr . _)"
  ip netns exec "$name" nft delete table inet "$table" 2>/dev/null || true
  [ "$4" = on ] || return 0
  ip netns exec "$name" nft -f - <<EOF2
table inet $table {
  chain cut {
    type filter hook forward priority -10;
    ip saddr $2 ip daddr $3 drop
    ip saddr $3 ip daddr $2 drop
  }
}
EOF2
}

node_ctr() { # n args...
  local n=$1
  shift
  ip netns exec "$(node_name "$n")" ctr -a "$(node_run "$n")/containerd.sock" -n k8s.io "$@"
}

# Boots a killed node again: its uplink back, its daemons started anew on the
# state they left (containerd finds its containers dead, the kubelet restarts
# them by their pods' restart policy).
node_restart() { # n
  local n=$1 name
  name=$(node_name "$n")
  node_freeze "$n" THAWED || true
  node_processes "$n" | xargs -r kill -9 2>/dev/null || true
  node_cut "$n" off
  node_daemons "$n"
  wait_for "node $n Ready" 90 node_ready "$name"
}
