#!/usr/bin/env bash
# The test cluster: a real one-node Kubernetes on this machine with the chart installed
# (docs/deploy.md, "The test cluster"). Nothing here needs an image registry.
#
#   etcd, containerd, runc, CNI plugins   Debian packages (scripts/system-deps.sh)
#   kube-apiserver, controller-manager,   v1.34.4 built from the Go module proxy, cached in
#   scheduler, kubelet, kube-proxy        ~/.cache/dicom-archive/kubernetes (scripts/cluster-build.sh)
#   CoreDNS, the pause image              ~/.cache/dicom-archive/bin (same script)
#   helm                                  scripts/install-helm.sh
#   the archive's image                   scripts/image.sh (a private dockerd), loaded into
#                                         containerd with `docker save | ctr import`
#   PostgreSQL, RabbitMQ, MinIO,          a second set of scripts/services.sh on the cluster's
#   OpenSearch                            bridge (10.88.0.1, ports +50): outside the cluster,
#                                         as managed services would be
#
# Usage: scripts/cluster.sh up|down|status|env|restart-broker
#   up      brings everything up (idempotent; reuses what runs and what was built), installs or
#           upgrades the release and writes .cluster/kubeconfig and .cluster/env
#   down    uninstalls nothing in particular: stops every process it started, removes the
#           pods' mounts, veths, iptables chains, cgroups and .cluster, and restores the
#           sysctls Kubernetes changed
#   status  exit 0 when the API server answers and the release's pods are Ready
#   env     prints .cluster/env
#   restart-broker  stops and starts the backends' RabbitMQ (bench/cluster_failures.py)
#
# Networking: a bridge cni0 with 10.88.0.1/16 (pods get 10.88.0.0/16 from host-local), the
# API server, kubelet and kube-proxy bound there; Services in 10.96.0.0/16; NodePorts answer on
# 127.0.0.1 (kube-proxy nodePortAddresses) and on the bridge. CoreDNS runs as a host process on
# 10.88.0.1:53 (the kubelet's clusterDNS), so no DNS image or RBAC is needed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CL="$ROOT/.cluster"
CACHE="${DICOM_ARCHIVE_CACHE:-$HOME/.cache/dicom-archive}"
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
K8S_BIN="$CACHE/kubernetes/$K8S_VERSION/bin"
CACHE_BIN="$CACHE/bin"
# Runtime state that must stay short (unix socket paths) or on tmpfs.
RUN=/run/dicom-archive-cluster

BRIDGE=cni0
BRIDGE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_PORT=6443
ETCD_PORT=32379
ETCD_PEER_PORT=32380
NODE=dicom-archive-node
NAMESPACE="${CLUSTER_NAMESPACE:-dicom-archive}"
RELEASE="${CLUSTER_RELEASE:-archive}"
CHART="$ROOT/deploy/helm/dicom-archive"
# The backends' second set (scripts/services.sh), reachable from the pods.
SVC_OFFSET=50
SVC_DIR="$CL/services"
SVC_ENV="$CL/services.env"
SVC_LIST=pg,rabbitmq,minio,opensearch
CONTAINERD_SOCK="$RUN/containerd.sock"
PAUSE_IMAGE=localhost/pause:3.10
TIMEOUT="${CLUSTER_TIMEOUT:-300}"   # seconds for each wait
# Host settings the kubelet, kube-proxy and the bridge change; `down` puts them back.
SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.conf.all.route_localnet
  net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)

export PATH="$CL/bin:/usr/local/go/bin:/usr/sbin:/sbin:$PATH"
export KUBECONFIG="$CL/kubeconfig"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
  printf '[cluster] ERROR: %s\n' "$1" >&2
  shift
  local f
  for f in "$@"; do
    [[ -f $f ]] && { printf '[cluster] ---- last 30 lines of %s ----\n' "$f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

# wait_until SECONDS WHAT CMD...: run CMD every half second until it succeeds.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.5
  done
  log "$what: ok"
}

# write_file FILE: stdin into FILE, only when it differs (kube-proxy exits when its configuration
# file is written to, even with the same content; containerd reloads on a CNI file change).
write_file() {
  local tmp="$1.tmp.$$"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

pid_running() {  # NAME: the process recorded in $CL/pids/NAME runs (and is not a zombie)
  local f="$CL/pids/$1" pid stat
  [[ -s $f ]] || return 1
  pid=$(cat "$f")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# spawn NAME CMD...: start CMD in its own session with output in $CL/logs/NAME.log.
spawn() {
  local name=$1; shift
  pid_running "$name" && return 0
  mkdir -p "$CL/logs" "$CL/pids"
  log "starting $name"
  setsid "$@" >"$CL/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$CL/pids/$name"
}

# ---- prerequisites -------------------------------------------------------------------------
prerequisites() {
  bash "$ROOT/scripts/system-deps.sh" >&2
  bash "$SCRIPT_DIR/cluster-build.sh" all
  local helm
  # (without our own bin folder on PATH: its helm is the link made below)
  helm=$(PATH="${PATH#"$CL/bin:"}" bash "$SCRIPT_DIR/install-helm.sh" | tail -n 1)
  helm=$(readlink -f "$helm")
  mkdir -p "$CL/bin"
  # The tests use these, not a kubectl on PATH (/usr/bin/kubectl may be an old dispatcher).
  ln -sf "$K8S_BIN/kubectl" "$CL/bin/kubectl"
  ln -sf "$helm" "$CL/bin/helm"
}

# ---- certificates and kubeconfig -----------------------------------------------------------
pki() {
  local d="$CL/pki"
  [[ -f $d/admin.crt ]] && return 0
  log "making the cluster's CA and certificates (openssl)"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dicom-archive-test-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    # API server: the bridge address, loopback and the first Service IP (in-cluster clients).
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key \
      -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:%s,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
      "$BRIDGE_IP" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # One client identity (system:masters) for every component and the tests: a test cluster.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout admin.key \
      -out admin.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile admin.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

kubeconfig() {
  local d="$CL/pki"
  write_file "$CL/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dicom-archive-test
  cluster:
    server: https://$BRIDGE_IP:$API_PORT
    certificate-authority: $d/ca.crt
users:
- name: admin
  user:
    client-certificate: $d/admin.crt
    client-key: $d/admin.key
contexts:
- name: dicom-archive-test
  context: {cluster: dicom-archive-test, user: admin}
current-context: dicom-archive-test
EOF
  chmod 600 "$CL/kubeconfig"
}

# ---- host networking -----------------------------------------------------------------------
save_sysctls() {
  [[ -f $CL/sysctl.orig ]] && return 0
  local k
  for k in "${SYSCTLS[@]}"; do
    [[ -e /proc/sys/${k//.//} ]] && echo "$k=$(sysctl -n "$k")"
  done >"$CL/sysctl.orig"
}

network() {
  save_sysctls
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE $BRIDGE_IP/16"
    ip link add "$BRIDGE" type bridge
    touch "$CL/bridge.created"
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_IP/" || ip addr add "$BRIDGE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Pods reach Services (DNAT by kube-proxy) also when client and server share the bridge.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1 2>/dev/null || true
  mkdir -p "$CL/cni/net.d"
  write_file "$CL/cni/net.d/10-dicom-archive.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dicom-archive",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$CL/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# ---- processes -----------------------------------------------------------------------------
start_etcd() {
  mkdir -p "$CL/etcd"
  spawn etcd etcd --name "$NODE" --data-dir "$CL/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 2147483648 --snapshot-count 10000
  wait_until 60 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health" ||
    die "etcd did not come up" "$CL/logs/etcd.log"
}

start_control_plane() {
  local d="$CL/pki"
  spawn kube-apiserver "$K8S_BIN/kube-apiserver" \
    --bind-address="$BRIDGE_IP" --advertise-address="$BRIDGE_IP" --secure-port="$API_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
    --client-ca-file="$d/ca.crt" --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --kubelet-client-certificate="$d/admin.crt" --kubelet-client-key="$d/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --authorization-mode=RBAC --allow-privileged=true --profiling=false \
    --enable-priority-and-fairness=false --v=1
  wait_until "$TIMEOUT" kube-apiserver "$K8S_BIN/kubectl" get --raw /readyz ||
    die "kube-apiserver did not become ready" "$CL/logs/kube-apiserver.log"
  spawn kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG" --authentication-kubeconfig="$KUBECONFIG" \
    --authorization-kubeconfig="$KUBECONFIG" --bind-address=127.0.0.1 \
    --service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" --cluster-name=dicom-archive-test \
    --leader-elect=false --use-service-account-credentials=false --profiling=false --v=1
  spawn kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$KUBECONFIG" \
    --authentication-kubeconfig="$KUBECONFIG" --authorization-kubeconfig="$KUBECONFIG" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

start_containerd() {
  mkdir -p "$RUN" "$CL/containerd"
  if [[ ! -f $CL/containerd/config.toml ]]; then
    # `containerd config default` with our paths. restrict_oom_score_adj: root here lacks
    # CAP_SYS_RESOURCE, and runc fails every sandbox ("can't get final child's PID from pipe")
    # when it may not write a negative oom_score_adj.
    containerd config default | sed \
      -e "s|^root = .*|root = \"$CL/containerd/root\"|" \
      -e "s|^state = .*|state = \"$RUN/containerd\"|" \
      -e "/^\[grpc\]/,/^\[/ s|^  address = .*|  address = \"$CONTAINERD_SOCK\"|" \
      -e "/^\[ttrpc\]/,/^\[/ s|^  address = .*|  address = \"$RUN/containerd-ttrpc.sock\"|" \
      -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
      -e "s|sandbox_image = .*|sandbox_image = \"$PAUSE_IMAGE\"|" \
      -e "s|bin_dir = .*|bin_dir = \"/usr/lib/cni\"|" \
      -e "s|conf_dir = .*|conf_dir = \"$CL/cni/net.d\"|" \
      -e "s|path = \"/opt/containerd\"|path = \"$CL/containerd/opt\"|" \
      >"$CL/containerd/config.toml"
    grep -q "restrict_oom_score_adj = true" "$CL/containerd/config.toml" ||
      die "containerd config: restrict_oom_score_adj not set"
  fi
  # /run/netns a shared mount point of its own before a pod's namespace is mounted in it, as
  # `ip netns add` makes it. Otherwise the first `ip netns add` afterwards (the HTTP exposure test
  # runs one) binds /run/netns over itself, recursively: the pods' namespace mounts end up twice,
  # the originals hidden beneath, and removing a pod's sandbox fails with EBUSY (pods stay
  # Terminating).
  mkdir -p /run/netns
  mountpoint -q /run/netns || mount --bind /run/netns /run/netns
  mount --make-shared /run/netns
  spawn containerd containerd --config "$CL/containerd/config.toml"
  wait_until 60 containerd ctr --address "$CONTAINERD_SOCK" version ||
    die "containerd did not come up" "$CL/logs/containerd.log"
}

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# image_loaded REF: containerd (k8s.io namespace) has REF.
image_loaded() { ctr_ images ls -q | grep -qx "$1"; }

load_images() {
  # shellcheck disable=SC1091
  source "$ROOT/.image.env"
  export DOCKER_HOST
  if ! image_loaded "$PAUSE_IMAGE"; then
    log "building $PAUSE_IMAGE (static binary FROM scratch) and loading it"
    local ctx="$CL/pause-image"
    mkdir -p "$ctx"
    cp "$CACHE_BIN/pause" "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$PAUSE_IMAGE" "$ctx" >"$CL/logs/pause-image.log" 2>&1 ||
      die "docker build of $PAUSE_IMAGE failed" "$CL/logs/pause-image.log"
    docker save "$PAUSE_IMAGE" | ctr_ images import - >/dev/null
  fi
  # The archive's image: load it when containerd's copy differs (a rebuilt image, same tag).
  local want have
  want=$(docker image inspect -f '{{.Id}}' "$ARCHIVE_IMAGE")
  have=$(cat "$CL/archive-image.id" 2>/dev/null || true)
  if [[ $want != "$have" ]] || ! image_loaded "$ARCHIVE_IMAGE"; then
    log "loading $ARCHIVE_IMAGE into containerd"
    docker save "$ARCHIVE_IMAGE" | ctr_ images import - >/dev/null
    echo "$want" >"$CL/archive-image.id"
  fi
}

start_node() {
  local d="$CL/pki"
  mkdir -p "$CL/kubelet"
  write_file "$CL/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $d/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
# These machines run cgroup v1; 1.35+ kubelets refuse it, 1.34 does with this.
failCgroupV1: false
clusterDNS: [$BRIDGE_IP]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
tlsCertFile: $d/apiserver.crt
tlsPrivateKeyFile: $d/apiserver.key
# A shared test machine: never evict for disk or memory, never collect our images.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  spawn kubelet "$K8S_BIN/kubelet" --config="$CL/kubelet/config.yaml" --kubeconfig="$KUBECONFIG" \
    --hostname-override="$NODE" --node-ip="$BRIDGE_IP" --v=1
  write_file "$CL/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG}
mode: iptables
bindAddress: $BRIDGE_IP
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
# NodePorts answer on loopback (the tests' endpoints) and on the bridge.
nodePortAddresses: ["127.0.0.0/8", "$POD_CIDR"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table sizes and timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  spawn kube-proxy "$K8S_BIN/kube-proxy" --config="$CL/kube-proxy.yaml" --v=1
  # CoreDNS on the host, on the bridge address (the kubelet's clusterDNS).
  write_file "$CL/Corefile" <<EOF
.:53 {
    bind $BRIDGE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 10
}
EOF
  spawn coredns "$CACHE_BIN/coredns" -conf "$CL/Corefile"
  wait_until "$TIMEOUT" "node $NODE Ready" node_ready ||
    die "node $NODE is not Ready" "$CL/logs/kubelet.log"
}

node_ready() {
  [[ $(kubectl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# ---- backends and the release --------------------------------------------------------------
backends() {
  SERVICES_BIND_ADDRESS=$BRIDGE_IP SERVICES_CLIENT_NETWORKS=$POD_CIDR SERVICES_PORT_OFFSET=$SVC_OFFSET \
    SERVICES_DIR="$SVC_DIR" SERVICES_ENV_FILE="$SVC_ENV" SERVICES="$SVC_LIST" \
    bash "$ROOT/scripts/services.sh" start >&2
}

# The broker restarted under load (bench/cluster_failures.py): stopped, then started again.
restart_broker() {
  local svc=(SERVICES_BIND_ADDRESS=$BRIDGE_IP SERVICES_CLIENT_NETWORKS=$POD_CIDR SERVICES_PORT_OFFSET=$SVC_OFFSET
             SERVICES_DIR="$SVC_DIR" SERVICES_ENV_FILE="$SVC_ENV" SERVICES=rabbitmq)
  env "${svc[@]}" bash "$ROOT/scripts/services.sh" stop >&2
  env "${svc[@]}" bash "$ROOT/scripts/services.sh" start >&2
}

values() {
  # shellcheck disable=SC1090
  source "$SVC_ENV"
  local s3=${MINIO_OBJECT_STORE:?services.env has no MINIO_OBJECT_STORE}
  local tag=${ARCHIVE_IMAGE##*:} repo=${ARCHIVE_IMAGE%:*}
  cat >"$CL/values.yaml" <<EOF
# Written by scripts/cluster.sh: the test release on the one-node cluster.
image: {repository: "$repo", tag: "$tag", pullPolicy: Never}
backends:
  objectStore: "$s3"
  s3AccessKey: "$MINIO_ACCESS_KEY"
  s3SecretKey: "$MINIO_SECRET_KEY"
  queue: "$ARCHIVE_QUEUE"
  catalog: "$ARCHIVE_CATALOG"
  search: "$ARCHIVE_SEARCH"
# Fixed replicas: there is no metrics-server for HPAs here. Small requests: 2 shared cores.
scp:
  replicaCount: 2
  autoscaling: {enabled: false}
  service: {type: NodePort}
  resources: {requests: {cpu: 50m, memory: 128Mi}}
  dataSizeLimit: 2Gi
indexer:
  replicaCount: 1
  autoscaling: {enabled: false}
  resources: {requests: {cpu: 50m, memory: 128Mi}}
forwarder:
  replicaCount: 1
  autoscaling: {enabled: false}
  resources: {requests: {cpu: 50m, memory: 128Mi}}
  dataSizeLimit: 2Gi
query:
  replicaCount: 1
  autoscaling: {enabled: false}
  service: {type: NodePort}
  resources: {requests: {cpu: 50m, memory: 128Mi}}
  dataSizeLimit: 2Gi
migrate:
  resources: {requests: {cpu: 50m, memory: 128Mi}}
EOF
}

install_release() {
  values
  kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null
  # The chart's pods meet the restricted Pod Security Standard: make the namespace enforce it.
  kubectl label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted >/dev/null
  log "helm upgrade --install $RELEASE (namespace $NAMESPACE)"
  helm upgrade --install "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$CL/values.yaml" \
    --wait --timeout 10m >"$CL/logs/helm.log" 2>&1 ||
    { kubectl -n "$NAMESPACE" get pods,jobs -o wide >&2 || true; die "helm install failed" "$CL/logs/helm.log"; }
}

node_port() {  # SERVICE PORTNAME
  kubectl -n "$NAMESPACE" get service "$1" -o "jsonpath={.spec.ports[?(@.name==\"$2\")].nodePort}"
}

write_env() {
  local fullname scp query dicom http qdicom key
  # The chart names resources <release>-<chart> unless the release name contains the chart's.
  fullname=$RELEASE-dicom-archive
  [[ $RELEASE == *dicom-archive* ]] && fullname=$RELEASE
  dicom=$(node_port "$fullname-scp" dicom)
  http=$(node_port "$fullname-query" http)
  qdicom=$(node_port "$fullname-query" dicom)
  [[ -n $dicom && -n $http && -n $qdicom ]] || die "no NodePorts on $fullname-scp/-query"
  # The API answers API keys only (no OpenID issuer here): a writer's key for the tests, made
  # once per release and kept (only its hash is in the catalog).
  key=$(cat "$CL/api-key" 2>/dev/null || true)
  if [[ -z $key ]]; then
    key=$(kubectl -n "$NAMESPACE" exec "deploy/$fullname-query" -- \
      dicom-archive api-key create "cluster-tests-$(date +%s)" --role writer | tail -n 1)
    [[ -n $key ]] || die "api-key create printed nothing"
    (umask 077; echo "$key" >"$CL/api-key")
  fi
  local aet
  aet=$(helm -n "$NAMESPACE" get values "$RELEASE" -a -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["settings"]["aet"])')
  cat >"$CL/env" <<EOF
DICOM_ENDPOINT=127.0.0.1:$dicom
HTTP_ENDPOINT=http://127.0.0.1:$http
QUERY_DICOM_ENDPOINT=127.0.0.1:$qdicom
AET=$aet
HTTP_AUTHORIZATION=Bearer $key
KUBECONFIG=$KUBECONFIG
NAMESPACE=$NAMESPACE
RELEASE=$RELEASE
FULLNAME=$fullname
CHART=$CHART
VALUES=$CL/values.yaml
CLUSTER_BIN=$CL/bin
EOF
  chmod 600 "$CL/env"
  log "wrote $CL/env"
}

up() {
  local start=$(date +%s)
  mkdir -p "$CL"
  # The backends' ports out of the kernel's ephemeral range now, not when they start: the build
  # and the node open thousands of connections before, and one of them held RabbitMQ's
  # distribution port once (dist_port_already_used).
  SERVICES_PORT_OFFSET=$SVC_OFFSET bash "$ROOT/scripts/services.sh" reserve >&2
  # The lead's .services.env is not ours: the release gets the cluster's own set.
  prerequisites
  pki
  kubeconfig
  network
  start_etcd
  start_control_plane
  start_containerd
  bash "$ROOT/scripts/image.sh" build >&2
  load_images
  start_node
  backends
  install_release
  write_env
  log "up in $(( $(date +%s) - start )) s"
}

# ---- teardown ------------------------------------------------------------------------------
stop_process() {  # NAME [SECONDS]
  local name=$1 limit=${2:-20} f="$CL/pids/$1" pid
  [[ -s $f ]] || return 0
  pid=$(cat "$f")
  if pid_running "$name"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + limit ))
    while pid_running "$name" && (( $(date +%s) < deadline )); do sleep 0.2; done
    pid_running "$name" && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

down() {
  local start=$(date +%s)
  [[ -d $CL ]] || { log "nothing to stop"; return 0; }
  log "stopping the test cluster"
  # Pods first, through the runtime (the kubelet would restart them): stop the kubelet, then
  # every sandbox and container.
  stop_process kubelet 20
  if [[ -S $CONTAINERD_SOCK ]]; then
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  local name
  for name in coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    stop_process "$name" 20
  done
  # The runtime's shims, if any outlived containerd (they are not in its process group).
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $CONTAINERD_SOCK" || true); do
    kill -KILL "$p" 2>/dev/null || true
  done
  # The backends' second set.
  if [[ -d $SVC_DIR ]]; then
    SERVICES_BIND_ADDRESS=$BRIDGE_IP SERVICES_PORT_OFFSET=$SVC_OFFSET SERVICES_DIR="$SVC_DIR" \
      SERVICES_ENV_FILE="$SVC_ENV" SERVICES="$SVC_LIST" bash "$ROOT/scripts/services.sh" stop >&2 || true
  fi
  # Mounts: the kubelet's volumes, containerd's snapshots and sandboxes' namespaces.
  local m
  for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^(/var/lib/kubelet|$RUN|$CL|/run/netns/cni-)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # /run/netns is bound onto itself (start_containerd, or `ip netns`); a pod's namespace mounted
  # before that (a cluster left by an older script) is hidden under the bind and can be neither
  # unmounted nor removed through it.
  if mountpoint -q /run/netns 2>/dev/null; then
    umount -l /run/netns 2>/dev/null || true
    for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^/run/netns/cni-"); do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  rm -f /run/netns/cni-* 2>/dev/null || log "left: $(ls /run/netns)"
  rmdir /run/netns 2>/dev/null || true
  # Network: the pods' veths, the bridge, kube-proxy's and the CNI plugins' iptables rules.
  local v
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  if [[ -f $CL/bridge.created ]]; then ip link del "$BRIDGE" 2>/dev/null || true; fi
  iptables_cleanup
  # cgroups the kubelet made (cgroup v1: one tree per controller).
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # Host settings back as they were.
  if [[ -f $CL/sysctl.orig ]]; then
    while IFS= read -r line; do sysctl -qw "$line" >/dev/null 2>&1 || true; done <"$CL/sysctl.orig"
  fi
  rm -rf /var/lib/kubelet /var/log/pods /var/log/containers "$RUN"
  rm -rf "$CL"
  log "stopped in $(( $(date +%s) - start )) s"
}

iptables_cleanup() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null 2>&1 || continue
    for table in filter nat mangle; do
      # Jumps into KUBE-*/CNI-* chains from the built-in chains, then the chains themselves.
      "$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' |
        while IFS= read -r rule; do
          # the rule as -S prints it, shell-quoted (comments have spaces)
          eval "\"\$ipt\" -t \"\$table\" ${rule/-A /-D }" 2>/dev/null || true
        done || true
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  # The bridge plugin's masquerade rule for the pod network.
  iptables -t nat -S POSTROUTING 2>/dev/null | grep -F -- "$POD_CIDR" | while IFS= read -r rule; do
    eval "iptables -t nat ${rule/-A /-D }" 2>/dev/null || true
  done || true
}

status() {
  [[ -f $CL/env ]] || { echo "no cluster (.cluster/env missing)"; return 1; }
  kubectl get --raw /readyz >/dev/null 2>&1 || { echo "API server down"; return 1; }
  kubectl -n "$NAMESPACE" get pods -o wide
  kubectl -n "$NAMESPACE" wait --for=condition=Ready pods -l app.kubernetes.io/instance="$RELEASE" \
    --timeout=5s >/dev/null
}

case "${1:-}" in
  up) up ;;
  backends) mkdir -p "$CL"; network; backends ;;   # only the bridge and the backends (a step of up)
  down) down ;;
  status) status ;;
  env) cat "$CL/env" ;;
  restart-broker) restart_broker ;;
  *) echo "usage: $0 up|down|status|env|restart-broker" >&2; exit 2 ;;
esac
