#!/usr/bin/env bash
# `make demo`: hapair on a local control plane. Starts the testbed, the
# operator and the harness's kubelet stand-in, applies the example pair, waits
# for it to be Enabled, kills the active member's application with kill -9,
# and shows the failover with its measured time. Leaves everything running;
# `make demo-down` stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
state=${HAPAIR_DEMO_DIR:-$repo/target/demo}
ns=hapair-demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_pid() {
  local f=$state/$1.pid sig=${2:-TERM}
  if [ -f "$f" ]; then
    kill "-$sig" "$(cat "$f")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  fi
}

down() {
  stop_pid kubelet INT
  stop_pid operator
  e2e/testbed/testbed.sh down
  rm -rf "$state"
}

wait_for() { # description seconds command...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: timed out waiting for $what" >&2
  return 1
}

up() {
  say "Starting the local control plane (etcd, kube-apiserver, kube-controller-manager)"
  kubeconfig=$(e2e/testbed/testbed.sh up)
  bin=$(e2e/testbed/cachedir.sh)
  k() { "$bin/kubectl" --kubeconfig "$kubeconfig" -n "$ns" "$@"; }
  say "Building hapair"
  cargo build -q --bins --examples
  mkdir -p "$state"
  stop_pid kubelet INT
  stop_pid operator

  say "Installing the CRD and starting the operator"
  k apply --server-side -f crds/hapair.dev_highavailabilitypairs.yaml
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
  KUBECONFIG=$kubeconfig HAPAIR_WATCH_NAMESPACES=$ns POD_NAMESPACE=$ns HAPAIR_AGENT_IMAGE=hapair:demo \
    HAPAIR_METRICS_ADDR=127.0.0.1:0 HAPAIR_HEALTH_ADDR=127.0.0.1:0 \
    setsid target/debug/hapair operator >"$state/operator.log" 2>&1 </dev/null &
  echo $! >"$state/operator.pid"
  HAPAIR_TESTBED_KUBECONFIG=$kubeconfig HAPAIR_DEMO_DIR=$state \
    setsid target/debug/examples/hapair-e2e-kubelet "$ns" >"$state/kubelet.log" 2>&1 </dev/null &
  echo $! >"$state/kubelet.pid"

  say "Applying deploy/examples/minimal.yaml"
  k apply -f deploy/examples/minimal.yaml
  enabled() { [ "$(k get hap web -o jsonpath='{.status.mode}')" = Enabled ]; }
  wait_for "the pair to reach Enabled" 90 enabled
  k get hap web
  k get pods -L hapair.dev/role -o wide
  active=$(k get hap web -o jsonpath='{.status.activeMember}')
  ip=$(k get pod "web-$active" -o jsonpath='{.status.podIP}')
  epoch=$(k get hap web -o jsonpath='{.status.epoch}')
  echo "VIP Service web -> $(k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{.items[*].endpoints[*].addresses[*]}')"

  say "Killing the active member's application (web-$active, $ip) with kill -9"
  start=$(date +%s%N)
  pkill -9 -f "hapair-e2e-app --listen $ip:8080"
  moved() { [ "$(k get hap web -o jsonpath='{.status.epoch}')" -gt "$epoch" ]; }
  wait_for "the failover" 60 moved
  served() { [ -n "$(k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[*]}')" ] &&
    [ "$(k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{.items[*].endpoints[*].addresses[*]}')" != "$ip" ]; }
  wait_for "the VIP to follow" 30 served
  end=$(date +%s%N)
  k get hap web
  k get hap web -o jsonpath='{.status.lastTransition}' | tr ',' '\n' | sed 's/^/  /'
  echo
  echo "VIP Service web -> $(k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{.items[*].endpoints[*].addresses[*]}')"
  echo "Failover measured from the kill to the VIP serving the new active: $(((end - start) / 1000000)) ms"

  say "Still running. Look around with:"
  cat <<EOF
  export KUBECONFIG=$kubeconfig
  alias kubectl=$bin/kubectl
  kubectl -n $ns get hap web -o yaml        # status, conditions, history
  kubectl -n $ns get events                  # every transition
  kubectl -n $ns get pods -L hapair.dev/role
  tail -f $state/operator.log
Stop everything with: make demo-down
EOF
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
