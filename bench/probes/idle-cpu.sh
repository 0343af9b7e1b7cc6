#!/usr/bin/env bash
# The CPU an idle fetchml stack uses: the pinned nats-server, an api (with its
# scheduler and projector) and four workers, started as the bench starts them,
# left alone for 30 s after a 10 s settle; ms of CPU per second per process
# (1000 = one core). Run from the repository root after
# `cargo build --release --bins` and `./deploy/up && ./deploy/down` (the pinned
# nats-server; deploy/lib.sh's helpers and settings). Needs the Postgres of the
# bench (`postgres://postgres@127.0.0.1:5432`).
source "$(dirname "$0")/../../deploy/lib.sh"
cd "$ROOT"
bin=target/release/fetchml
port=$(free_port)
api_port=$(free_port)
store=$(mktemp -d)
db="fetchml_idle_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$store"
}
trap cleanup EXIT
GOGC="$NATS_GOGC" "$NATS_BIN" -a 127.0.0.1 -p "$port" -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
nats=$!
pids=("$nats")
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
export FETCHML_NATS__URL="nats://127.0.0.1:$port" FETCHML_NATS__NAMESPACE=idle RUST_LOG=warn
wait_port "$port" 20 || die "nats-server did not start; see $store/nats.log"
FETCHML_POSTGRES__URL="postgres://postgres@127.0.0.1:5432/$db" FETCHML_AUTH__USERS_FILE=configs/users.yaml \
  "$bin" api --listen "127.0.0.1:$api_port" >"$store/api.log" 2>&1 &
api=$!
# Workers last and stopped first: they stop cleanly while the broker is up.
pids=("$api" "$nats")
wait_http_ok "http://127.0.0.1:$api_port/readyz" 60 || die "the api did not get ready; see $store/api.log"
workers=()
for i in 1 2 3 4; do
  FETCHML_WORKER__JOB_ROOT="$store/jobs$i" "$bin" worker --concurrency 32 >"$store/worker$i.log" 2>&1 &
  workers+=($!)
done
pids=("${workers[@]}" "$api" "$nats")
sleep 10
pg=$(psql -h 127.0.0.1 -U postgres -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$db'")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A before
watched=("$nats" "$api" "${workers[@]}" $pg)
for p in "${watched[@]}"; do before[$p]=$(ticks "$p"); done
sleep 30
echo "idle for 30 s, ms of CPU per second (1000 = one core):"
for p in "${watched[@]}"; do
  echo "  $(cat "/proc/$p/comm" 2>/dev/null || echo gone) $p: $(( ($(ticks "$p") - before[$p]) * 1000 / $(getconf CLK_TCK) / 30 ))"
done
