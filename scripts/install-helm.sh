#!/usr/bin/env bash
# Installs what the Helm chart test (tests/unit/test_helm_chart.py) needs:
#   - helm, built from source with the Go toolchain (the Go module proxy is the only
#     place it can come from here: no prebuilt download), into $(go env GOPATH)/bin;
#   - kubernetes-validate (PyPI) into the project venv, to check rendered manifests
#     against the Kubernetes OpenAPI schemas.
# Idempotent: does nothing when both are already there. Prints the helm path last.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The Go toolchain of this kind of machine lives in /usr/local/go (not always on PATH).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

find_helm() {
  if command -v helm >/dev/null 2>&1; then
    command -v helm
    return 0
  fi
  if command -v go >/dev/null 2>&1; then
    local gobin
    gobin="$(go env GOPATH)/bin/helm"
    if [ -x "$gobin" ]; then
      echo "$gobin"
      return 0
    fi
  fi
  if [ -x "$HOME/go/bin/helm" ]; then
    echo "$HOME/go/bin/helm"
    return 0
  fi
  return 1
}

if ! helm_path="$(find_helm)"; then
  if ! command -v go >/dev/null 2>&1; then
    echo "install-helm: go is not installed; cannot build helm" >&2
    exit 1
  fi
  echo "install-helm: building helm $HELM_VERSION with $(go version | awk '{print $3}') (takes a few minutes)" >&2
  start=$(date +%s)
  # The ldflags are those of helm's own Makefile: without them `helm version` says "v3.22" and
  # `helm template`/`helm lint` assume Kubernetes v1.20 (older than the chart's kubeVersion).
  # K8S_MINOR follows the client-go the release is built with (v0.37 -> Kubernetes 1.37).
  K8S_MINOR="${HELM_K8S_MINOR:-37}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
  done
  # CGO off: a static binary, and no C toolchain needed.
  CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  echo "install-helm: built in $(( $(date +%s) - start )) s" >&2
  helm_path="$(go env GOPATH)/bin/helm"
  [ -x "$helm_path" ] || { echo "install-helm: $helm_path missing after go install" >&2; exit 1; }
fi

if [ -x "$VENV/bin/python" ]; then
  if ! "$VENV/bin/python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "install-helm: installing kubernetes-validate into $VENV" >&2
    "$VENV/bin/pip" install -q kubernetes-validate
  fi
else
  echo "install-helm: no venv at $VENV (run make install first); skipped kubernetes-validate" >&2
fi

echo "$helm_path"
