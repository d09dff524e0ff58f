#!/usr/bin/env bash
# fleetmap benchmark suite (issue 5): one command, one table.
#
#   bench/run.sh [--quick] [--only B1,B2,B3,B5] [--runs N]
#
# B1  decode + per-device, per-type anomaly summary, one core (taskset -c 0):
#     fleetmap-bench (the worker's reader, kernel) vs DuckDB threads=1 vs pyarrow.compute
# B2  one JSON analytics record per reading, one core: fleetmap encoder vs DuckDB COPY json
# B3  end to end on this machine: RabbitMQ, `fleetmap s3-server`, two `fleetmap worker`s,
#     `fleetmap run`; vs Celery (prefork, concurrency 2, same broker, own queue) with a
#     pyarrow task per file on the same S3 server. 20 large files and 2,000 tiny ones.
# B5  worker peak RSS (/usr/bin/time -v) on one ~2 GB file and one ~20 MB file.
#
# Full data set: 20,016,000 readings (1000 devices x 834 days hourly) in 20 files, ~1 GB.
# --quick: 2,001,600 readings (100 devices x 834 days) and 200 tiny files; still 3 runs.
# Needs: a Rust toolchain, python3.11, RabbitMQ at $AMQP_URL (default local guest).
# Data lives in bench/data (gitignored) and is reused between runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
DATA=$BENCH/data
OUT=$BENCH/results
RUNS=3
QUICK=0
ONLY=B1,B2,B3,B5
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    *) echo "usage: bench/run.sh [--quick] [--only B1,B2,B3,B5] [--runs N]" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }

if [ $QUICK = 1 ]; then
  DEVICES=100; TINY=200; TAG=quick
else
  DEVICES=1000; TINY=2000; TAG=full
fi
DAYS=834
mkdir -p "$DATA" "$OUT"
RESULTS=$OUT/results-$TAG.jsonl
: > "$RESULTS"
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# --- tools -----------------------------------------------------------------------------
VENV=$BENCH/.venv
PY=$VENV/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c 'import duckdb, pyarrow, celery' 2>/dev/null; then
  log "creating $VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$BENCH/requirements.txt"
fi
log "building release binaries (the first build takes ~7 min)"
(cd "$ROOT" && cargo build -q --release -p fleetmap -p fleetmap-bench)
FM=$ROOT/target/release/fleetmap
FB=$ROOT/target/release/fleetmap-bench

# --- local data set for B1/B2 ----------------------------------------------------------
LOCAL=$DATA/local-$TAG
if [ ! -f "$LOCAL/iot-unload/manifest.csv" ]; then
  log "generating $DEVICES devices x $DAYS days into $LOCAL"
  rm -rf "$LOCAL"
  "$FM" gen --out-dir "$LOCAL" --devices $DEVICES --days $DAYS --files 20 >&2
fi
LIST=$DATA/files-$TAG.list
sed "s|^|$LOCAL/|" "$LOCAL/iot-unload/manifest.csv" > "$LIST"
mapfile -t FILES < "$LIST"

one_core() { taskset -c 0 "$@"; }

if want B1; then
  for i in $(seq "$RUNS"); do
    log "B1 run $i/$RUNS"
    one_core "$FB" b1 "${FILES[@]}" >> "$RESULTS"
    one_core "$FB" b1-records "${FILES[@]}" >> "$RESULTS"
    one_core "$PY" "$BENCH/b12.py" duckdb-b1 "$LIST" >> "$RESULTS"
    one_core "$PY" "$BENCH/b12.py" pyarrow-b1 "$LIST" >> "$RESULTS"
  done
fi
if want B2; then
  # ~7.7 GB of JSON per tool and run: written to tmpfs so the disk does not set the pace
  # (BENCH_B2_DIR overrides). Deleted after each run.
  B2DIR=${BENCH_B2_DIR:-/dev/shm}
  for i in $(seq "$RUNS"); do
    log "B2 run $i/$RUNS"
    one_core "$FB" b2 "$B2DIR/b2-fleetmap.json" "${FILES[@]}" >> "$RESULTS"
    rm -f "$B2DIR/b2-fleetmap.json"
    one_core "$PY" "$BENCH/b12.py" duckdb-b2 "$LIST" "$B2DIR/b2-duckdb.json" >> "$RESULTS"
    rm -f "$B2DIR/b2-duckdb.json"
  done
fi

# --- B3 / B5: broker, S3 server, workers -------------------------------------------------
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if want B3 || want B5; then
  S3DIR=$DATA/s3
  PORT=19000
  "$FM" s3-server --dir "$S3DIR" --listen 127.0.0.1:$PORT \
      --bucket bench-data --bucket bench-results > "$OUT/s3-server.env" 2> "$OUT/s3-server.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q AWS_REGION "$OUT/s3-server.env" 2>/dev/null && break; sleep 0.1; done
  set -a; . "$OUT/s3-server.env"; set +a
  export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
  export RUST_LOG=warn
  gen_s3() { # prefix devices days [files]
    if [ ! -f "$S3DIR/bench-data/$1manifest.csv" ]; then
      log "generating s3://bench-data/$1"
      "$FM" gen --bucket bench-data --prefix "$1" --devices "$2" --days "$3" ${4:+--files $4} >&2
    fi
  }
fi

start_workers() { # queue-prefix
  for w in 1 2; do
    FLEETMAP_QUEUE_PREFIX=$1 "$FM" worker --worker-id "w$w" --ops-addr 127.0.0.1:$((19090 + w)) \
      2>> "$OUT/worker-$w.log" &
    PIDS+=($!)
  done
  sleep 1
}
stop_workers() {
  local keep=()
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
}

# fleetmap run → one result line from the DescribeMapRun document.
fm_run() { # bench manifest-uri queue-prefix
  FLEETMAP_QUEUE_PREFIX=$3 "$FM" run --manifest "$2" --results-bucket bench-results \
      --results-prefix "fm" --max-concurrency 0 -o json > "$OUT/run.json"
  "$PY" - "$1" "$OUT/run.json" >> "$RESULTS" <<'EOF'
import json, sys
from datetime import datetime
d = json.load(open(sys.argv[2]))
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00"))
secs = (t(d["stopDate"]) - t(d["startDate"])).total_seconds()
print(json.dumps({"tool": "fleetmap", "bench": sys.argv[1], "seconds": secs,
                  "readings": d["readings"]["processed"] if isinstance(d["readings"], dict) else d["readings"],
                  "executions": d["executionCounts"]["succeeded"],
                  "failed": d["executionCounts"]["failed"]}))
EOF
}

celery_run() { # bench prefix
  sed 's|^s3://bench-data/||' "$S3DIR/bench-data/$2manifest.csv" > "$OUT/keys.list"
  (cd "$BENCH" && "$PY" celery_run.py bench-data "$OUT/keys.list" bench-results) \
    | sed "s/\"bench\": \"B3\"/\"bench\": \"$1\"/" >> "$RESULTS"
}

if want B3; then
  gen_s3 "large-$TAG/" $DEVICES $DAYS 20
  gen_s3 "tiny-$TAG/" $TINY 1
  Q=fmbench$$
  start_workers $Q
  for i in $(seq "$RUNS"); do
    log "B3 fleetmap run $i/$RUNS"
    fm_run B3-large "s3://bench-data/large-$TAG/manifest.csv" $Q
    fm_run B3-tiny "s3://bench-data/tiny-$TAG/manifest.csv" $Q
  done
  stop_workers
  export CELERY_QUEUE=celery-bench-$$
  (cd "$BENCH" && "$VENV/bin/celery" -A celery_app worker --pool prefork --concurrency 2 \
      -Q "$CELERY_QUEUE" --without-gossip --without-mingle --without-heartbeat \
      -l warning > "$OUT/celery.log" 2>&1) &
  PIDS+=($!)
  sleep 5
  for i in $(seq "$RUNS"); do
    log "B3 celery run $i/$RUNS"
    celery_run B3-large "large-$TAG/"
    celery_run B3-tiny "tiny-$TAG/"
  done
  stop_workers
fi

if want B5; then
  # One ~2 GB object (33.6M readings) and one ~20 MB object, each one item for one worker
  # under /usr/bin/time -v.
  gen_s3 "b5-2gb/" 2000 700 1
  gen_s3 "b5-20mb/" 20 700 1
  Q=fmb5$$
  for size in 2gb 20mb; do
    log "B5 $size"
    FLEETMAP_QUEUE_PREFIX=$Q /usr/bin/time -v "$FM" worker --worker-id b5 \
        --ops-addr 127.0.0.1:19095 2> "$OUT/b5-$size.time" &
    TPID=$!
    PIDS+=($TPID)
    fm_run "B5-$size" "s3://bench-data/b5-$size/manifest.csv" $Q
    kill -TERM "$(pgrep -P $TPID)" 2>/dev/null || true
    wait $TPID 2>/dev/null || true
    rss=$(awk -F: '/Maximum resident/ {print $2+0}' "$OUT/b5-$size.time")
    label=$([ $size = 2gb ] && echo B5-2GB || echo B5-20MB)
    echo "{\"tool\":\"fleetmap\",\"bench\":\"$label\",\"max_rss_mib\":$((rss / 1024))}" >> "$RESULTS"
  done
fi

echo
echo "fleetmap benchmarks ($TAG): $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%dT%H:%MZ)"
"$PY" "$BENCH/report.py" "$RESULTS"
