#!/usr/bin/env bash
# A real, minimal Kubernetes control plane on loopback for hapair's tests:
# etcd, kube-apiserver (RBAC on, service-account tokens working) and
# kube-controller-manager (EndpointSlices, Jobs, garbage collection, namespaces,
# service accounts). There are no nodes: the e2e harness plays the kubelet.
#
#   testbed.sh up        start (or confirm running); prints the kubeconfig path
#   testbed.sh down      stop and remove state; harmless when already stopped
#   testbed.sh status    exit 0 when running and ready
#   testbed.sh kubeconfig  print the kubeconfig path
#
# State lives in $HAPAIR_TESTBED_DIR (default: target/testbed of this checkout),
# so two checkouts never share a control plane. Ports are chosen free at start,
# or fixed with HAPAIR_TESTBED_PORT_BASE (uses BASE..BASE+3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${HAPAIR_TESTBED_DIR:-$repo/target/testbed}
kubeconfig=$state/kubeconfig

log() { echo "testbed: $*" >&2; }

alive() { # name
  local f="$state/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

ready() {
  [ -f "$kubeconfig" ] && alive etcd && alive kube-apiserver && alive kube-controller-manager &&
    "$bindir/kubectl" --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
  if [ -n "${HAPAIR_TESTBED_PORT_BASE:-}" ]; then
    local b=$HAPAIR_TESTBED_PORT_BASE
    etcd_port=$b etcd_peer_port=$((b + 1)) api_port=$((b + 2)) kcm_port=$((b + 3))
    return
  fi
  local picked=() p
  while [ ${#picked[@]} -lt 4 ]; do
    p=$((20000 + RANDOM % 30000))
    if port_free "$p" && [[ " ${picked[*]} " != *" $p "* ]]; then picked+=("$p"); fi
  done
  etcd_port=${picked[0]} etcd_peer_port=${picked[1]} api_port=${picked[2]} kcm_port=${picked[3]}
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
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$pki/apiserver.ext"
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
}

write_kubeconfig() { # file user tokenfile
  local ca
  ca=$(base64 -w0 <"$state/pki/ca.crt")
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $(cat "$3")
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
    echo "$kubeconfig"
    return
  fi
  down_quiet
  mkdir -p "$state"
  pick_ports
  make_pki
  local pki=$state/pki
  start etcd --name testbed --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "testbed=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"
  start kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$state/apiserver-certs" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false --profiling=false \
    --storage-media-type application/json --v 1
  write_kubeconfig "$state/kcm.kubeconfig" system:kube-controller-manager "$pki/kcm.token"
  write_kubeconfig "$kubeconfig" hapair-admin "$pki/admin.token"
  wait_for kube-apiserver 90 "$bindir/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz
  start kube-controller-manager --kubeconfig "$state/kcm.kubeconfig" \
    --authentication-kubeconfig "$state/kcm.kubeconfig" --authorization-kubeconfig "$state/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$state/kcm-certs" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-persistentvolume-binder,-attachdetach,-ttl' \
    --concurrent-gc-syncs 5 --v 1
  wait_for kube-controller-manager 60 curl -sfk "https://127.0.0.1:$kcm_port/healthz"
  # Service-account tokens work when the controllers (which use them) have
  # created the default ServiceAccount and its root CA ConfigMap.
  wait_for "service accounts" 60 "$bindir/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default
  wait_for "root CA publisher" 60 "$bindir/kubectl" --kubeconfig "$kubeconfig" -n default get configmap kube-root-ca.crt
  printf 'etcd=%s\napiserver=%s\ncontroller-manager=%s\nbin=%s\n' "$etcd_port" "$api_port" "$kcm_port" "$bindir" >"$state/ports"
  log "ready: kube-apiserver on https://127.0.0.1:$api_port"
  echo "$kubeconfig"
}

down_quiet() {
  local name pid i
  for name in kube-controller-manager kube-apiserver etcd; do
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
  *) echo "usage: $0 up|down|status|kubeconfig" >&2; exit 2 ;;
esac
