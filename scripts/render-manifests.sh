#!/usr/bin/env bash
# Render deploy/manifests/ (plain YAML for kubectl users) from the Helm chart. Run it after
# changing deploy/helm/dagserve; tests/deploy/test_chart.py fails while they differ.
#   scripts/render-manifests.sh [OUT_DIR]     (default deploy/manifests; helm: PATH or .tools/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-deploy/manifests}
HELM=${HELM:-$(command -v helm || echo .tools/bin/helm)}
CHART=deploy/helm/dagserve
MON="--api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PrometheusRule"
mkdir -p "$OUT"
header() { echo "# Rendered by scripts/render-manifests.sh from $CHART ($1); do not edit by hand."; }
{ header "defaults: ServiceAccount, Service, Deployment, PodDisruptionBudget"
  "$HELM" template dagserve "$CHART"; } > "$OUT/dagserve.yaml"
# shellcheck disable=SC2086
{ header "with the Prometheus Operator: ServiceMonitor, PrometheusRule"
  "$HELM" template dagserve "$CHART" $MON --show-only templates/servicemonitor.yaml \
      --show-only templates/prometheusrule.yaml; } > "$OUT/monitoring.yaml"
{ header "autoscaling.mode=hpa: the HorizontalPodAutoscaler (needs prometheus-adapter; see docs/scale-out.md)"
  "$HELM" template dagserve "$CHART" --set autoscaling.mode=hpa --show-only templates/hpa.yaml; } > "$OUT/hpa.yaml"
