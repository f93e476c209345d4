#!/usr/bin/env bash
# Finds, starts or creates the PostgreSQL that FlatRender needs, on a fresh Debian or Ubuntu
# machine too. Everything it prints on stdout is the answer; progress goes to stderr.
#
#   postgres.sh server-url            URL of a server whose user may create databases and roles:
#                                     $FLATRENDER_DATABASE_SERVER_URL if set, else the local server
#                                     on 127.0.0.1:5432 (started if installed but down), else a
#                                     private cluster under $FLATRENDER_DATA_DIR/postgres (port 54329)
#   postgres.sh database-url NAME     server-url's server, database NAME (created if missing)
#   postgres.sh cluster-start DIR PORT   create (first time) and start a private cluster
#   postgres.sh cluster-stop DIR         stop it (fast shutdown)
#   postgres.sh pgbench                  path of pgbench (the server package is installed if missing)
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "need root to run: $*"; exit 1; fi; }

apt_install() {
  log "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_client() {
  command -v psql >/dev/null && command -v pg_dump >/dev/null && return
  apt_install postgresql-client
}

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  apt_install postgresql >/dev/null
  ls -d /usr/lib/postgresql/*/bin | sort -t/ -k5 -n -r | head -n1
}

# Never prompts for a password (-w) and gives up quickly on a silent host.
answers() { PGCONNECT_TIMEOUT=3 psql -w "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

# Runs a server binary as the owner of the cluster directory (initdb refuses root).
run_as_owner() {
  local dir=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_start() {
  local dir=$1 port=$2 bin
  bin=$(bindir)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in $dir"
    run_as_owner "$dir" "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if ! run_as_owner "$dir" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    run_as_owner "$dir" "$bin/pg_ctl" -D "$dir" -w -t 60 -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >&2
  fi
}

cluster_stop() {
  local dir=$1 bin
  bin=$(bindir)
  run_as_owner "$dir" "$bin/pg_ctl" -D "$dir" -w -m fast stop >&2
}

server_url() {
  if [ -n "${FLATRENDER_DATABASE_SERVER_URL:-}" ]; then echo "$FLATRENDER_DATABASE_SERVER_URL"; return; fi
    ensure_client
  # Loopback traffic never leaves the machine: no TLS, whose handshakes cost more than the
  # queries at start-up (see BENCHMARKS.md).
  local url="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
  if answers "$url"; then echo "$url"; return; fi
  if command -v pg_lsclusters >/dev/null; then
    # Start the system cluster only when it is installed and down; one that runs but refuses
    # us (password authentication, say) is left alone for the private cluster below.
    local ver
    ver=$(pg_lsclusters -h 2>/dev/null | awk '$2=="main" && $4=="down" {print $1}' | sort -n | tail -n1)
    if [ -n "$ver" ]; then
      log "starting the system cluster $ver/main"
      ( as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 ) || true
      for _ in $(seq 1 30); do answers "$url" && { echo "$url"; return; }; sleep 1; done
    fi
  fi
  local dir="${FLATRENDER_DATA_DIR:-.data}/postgres"
  cluster_start "$dir" 54329
    url="postgres://postgres@127.0.0.1:54329/postgres?sslmode=disable"
  answers "$url" || { log "the private cluster in $dir does not answer; see $dir/server.log"; exit 1; }
  echo "$url"
}

database_url() {
  local name=$1 server base exists
  server=$(server_url)
  exists=$(psql -w "$server" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'")
  if [ "$exists" != 1 ]; then
    log "creating database $name"
    psql -w "$server" -qc "CREATE DATABASE \"$name\"" >&2
  fi
    local query=""
  case "$server" in *\?*) query="?${server#*\?}"; server=${server%%\?*} ;; esac
  base=${server%/*}
  echo "$base/$name$query"
}

case "${1:-}" in
  server-url) server_url ;;
  database-url) database_url "${2:?database name}" ;;
  cluster-start) cluster_start "${2:?directory}" "${3:?port}" ;;
  cluster-stop) cluster_stop "${2:?directory}" ;;
  pgbench) echo "$(bindir)/pgbench" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
