#!/bin/bash
# How fast one worker carries its jobs' log lines, on a given number of runtime
# threads (BENCHMARKS.md, twelfth session). Starts its own nats-server, api and
# worker on loopback and a scratch database, runs JOBS jobs at once that each
# print LINES lines, and prints the span from the first start to the last end
# and the worker's CPU (clock ticks). Needs a release build and the pinned
# nats-server (./deploy/up or ./deploy/test installs it), Postgres on
# 127.0.0.1:5432.
#
#   bench/probes/worker-log-throughput.sh THREADS JOBS LINES
#   bench/probes/worker-log-throughput.sh 1 4 500000
set -u
THREADS=$1; JOBS=$2; LINES=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release/fetchml
D=$(mktemp -d)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
APORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DB=fetchml_logprobe_$$
NP= AP= WP=
cleanup() {
  for p in $WP $AP $NP; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  rm -rf "$D"
}
trap cleanup EXIT
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB"
$ROOT/.fetchml/nats/bin/nats-server -a 127.0.0.1 -p $PORT -js -sd $D/store > $D/nats.log 2>&1 & NP=$!
KEYOUT=$($BIN keygen --user alice --role admin)
KEY=$(echo "$KEYOUT" | grep -o 'fml_[0-9a-f_]*' | head -1)
echo "users:" > $D/users.yaml; echo "$KEYOUT" | sed -n '/- name: alice/,$p' >> $D/users.yaml
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
export FETCHML_NATS__URL=nats://127.0.0.1:$PORT FETCHML_NATS__NAMESPACE=logprobe RUST_LOG=warn
FETCHML_AUTH__USERS_FILE=$D/users.yaml FETCHML_POSTGRES__URL=postgres://postgres@127.0.0.1:5432/$DB $BIN api --listen 127.0.0.1:$APORT > $D/api.log 2>&1 & AP=$!
FETCHML_RUNTIME__THREADS=$THREADS FETCHML_WORKER__JOB_ROOT=$D/jobs $BIN worker --concurrency $JOBS > $D/worker.log 2>&1 & WP=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$APORT/readyz >/dev/null && break; sleep 0.1; done
sleep 1
IDS=()
for j in $(seq $JOBS); do
  id=$(curl -s -H "Authorization: Bearer $KEY" -H 'content-type: application/json' http://127.0.0.1:$APORT/v1/jobs \
    -d "{\"command\":[\"sh\",\"-c\",\"yes 'step 12345 loss 0.5123 accuracy 0.9123 lr 0.001 epoch 3' | head -n $LINES\"]}" | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')
  IDS+=($id)
done
for id in "${IDS[@]}"; do
  for i in $(seq 6000); do
    st=$(curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:$APORT/v1/jobs/$id | python3 -c 'import sys,json;d=json.load(sys.stdin);print(d.get("state"), d.get("started_at"), d.get("finished_at"))')
    case "$st" in succeeded*|failed*|timed_out*|cancelled*|dead*) echo "$st" >> $D/done; break;; esac
    sleep 0.2
  done
done
python3 - $D/done <<'PY'
import sys,datetime
rows=[l.split() for l in open(sys.argv[1])]
p=lambda s: datetime.datetime.fromisoformat(s.replace('Z','+00:00'))
st=min(p(r[1]) for r in rows); fi=max(p(r[2]) for r in rows)
print("states", sorted(set(r[0] for r in rows)), "span_s %.2f"%(fi-st).total_seconds())
PY
CPU=$(awk '{print $14+$15}' /proc/$WP/stat)
echo "worker cpu ticks $CPU"
