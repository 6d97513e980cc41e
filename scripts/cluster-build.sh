#!/usr/bin/env bash
# Builds what the test cluster (scripts/cluster.sh) runs and caches it outside the clone,
# so that a second run (and a second clone) reuses it:
#   ~/.cache/dicom-archive/kubernetes/<version>/bin: kube-apiserver, kube-controller-manager,
#       kube-scheduler, kubelet, kube-proxy, kubectl (from the Go module proxy; no release
#       download is reachable here)
#   ~/.cache/dicom-archive/bin: coredns, pause (a static Go binary, the pod sandbox image)
# Why Kubernetes 1.34: 1.35+ kubelets refuse cgroup v1 by default, and these machines run v1.
# Usage: cluster-build.sh [kubernetes|coredns|pause|all]   (default all). Idempotent.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${DICOM_ARCHIVE_CACHE:-$HOME/.cache/dicom-archive}"
K8S_BIN="$CACHE/kubernetes/$K8S_VERSION/bin"
BIN="$CACHE/bin"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "cluster-build: go is not installed" >&2; exit 1; }
NICE=(nice -n 10)

log() { echo "cluster-build: $*" >&2; }

build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local missing=0 c
  for c in "${cmds[@]}"; do [ -x "$K8S_BIN/$c" ] || missing=1; done
  [ "$missing" = 1 ] || return 0
  local start=$(date +%s) src="$CACHE/kubernetes/$K8S_VERSION/src"
  local staging="${K8S_VERSION/v1./v0.}"
  log "building Kubernetes $K8S_VERSION (${cmds[*]}) into $K8S_BIN (about 6-10 minutes)"
  mkdir -p "$src" "$K8S_BIN"
  # k8s.io/kubernetes replaces its staging modules with local paths, so `go install ...@version`
  # refuses it; a module of our own that requires it and replaces every staging module with its
  # published v0.x twin builds.
  cat >"$src/go.mod" <<GOMOD
module local/kubernetes-build

go 1.24

require k8s.io/kubernetes $K8S_VERSION
GOMOD
  local mods=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller
    system-validators)
  local m
  for m in "${mods[@]}"; do
    echo "replace k8s.io/$m => k8s.io/$m $staging" >>"$src/go.mod"
  done
  cat >"$src/tools.go" <<'GOSRC'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GOSRC
  (cd "$src" && GOFLAGS=-mod=mod "${NICE[@]}" go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$src" && GOFLAGS=-mod=mod "${NICE[@]}" go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null)
  # Without the version variables the server says v0.0.0 and a chart's kubeVersion check fails.
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local vpkg=k8s.io/component-base/version
  local ld="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
  ld+=" -X $vpkg.gitTreeState=clean -X $vpkg.gitCommit=0000000000000000000000000000000000000000"
  ld+=" -X $vpkg.buildDate=2026-01-01T00:00:00Z"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
  ld+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for c in "${cmds[@]}"; do
    [ -x "$K8S_BIN/$c" ] && continue
    log "  go build $c"
    (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 "${NICE[@]}" go build -trimpath -ldflags "$ld" \
        -o "$K8S_BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$K8S_BIN/$c.tmp" "$K8S_BIN/$c"
  done
  log "Kubernetes built in $(( $(date +%s) - start )) s"
}

build_coredns() {
  [ -x "$BIN/coredns" ] && return 0
  local start=$(date +%s)
  log "building CoreDNS $COREDNS_VERSION into $BIN (a few minutes)"
  mkdir -p "$BIN"
  CGO_ENABLED=0 GOBIN="$BIN" "${NICE[@]}" go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
  log "CoreDNS built in $(( $(date +%s) - start )) s"
}

build_pause() {
  [ -x "$BIN/pause" ] && return 0
  local src="$CACHE/pause-src"
  mkdir -p "$src" "$BIN"
  # The pod sandbox only has to hold the namespaces open and reap nothing; a static Go
  # binary that waits for SIGTERM/SIGINT does (1.4 MB, no registry needed).
  cat >"$src/main.go" <<'GOSRC'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
GOSRC
  printf 'module pause\n\ngo 1.21\n' >"$src/go.mod"
  (cd "$src" && CGO_ENABLED=0 "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/pause" .)
}

case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  coredns) build_coredns ;;
  pause) build_pause ;;
  all) build_pause; build_kubernetes; build_coredns ;;
  *) echo "usage: $0 [kubernetes|coredns|pause|all]" >&2; exit 2 ;;
esac
