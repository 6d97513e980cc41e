#!/usr/bin/env bash
# The container image, built here without any image registry:
#
#   1. a Docker daemon of our own (Debian's docker.io), started if it is not running, with its
#      state under $IMAGE_DOCKER_DIR and no say over the host's networking
#      (--iptables=false --bridge=none --ip-forward=false: containers use --network host);
#   2. a Debian bookworm base with Python 3.11 (debootstrap --variant=minbase from the mirror apt
#      uses), imported as localhost/dicom-archive-base:bookworm; the tarball is cached under
#      $IMAGE_CACHE/base and made again only when its recipe (below) changes;
#   3. the web UI's builder base: that base plus the host's Node.js and npm, tagged
#      localhost/dicom-archive-base:bookworm-node (ensure_node_base below);
#   4. the project's image FROM those bases (Dockerfile, classic builder, --network host so that
#      pip reaches PyPI and npm its registry), tagged localhost/dicom-archive:<version>, with the
#      native core's wheel built on this host into build/native (build_native_wheel below).
#
# Usage: scripts/image.sh build|base|daemon|stop|status|env
#   build    all four (the default); writes <repo>/.image.env (DOCKER_HOST, ARCHIVE_IMAGE, ...)
#   base     1 to 3 only
#   daemon   1 only
#   stop     stops the daemon (and its containerd) started by this script; images stay cached
#   status   exit 0 when the daemon answers and the image exists
#   env      prints the lines of .image.env
#
#   IMAGE_CACHE=...        cache directory (default ~/.cache/dicom-archive): the base tarball,
#                          the daemon's state (its images and build cache survive a new clone)
#   IMAGE_DOCKER_DIR=...   the daemon's state (default $IMAGE_CACHE/docker)
#   IMAGE_DEBIAN_MIRROR=   Debian mirror for debootstrap (default: the one apt uses)
#   IMAGE_NAME=...         the image's name (default localhost/dicom-archive:<version>)
#
# Only one daemon runs per state directory: a second checkout reuses the running one. The
# builder stage trusts the host's CA bundle (a TLS-intercepting proxy in front of PyPI); the
# image that runs does not (see the Dockerfile's BUILDER_IMAGE).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${IMAGE_CACHE:-$HOME/.cache/dicom-archive}"
STATE="${IMAGE_DOCKER_DIR:-$CACHE/docker}"
ENV_FILE="$REPO_ROOT/.image.env"
SOCK="$STATE/docker.sock"
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
export DOCKER_HOST="unix://$SOCK"
export DEBIAN_FRONTEND=noninteractive

SUITE=bookworm
BASE_IMAGE=localhost/dicom-archive-base:$SUITE
BUILDER_IMAGE=localhost/dicom-archive-base:$SUITE-build
# The web UI's builder stage: the builder base plus the build host's Node.js and npm (the ones
# `make ui` uses; Debian bookworm's nodejs 18 is too old for Vite 8, and no registry of images
# is reachable). Made again when the base, the CA bundle or the host's Node.js/npm change.
NODE_IMAGE=localhost/dicom-archive-base:$SUITE-node
NODE_MIN=20.19
# What the base holds. Python 3.11 and venv (Debian's), CA certificates (S3, OpenID Connect
# and syslog over TLS); the wheels bring their own native libraries (manylinux), and the
# Dockerfile's builder stage checks with ldd that none is missing.
BASE_PACKAGES=python3,python3-venv,ca-certificates
# Changing the recipe (suite, variant, packages, clean-up) makes a new base.
BASE_RECIPE_VERSION=1
BASE_RECIPE="$SUITE minbase $BASE_PACKAGES clean-v$BASE_RECIPE_VERSION"
BASE_HASH=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)
BASE_TARBALL="$CACHE/base/dicom-archive-base-$SUITE-$BASE_HASH.tar"

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

version() {
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO_ROOT/pyproject.toml"
}
IMAGE="${IMAGE_NAME:-localhost/dicom-archive:$(version)}"

# ---- installation ------------------------------------------------------------------------
apt_install() {
  (( $# )) || return 0
  log "apt-get install $*"
  # Keep the packages' maintainer scripts from starting a system-wide dockerd/containerd.
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added=1
  fi
  {
    apt-get -o DPkg::Lock::Timeout=600 update -q &&
      apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@"
  } >&2 || rc=$?
  (( added )) && rm -f "$policy"
  (( rc == 0 )) || die "apt-get install $* failed (exit $rc)"
}

ensure_packages() {
  local pkgs=()
  [[ -x /usr/sbin/dockerd ]] || pkgs+=(docker.io)
  [[ -x /usr/bin/containerd ]] || pkgs+=(containerd)
  command -v runc >/dev/null || pkgs+=(runc)
  command -v debootstrap >/dev/null || pkgs+=(debootstrap)
  [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || pkgs+=(debian-archive-keyring)
  command -v docker >/dev/null || pkgs+=(docker.io)
  apt_install "${pkgs[@]}"
}

# ---- the daemon --------------------------------------------------------------------------
proc_live() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# pid_alive PIDFILE PATTERN: the pid runs and its command line contains PATTERN.
pid_alive() {
  local pid cmdline
  [[ -s $1 ]] || return 1
  pid=$(head -n 1 "$1")
  [[ $pid =~ ^[0-9]+$ ]] && proc_live "$pid" || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$2"* ]]
}

containerd_running() { pid_alive "$STATE/containerd.pid" "$STATE/containerd/config.toml"; }
dockerd_running() { pid_alive "$STATE/dockerd.pid" "--data-root $STATE/data"; }
docker_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# spawn NAME CMD...: detached, output in $STATE/NAME.log, pid in $STATE/NAME.pid.
spawn() {
  local name=$1; shift
  local pidfile="$STATE/$name.pid" logfile="$STATE/$name.log" i
  rm -f "$pidfile"
  [[ -f $logfile ]] && mv -f "$logfile" "$logfile.prev"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$logfile" 2>&1 9>&- &
  for i in $(seq 50); do [[ -s $pidfile ]] && return 0; sleep 0.1; done
  die "could not start $name"
}

# wait_until SECONDS WHAT CHECK...: poll CHECK once a second.
wait_until() {
  local limit=$1 what=$2 start=$SECONDS; shift 2
  until "$@"; do
    (( SECONDS - start < limit )) || return 1
    sleep 1
  done
}

# dockerd 20.10 would use a containerd it finds at /run/containerd (a cluster's, say) and die
# with it: it gets one of its own, with its state, sockets and config under $STATE.
start_containerd() {
  containerd_running && return 0
  mkdir -p "$STATE/containerd/root" "$STATE/containerd/state"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = "$STATE/containerd/debug.sock"
EOF
  rm -f "$CONTAINERD_SOCK" "$CONTAINERD_SOCK.ttrpc"
  log "starting containerd ($STATE/containerd)"
  spawn containerd containerd --config "$STATE/containerd/config.toml"
  wait_until 30 containerd test -S "$CONTAINERD_SOCK" || {
    tail -n 30 "$STATE/containerd.log" >&2; die "containerd did not start"; }
}

start_daemon() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another image.sh holds $STATE/lock"
  if dockerd_running && docker_answers; then return 0; fi
  start_containerd
  if ! dockerd_running; then
    mkdir -p "$STATE/data" "$STATE/exec"
    echo '{}' >"$STATE/daemon.json"   # not /etc/docker/daemon.json
    rm -f "$SOCK"
    log "starting dockerd ($STATE), socket $SOCK"
    spawn dockerd dockerd --config-file "$STATE/daemon.json" --data-root "$STATE/data" \
      --exec-root "$STATE/exec" --pidfile "$STATE/exec/dockerd.pid" -H "unix://$SOCK" \
      --containerd "$CONTAINERD_SOCK" --iptables=false --ip6tables=false --ip-forward=false \
      --ip-masq=false --bridge=none --userland-proxy=false --exec-opt native.cgroupdriver=cgroupfs
  fi
  wait_until 60 dockerd docker_answers || {
    tail -n 40 "$STATE/dockerd.log" >&2; die "dockerd did not answer on $SOCK within 60 s"; }
}

stop_pid() {
  local name=$1 pidfile=$2 pattern=$3 pid i
  pid_alive "$pidfile" "$pattern" || { rm -f "$pidfile"; return 0; }
  pid=$(head -n 1 "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do proc_live "$pid" || break; sleep 0.2; done
  proc_live "$pid" && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
}

stop_daemon() {
  [[ -d $STATE ]] || return 0
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another image.sh holds $STATE/lock"
  # Containers first (dockerd would stop them too, with its own 10 s grace each).
  if dockerd_running && docker_answers; then
    local running
    running=$(docker ps -q)
    [[ -z $running ]] || docker stop -t 10 $running >/dev/null || true
  fi
  stop_pid dockerd "$STATE/dockerd.pid" "--data-root $STATE/data"
  stop_pid containerd "$STATE/containerd.pid" "$STATE/containerd/config.toml"
  # A killed daemon leaves its mounts; the next start would stumble over them.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v s="$STATE/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

# ---- the base image ----------------------------------------------------------------------
# The Debian mirror apt uses (deb822 sources or a sources.list line for $SUITE), else Debian's CDN.
debian_mirror() {
  if [[ -n ${IMAGE_DEBIAN_MIRROR:-} ]]; then echo "$IMAGE_DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk -v suite="$SUITE" '
      /^[[:space:]]*$/ { if (u && s) { print u; exit } u = ""; s = 0; next }
      $1 == "URIs:" { u = $2 }
      $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == suite) s = 1 }
      END { if (u && s) print u }' "$f" | head -n 1)
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  uri=$(awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /\[/ && $3 == suite { print $2; exit }' \
    /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

make_base_tarball() {
  local root="$CACHE/base/rootfs.$$" mirror t0=$SECONDS
  mirror=$(debian_mirror)
  mkdir -p "$CACHE/base"
  rm -rf "$root"
  log "debootstrap --variant=minbase $SUITE from $mirror (+ $BASE_PACKAGES)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$mirror" \
    >"$CACHE/base/debootstrap.log" 2>&1 || {
    tail -n 30 "$CACHE/base/debootstrap.log" >&2; rm -rf "$root"; die "debootstrap failed"; }
  # What an image does not need: package lists and archives, docs, man pages, locales, logs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/debootstrap
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
  : >"$root/etc/hostname"
  tar -C "$root" --numeric-owner -cf "$BASE_TARBALL.tmp" . || die "tar of the base failed"
  mv -f "$BASE_TARBALL.tmp" "$BASE_TARBALL"
  rm -rf "$root"
  # Tarballs of an older recipe
  find "$CACHE/base" -maxdepth 1 -name "dicom-archive-base-$SUITE-*.tar" ! -path "$BASE_TARBALL" -delete
  log "base tarball $BASE_TARBALL ($(du -m "$BASE_TARBALL" | cut -f1) MB) in $((SECONDS - t0)) s"
}

image_label() {
  docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

ensure_base() {
  local t0=$SECONDS
  if [[ $(image_label "$BASE_IMAGE" org.dicom-archive.base-recipe) != "$BASE_HASH" ]]; then
    [[ -s $BASE_TARBALL ]] || make_base_tarball
    log "docker import $BASE_TARBALL as $BASE_IMAGE"
    docker import \
      --change "LABEL org.dicom-archive.base-recipe=$BASE_HASH" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null || die "docker import failed"
  fi
  # The builder stage's base: the same, trusting the host's CA bundle for pip.
  local ca=/etc/ssl/certs/ca-certificates.crt sum ctx
  sum=$( { echo "$BASE_HASH"; cat "$ca" 2>/dev/null; } | sha256sum | cut -c1-12)
  if [[ $(image_label "$BUILDER_IMAGE" org.dicom-archive.builder) != "$sum" ]]; then
    ctx=$(mktemp -d)
    if [[ -s $ca ]]; then cp "$ca" "$ctx/ca-certificates.crt"; else : >"$ctx/ca-certificates.crt"; fi
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
COPY ca-certificates.crt /etc/ssl/certs/host-ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt
LABEL org.dicom-archive.builder=$sum
EOF
    [[ -s $ca ]] || sed -i '/PIP_CERT/d' "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$BUILDER_IMAGE" "$ctx" >"$CACHE/base/builder-build.log" 2>&1 || {
      tail -n 20 "$CACHE/base/builder-build.log" >&2
      rm -rf "$ctx"; die "could not make $BUILDER_IMAGE"; }
    rm -rf "$ctx"
  fi
  log "base $BASE_IMAGE ready in $((SECONDS - t0)) s"
}

# The host's Node.js (one binary; it links only libc, libstdc++ and libgcc, which the base has)
# and its npm, copied into the builder base. Node.js 20.19+ (Vite 8); apt/NodeSource installs
# put them at /usr/bin/node and /usr/lib/node_modules/npm, a tarball install under /usr/local.
ensure_node_base() {
  local t0=$SECONDS node npm_dir version npm_version sum ctx
  node=$(command -v node) || die "Node.js $NODE_MIN+ is needed to make $NODE_IMAGE (the UI's builder base)"
  node=$(readlink -f "$node")
  version=$("$node" -p 'process.versions.node')
  "$node" -e "const [a, b] = process.versions.node.split('.').map(Number), [x, y] = '$NODE_MIN'.split('.').map(Number);
    process.exit(a > x || (a === x && b >= y) ? 0 : 1)" || die "Node.js $version at $node: $NODE_MIN+ is needed (Vite 8)"
  npm_dir=$(readlink -f "$(dirname "$node")/../lib/node_modules/npm")
  [[ -f $npm_dir/bin/npm-cli.js ]] || die "no npm beside $node (looked in $npm_dir)"
  npm_version=$("$node" -p "require('$npm_dir/package.json').version")
  sum=$(printf '%s node %s npm %s' "$(image_label "$BUILDER_IMAGE" org.dicom-archive.builder)" "$version" "$npm_version" \
    | sha256sum | cut -c1-12)
  if [[ $(image_label "$NODE_IMAGE" org.dicom-archive.node) != "$sum" ]]; then
    ctx=$(mktemp -d)
    cp "$node" "$ctx/node"
    cp -a "$npm_dir" "$ctx/npm"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BUILDER_IMAGE
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/host-ca-certificates.crt
LABEL org.dicom-archive.node=$sum
DOCKERFILE
    [[ -s /etc/ssl/certs/ca-certificates.crt ]] || sed -i '/NODE_EXTRA_CA_CERTS/d' "$ctx/Dockerfile"
    log "making $NODE_IMAGE (Node.js $version, npm $npm_version from $node)"
    DOCKER_BUILDKIT=0 docker build -q -t "$NODE_IMAGE" "$ctx" >"$CACHE/base/node-build.log" 2>&1 || {
      tail -n 20 "$CACHE/base/node-build.log" >&2
      rm -rf "$ctx"; die "could not make $NODE_IMAGE"; }
    rm -rf "$ctx"
  fi
  log "UI builder base $NODE_IMAGE ready in $((SECONDS - t0)) s"
}

# ---- the native core's wheel ----------------------------------------------------------------
# Built here with the host's Rust toolchain (rustup's; Debian's is too old for PyO3) and copied into
# the image (Dockerfile, builder stage): the host is Debian bookworm with Python 3.11, as the base.
build_native_wheel() {
  local pip="$REPO_ROOT/.venv/bin/pip"
  [[ -x $pip ]] || die "no $REPO_ROOT/.venv: run make install first (it builds the native core)"
  rm -rf "$REPO_ROOT/build/native"
  PATH="$HOME/.cargo/bin:$PATH" CARGO_TARGET_DIR="$CACHE/native-target" \
    "$pip" wheel -q --no-deps --wheel-dir "$REPO_ROOT/build/native" "$REPO_ROOT/native" \
    >"$CACHE/native-wheel.log" 2>&1 || { tail -n 30 "$CACHE/native-wheel.log" >&2; die "the native wheel did not build"; }
  log "native wheel $(basename "$REPO_ROOT"/build/native/*.whl)"
}

# ---- the project's image -----------------------------------------------------------------
build_image() {
  local t0=$SECONDS
  build_native_wheel
  log "docker build $IMAGE FROM $BASE_IMAGE"
  DOCKER_BUILDKIT=0 docker build --network host \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
    --build-arg "UI_BUILDER_IMAGE=$NODE_IMAGE" \
    -t "$IMAGE" "$REPO_ROOT" >"$CACHE/image-build.log" 2>&1 || {
    tail -n 40 "$CACHE/image-build.log" >&2; die "docker build failed (log: $CACHE/image-build.log)"; }
  local size
  size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
  log "$IMAGE built in $((SECONDS - t0)) s, $((size / 1000000)) MB"
}

env_lines() {
  echo "DOCKER_HOST=$DOCKER_HOST"
  echo "ARCHIVE_IMAGE=$IMAGE"
  echo "ARCHIVE_BASE_IMAGE=$BASE_IMAGE"
}

write_env() {
  env_lines >"$ENV_FILE.tmp"
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
  grep -qxF .image.env "$REPO_ROOT/.gitignore" 2>/dev/null || echo .image.env >>"$REPO_ROOT/.gitignore"
}

case "${1:-build}" in
  build) ensure_packages; start_daemon; ensure_base; ensure_node_base; build_image; write_env ;;
  base) ensure_packages; start_daemon; ensure_base; ensure_node_base ;;
  daemon) ensure_packages; start_daemon ;;
  stop) stop_daemon ;;
  status) docker_answers && docker image inspect "$IMAGE" >/dev/null 2>&1 ;;
  env) env_lines ;;
  *) echo "usage: $0 build|base|daemon|stop|status|env" >&2; exit 2 ;;
esac
