#!/usr/bin/env bash
# What the kustomize and CRD checks need (tests/unit/test_kustomize.py, tests/unit/test_crd_schemas.py):
#   - kustomize, built from its Go module into ~/.cache/dicom-archive/bin;
#   - the CustomResourceDefinitions the chart renders objects of: KEDA's (ScaledObject,
#     TriggerAuthentication) and the Prometheus Operator's (PrometheusRule, ServiceMonitor), taken
#     from their Go modules (the module proxy is the one place they come from here) into
#     ~/.cache/dicom-archive/crds/<project>-<version>/.
# Idempotent: a second run finds everything cached and does nothing.
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"
KEDA_VERSION="${KEDA_VERSION:-v2.18.3}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE="${ARCHIVE_CACHE:-$HOME/.cache/dicom-archive}"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "install-kube-tools: go is not installed" >&2; exit 1; }
mkdir -p "$CACHE/bin" "$CACHE/crds"

bin="$CACHE/bin/kustomize"
if [ ! -x "$bin" ] || ! "$bin" version 2>/dev/null | grep -q "${KUSTOMIZE_VERSION#v}"; then
  echo "install-kube-tools: building kustomize $KUSTOMIZE_VERSION" >&2
  start=$(date +%s)
  CGO_ENABLED=0 GOBIN="$CACHE/bin" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/${KUSTOMIZE_VERSION}" \
    "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"
  echo "install-kube-tools: kustomize built in $(( $(date +%s) - start )) s" >&2
fi

# crds <module@version> <target dir> <path of the CRD files inside the module>
crds() {
  local module="$1" target="$2" inside="$3" dir
  [ -n "$(ls "$target"/*.yaml 2>/dev/null)" ] && return 0
  echo "install-kube-tools: CRDs of $module" >&2
  dir="$(GOFLAGS=-mod=mod go mod download -json "$module" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$target.tmp"
  cp "$dir/$inside"/*.yaml "$target.tmp/"
  chmod u+w "$target.tmp"/*.yaml
  rm -rf "$target" && mv "$target.tmp" "$target"
}
crds "github.com/kedacore/keda/v2@${KEDA_VERSION}" "$CACHE/crds/keda-${KEDA_VERSION}" config/crd/bases
crds "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" \
  "$CACHE/crds/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}" example/prometheus-operator-crd
echo "$bin"
