#!/usr/bin/env bash
# A real, small Kubernetes for hapair's tests: etcd, kube-apiserver (RBAC and
# the Node authorizer on, service-account tokens working),
# kube-controller-manager (every controller but the cloud's and node IPAM) and
# kube-scheduler, plus real worker nodes (nodes.sh: kubelet, containerd, runc,
# CNI, kube-proxy, each node in its own network namespace) and local
# PersistentVolumes on each node under a WaitForFirstConsumer StorageClass.
#
#   testbed.sh up        start (or confirm running); prints the kubeconfig path
#   testbed.sh down      stop and remove state; harmless when already stopped
#   testbed.sh status    exit 0 when running and ready
#   testbed.sh kubeconfig  print the kubeconfig path
#   testbed.sh node freeze|thaw|partition|heal|kill|restart N
#                        fail node N (1, 2, …) one of the three ways nodes
#                        fail, or bring it back
#   testbed.sh node cut-api N POD_IP on|off   cut one pod off the API server
#   testbed.sh node via-proxy N POD_IP PORT on|off   one pod's API traffic through a proxy on the host
#   testbed.sh node ctr N ARGS...  ctr against node N's containerd
#   testbed.sh client CMD...  run CMD in the test client's network namespace
#   testbed.sh recycle   make Released local volumes Available again (wiped)
#
# With HAPAIR_TESTBED_NODES=0 it is the control plane alone (etcd, API
# server, controller manager: no scheduler, nodes, volumes or images), and
# HAPAIR_TESTBED_MODULE picks another pinned Kubernetes (compat/: the oldest
# supported, `make test-compat`).
#
# Needs root (network namespaces, cgroups, mounts), containerd and runc,
# iptables, nftables and conntrack (.ci/run installs them), and the images in
# $HAPAIR_TESTBED_IMAGES (make testbed-images builds them).
#
# State lives in $HAPAIR_TESTBED_DIR (default: target/testbed of this checkout).
# The nodes' names, addresses, network namespaces and cgroups belong to the
# machine: one testbed runs per machine, and `up` clears what an earlier one
# left. Ports are chosen free at start, or fixed with HAPAIR_TESTBED_PORT_BASE
# (uses BASE..BASE+4).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${HAPAIR_TESTBED_DIR:-$repo/target/testbed}
kubeconfig=$state/kubeconfig
# shellcheck source=e2e/testbed/nodes.sh
. "$here/nodes.sh"
# Local PersistentVolumes made per node (pairs with storage claim two each).
PV_PER_NODE=${HAPAIR_TESTBED_PVS:-24}
SMALL_PV_PER_NODE=${HAPAIR_TESTBED_SMALL_PVS:-6}
SMALL_PV_MIB=512

log() { echo "testbed: $*" >&2; }

alive() { # name
  local f="$state/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

ready() {
  local n
  [ -f "$kubeconfig" ] && alive etcd && alive kube-apiserver && alive kube-controller-manager &&
    { [ "$NODE_COUNT" = 0 ] || alive kube-scheduler; } || return 1
  for n in $(seq 1 "$NODE_COUNT"); do
    [ -f "$(node_dir "$n")/kubelet.pid" ] && kill -0 "$(cat "$(node_dir "$n")/kubelet.pid")" 2>/dev/null || return 1
  done
  "$bindir/kubectl" --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
  if [ -n "${HAPAIR_TESTBED_PORT_BASE:-}" ]; then
    local b=$HAPAIR_TESTBED_PORT_BASE
    etcd_port=$b etcd_peer_port=$((b + 1)) api_port=$((b + 2)) kcm_port=$((b + 3)) sched_port=$((b + 4))
    return
  fi
  local picked=() p
  while [ ${#picked[@]} -lt 5 ]; do
    p=$((20000 + RANDOM % 30000))
    if port_free "$p" && [[ " ${picked[*]} " != *" $p "* ]]; then picked+=("$p"); fi
  done
  etcd_port=${picked[0]} etcd_peer_port=${picked[1]} api_port=${picked[2]} kcm_port=${picked[3]} sched_port=${picked[4]}
}

make_pki() {
  local pki=$state/pki
  mkdir -p "$pki"
  [ -f "$pki/ca.crt" ] && return
  log "generating certificates"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=hapair-testbed-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$HOST_IP" >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  # Service-account token signing key pair.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # Static bearer tokens: the test admin and the controller-manager.
  local admin kcm
  admin=$(openssl rand -hex 24) kcm=$(openssl rand -hex 24)
  printf '%s,hapair-admin,hapair-admin,"system:masters"\n%s,system:kube-controller-manager,kcm\n' \
    "$admin" "$kcm" >"$pki/tokens.csv"
  echo "$admin" >"$pki/admin.token"
  echo "$kcm" >"$pki/kcm.token"
  sign_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  # The API server's identity towards the kubelets (logs, exec).
  sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
}

sign_cert() { # name subject extensions
  local pki=$state/pki
  [ -f "$pki/$1.crt" ] && return
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}

write_kubeconfig_cert() { # file user cert key
  write_kubeconfig "$1" "$2" "client-certificate: $3
    client-key: $4"
}

write_kubeconfig() { # file user credentials (the YAML lines under `user:`)
  local ca
  ca=$(base64 -w0 <"$state/pki/ca.crt")
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://$HOST_IP:$api_port
    certificate-authority-data: $ca
users:
- name: $2
  user:
    $3
contexts:
- name: testbed
  context: {cluster: testbed, user: $2, namespace: default}
current-context: testbed
EOF
  mv "$1.tmp" "$1"
}

start() { # name args...
  local name=$1
  shift
  log "starting $name"
  setsid "$bindir/$name" "$@" >"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
}

wait_for() { # description seconds command...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what; last log lines:"
  tail -n 30 "$state"/*.log >&2 || true
  return 1
}

up() {
  bindir=$("$here/build.sh")
  if ready; then
    log "already running"
    [ "$NODE_COUNT" = 0 ] || refresh_images
    echo "$kubeconfig"
    return
  fi
  down_quiet
  mkdir -p "$state"
  pick_ports
  host_network
  make_pki
  local pki=$state/pki
  start etcd --name testbed --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "testbed=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  start kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port "$api_port" \
    --cert-dir "$state/apiserver-certs" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false --profiling=false \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --storage-media-type application/json --v 1
  write_kubeconfig "$state/kcm.kubeconfig" system:kube-controller-manager "token: $(cat "$pki/kcm.token")"
  write_kubeconfig "$kubeconfig" hapair-admin "token: $(cat "$pki/admin.token")"
  wait_for kube-apiserver 90 "$bindir/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz
  start kube-controller-manager --kubeconfig "$state/kcm.kubeconfig" \
    --authentication-kubeconfig "$state/kcm.kubeconfig" --authorization-kubeconfig "$state/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$state/kcm-certs" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle' \
    --concurrent-gc-syncs 5 --v 1
  wait_for kube-controller-manager 60 curl -sfk "https://127.0.0.1:$kcm_port/healthz"
  # Service-account tokens work when the controllers (which use them) have
  # created the default ServiceAccount and its root CA ConfigMap.
  wait_for "service accounts" 60 "$bindir/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default
  wait_for "root CA publisher" 60 "$bindir/kubectl" --kubeconfig "$kubeconfig" -n default get configmap kube-root-ca.crt
  if [ "$NODE_COUNT" = 0 ]; then
    printf 'etcd=%s\napiserver=%s\ncontroller-manager=%s\nbin=%s\n' "$etcd_port" "$api_port" "$kcm_port" "$bindir" >"$state/ports"
    log "ready: kube-apiserver $("$bindir/kubectl" --kubeconfig "$kubeconfig" get --raw /version | grep -o '"gitVersion": *"[^"]*"' | cut -d'"' -f4) on https://$HOST_IP:$api_port, no nodes"
    echo "$kubeconfig"
    return
  fi
  write_kubeconfig_cert "$state/scheduler.kubeconfig" kube-scheduler "$pki/kube-scheduler.crt" "$pki/kube-scheduler.key"
  start kube-scheduler --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v 1
  refresh_images
  nodes_up
  storage_up
  printf 'etcd=%s\napiserver=%s\ncontroller-manager=%s\nscheduler=%s\nbin=%s\n' \
    "$etcd_port" "$api_port" "$kcm_port" "$sched_port" "$bindir" >"$state/ports"
  log "ready: kube-apiserver on https://$HOST_IP:$api_port, nodes $(seq -s " " 1 "$NODE_COUNT")"
  echo "$kubeconfig"
}

# The images the nodes hold, from $HAPAIR_TESTBED_IMAGES (make testbed-images).
refresh_images() {
  local n
  mkdir -p "$state/images"
  cp "${HAPAIR_TESTBED_IMAGES:?the images directory (make testbed-images)}"/*.oci.tar "$state/images/"
  for n in $(seq 1 "$NODE_COUNT"); do
    [ -S "$(node_run "$n")/containerd.sock" ] && import_images "$n"
  done
  return 0
}

down_quiet() {
  local name pid i
  # The nodes first, while the API server can still see them go.
  nodes_down
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$state/$name.pid" ] || continue
    pid=$(cat "$state/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/$name.pid"
  done
  rm -rf "$state"
}

case "${1:-}" in
  up) up ;;
  down) down_quiet; log "stopped" ;;
  status)
    bindir=$("$here/cachedir.sh")
    if ready; then echo "running: $kubeconfig"; else echo "not running"; exit 1; fi
    ;;
  kubeconfig) echo "$kubeconfig" ;;
  node)
    n=${3:?node number}
    case "${2:-}" in
      freeze) node_freeze "$n" FROZEN ;;
      thaw) node_freeze "$n" THAWED ;;
      partition) node_cut "$n" on ;;
      heal) node_cut "$n" off ;;
      kill) node_kill "$n" ;;
      restart) bindir=$("$here/cachedir.sh"); api_port=$(awk -F= '$1 == "apiserver" {print $2}' "$state/ports"); node_restart "$n" ;;
      cut-api) pod_cut_api "$n" "${4:?pod IP}" "${5:?on|off}" ;;
      cut-peer) pods_cut_apart "$n" "${4:?pod IP}" "${5:?peer pod IP}" "${6:?on|off}" ;;
      via-proxy) pod_via_proxy "$n" "${4:?pod IP}" "${5:?proxy port}" "${6:?on|off}" ;;
      ctr) shift 3; node_ctr "$n" "$@" ;;
      *) echo "usage: $0 node freeze|thaw|partition|heal|kill|restart|cut-api|cut-peer|via-proxy|ctr N ..." >&2; exit 2 ;;
    esac
    ;;
  apiserver)
    # The API server stopped in its tracks (SIGSTOP) and let go again: every
    # client's connections hang, as on a control plane that stalls.
    pid=$(cat "$state/kube-apiserver.pid")
    case "${2:-}" in
      freeze) kill -STOP "$pid" ;;
      thaw) kill -CONT "$pid" ;;
      *) echo "usage: $0 apiserver freeze|thaw" >&2; exit 2 ;;
    esac
    ;;
  recycle) bindir=$("$here/cachedir.sh"); storage_recycle ;;
  client) shift; exec ip netns exec "$CLIENT_NS" "$@" ;;
  *) echo "usage: $0 up|down|status|kubeconfig|node ...|apiserver freeze|thaw|client ..." >&2; exit 2 ;;
esac
