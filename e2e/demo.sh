#!/usr/bin/env bash
# `make demo`: hapair on a local Kubernetes with two real worker nodes.
# Starts the testbed, installs the operator from the plain manifests
# (deploy/overlays/namespaced: a real Deployment on the nodes, acting in the
# namespace `apps` alone, so the tests' own operators on the same testbed
# never meet it), applies an example pair
# running the e2e test application, waits for it to be Enabled with one member
# on each node, then — while a client writes through the pair's ClusterIP from
# its own network namespace — kills the active member's application with
# kill -9 and shows the failover, timed from the kill to the first write the
# new active acknowledges through the ClusterIP. Leaves everything running;
# `make demo-down` stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
ns=apps
testbed=e2e/testbed/testbed.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

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

pair() {
  cat <<EOF
apiVersion: hapair.dev/v1alpha1
kind: HighAvailabilityPair
metadata:
  name: web
spec:
  template:
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: app
          image: hapair.dev/e2e/app:1
          args: [--listen, "0.0.0.0:8080"]
          ports: [{containerPort: 8080}]
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
  service:
    ports: [{name: http, port: 80, targetPort: 8080}]
  heartbeat: {intervalSeconds: 1, missedThreshold: 3}
  healthCheck:
    httpGet: {path: /healthz, port: 8080}
    periodSeconds: 1
    timeoutSeconds: 1
    failureThreshold: 2
EOF
}

up() {
  say "Starting the testbed: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, two nodes"
  kubeconfig=$("$testbed" up)
  bin=$(e2e/testbed/cachedir.sh)
  k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
  k get nodes -o wide

  say "Installing hapair for the namespace $ns: kubectl apply --server-side -k deploy/overlays/namespaced"
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
  k apply --server-side -k deploy/overlays/namespaced >/dev/null
  k -n hapair-system rollout status deployment/hapair --timeout 120s
  k -n hapair-system get pods -o wide

  say "Applying the example pair (the e2e test application) in namespace $ns"
  pair | k -n "$ns" apply -f -
  enabled() { [ "$(k -n "$ns" get hap web -o jsonpath='{.status.mode}')" = Enabled ]; }
  wait_for "the pair to reach Enabled" 120 enabled
  k -n "$ns" get hap web
  k -n "$ns" get pods -L hapair.dev/role -o wide
  active=$(k -n "$ns" get hap web -o jsonpath='{.status.activeMember}')
  epoch=$(k -n "$ns" get hap web -o jsonpath='{.status.epoch}')
  vip=$(k -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
  node=$(k -n "$ns" get pod "web-$active" -o jsonpath='{.spec.nodeName}')
  cid=$(k -n "$ns" get pod "web-$active" -o jsonpath='{.status.containerStatuses[?(@.name=="app")].containerID}')

  # One write through the ClusterIP, from the client's network namespace;
  # prints the member that acknowledged it, or nothing.
  write() {
    "$testbed" client curl -s -m 1 -o /dev/null -D - -X POST "http://$vip/write?key=demo&value=$1" 2>/dev/null |
      tr -d '\r' | awk 'NR == 1 && $2 != 200 {exit} tolower($1) == "x-hapair-member:" {print $2}'
  }
  echo "A write through the ClusterIP $vip is acknowledged by: $(write 0)"

  say "Killing the active member's application (web-$active on $node) with kill -9"
  start=$(date +%s%N)
  "$testbed" node ctr "${node##*-}" task kill --signal SIGKILL "${cid#containerd://}"
  i=0
  until [ -n "$(write $((++i)))" ] && [ "$(write $((++i)))" != "$active" ]; do sleep 0.05; done
  end=$(date +%s%N)
  wait_for "the new epoch in status" 30 test "$(k -n "$ns" get hap web -o jsonpath='{.status.epoch}')" -gt "$epoch"
  k -n "$ns" get hap web
  k -n "$ns" get hap web -o jsonpath='{.status.lastTransition}' | tr ',' '\n' | sed 's/^/  /'
  echo
  echo "A write through the ClusterIP $vip is acknowledged by: $(write $((++i)))"
  echo "Failover measured from the kill to the first write the new active acknowledged through the ClusterIP: $(((end - start) / 1000000)) ms"

  say "Still running. Look around with:"
  cat <<EOF
  export KUBECONFIG=$kubeconfig
  alias kubectl=$bin/kubectl
  kubectl get nodes -o wide                   # the two worker nodes
  kubectl -n $ns get hap web -o yaml          # status, conditions, history
  kubectl -n $ns get events                   # every transition
  kubectl -n $ns get pods -L hapair.dev/role -o wide
  kubectl -n hapair-system logs deploy/hapair # the operator
  $testbed client iptables -t nat -S | grep web   # kube-proxy's rules for the VIP
  $testbed node freeze 1 / thaw 1 / partition 1 / heal 1 / kill 1 / restart 1
Stop everything with: make demo-down
EOF
}

case "${1:-up}" in
  up) up ;;
  down) "$testbed" down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
