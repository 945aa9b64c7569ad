#!/usr/bin/env bash
# Checks what deploy/ ships, offline: the Prometheus alerting rules (promtool check and
# unit tests), that every metric the rules and the Grafana dashboard query is one the code
# exposes, and (when deploy/k8s exists) the Kubernetes manifests, each overlay rendered
# with `kubectl kustomize` and validated against the Kubernetes schemas in strict mode.
# Part of the test command (scripts/test.sh); installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_tool promtool prometheus
python="${TOOLS_PYTHON:-$(require_py_tools)}"

promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
"$python" scripts/py/check_metric_names.py . deploy/grafana/*.json deploy/prometheus/alerts.yml
echo "metric names: every one the rules and dashboards use is exposed"

if [ -d deploy/k8s ]; then
  require_tool kubectl kubectl
  validator="$(dirname "$python")/kubernetes-validate"
  for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    rendered=$(mktemp)
    kubectl kustomize "$overlay" >"$rendered"
    "$validator" --strict --quiet "$rendered" || {
      echo "deploy/k8s/overlays/$name: manifests do not validate" >&2
      rm -f "$rendered"
      exit 1
    }
    echo "deploy/k8s/overlays/$name: $(grep -c '^kind:' "$rendered") objects valid"
    rm -f "$rendered"
  done
fi
