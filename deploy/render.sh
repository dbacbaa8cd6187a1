#!/usr/bin/env bash
# Renders the plain manifests under deploy/ from the Helm chart, so the two
# cannot drift (`make check-generated` renders again and compares):
#   deploy/base/crd.yaml          the CRD (charts/hapair/crds)
#   deploy/base/hapair.yaml       operator, RBAC, PDB, metrics Service (chart defaults)
#   deploy/overlays/monitoring/monitoring.yaml
#                                 ServiceMonitor, PodMonitor, PrometheusRule, dashboard
#
#   render.sh HELM OUTDIR [CRD]   writes OUTDIR/base/..., OUTDIR/overlays/...
#                                 (CRD: the freshly generated CRD file)
set -euo pipefail
helm=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
chart=$here/../charts/hapair
crd=${3:-$chart/crds/hapair.dev_highavailabilitypairs.yaml}
header='# Generated from charts/hapair by `make generate`: edit the chart, not this file.'
# Release "hapair" in namespace hapair-system; labels say kustomize manages it.
render() {
  "$helm" template hapair "$chart" --namespace hapair-system "$@" \
    | sed -e 's/app.kubernetes.io\/managed-by: Helm/app.kubernetes.io\/managed-by: kustomize/' \
          -e '/^  *helm.sh\/chart: /d'
}
mkdir -p "$out/base" "$out/overlays/monitoring"
{ echo "$header"; cat "$crd"; } > "$out/base/crd.yaml"
{ echo "$header"; render; } > "$out/base/hapair.yaml"
{ echo "$header"; render --set prometheusRule.enabled=true,grafanaDashboard.enabled=true \
    --set metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true \
    --show-only templates/servicemonitor.yaml --show-only templates/podmonitor.yaml \
    --show-only templates/prometheusrule.yaml --show-only templates/dashboard.yaml; } \
  > "$out/overlays/monitoring/monitoring.yaml"
