#!/usr/bin/env bash
# fleetmap benchmark suite (issue 5): one command, one table.
#
#   bench/run.sh [--quick] [--only B1,B2,B3,B4,B5] [--runs N]
#
# B1  decode + per-device, per-type anomaly summary, one core (taskset -c 0):
#     fleetmap-bench (the worker's reader, kernel) vs DuckDB threads=1 vs pyarrow.compute
# B2  one JSON analytics record per reading, one core: fleetmap encoder vs DuckDB COPY json
# B3  end to end on this machine: RabbitMQ, `fleetmap s3-server`, `fleetmap coordinator`
#     (checkpointing to S3) and two `fleetmap worker`s, runs started with `fleetmap start
#     --wait`; vs Celery (prefork, concurrency 2, same broker, own queue) with a pyarrow task
#     per file on the same S3 server (bench/celery_app.py). 20 large files and 2,000 tiny
#     ones, runs interleaved. Then `fleetmap-bench s3-requests`: CPU per S3 request, in the
#     SDK client and in the server (a tiny child execution makes three).
# B4  control plane alone: a coordinator (in memory, then with --state-uri) and
#     `fleetmap-bench noop-worker`; child executions/s over 50,000 items, and the time to
#     the first child execution of a 100-item run (bench/b45.py).
# B5  worker peak RSS (/usr/bin/time -v, and VmRSS sampled) on one ~2 GB and one ~20 MB
#     file; coordinator RSS with 1,000 open runs x 10,000 items + 10,000 backlogged runs,
#     in memory and then with --state-uri (how long starting them takes, checkpoint size).
#
# Full data set: 20,016,000 readings (1000 devices x 834 days hourly) in 20 files, ~1 GB.
# --quick: 2,001,600 readings (100 devices x 834 days), 200 tiny files, B4 over 10,000
# items, B5's coordinator at 100 open runs + 1,000 backlogged; still 3 runs.
# Needs: a Rust toolchain, python3.11, RabbitMQ at $AMQP_URL (default local guest) with
# rabbitmqctl (to delete this run's queues), /usr/bin/time.
# Data lives in bench/data (gitignored) and is reused between runs; the processes of
# B3-B5 run under $BENCH_STACK_DIR (pids/, logs/, s3/: the S3 server's folder) via
# deploy/local/lib.sh: by default /dev/shm/fleetmap-bench, a tmpfs, when it has 12 GiB
# free (a large B3 run writes ~7.7 GB of results before they are deleted), else
# bench/data/stack. The data sets there are generated again after a reboot.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
DATA=$BENCH/data
OUT=$BENCH/results
RUNS=3
QUICK=0
ONLY=B1,B2,B3,B4,B5
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    *) echo "usage: bench/run.sh [--quick] [--only B1,B2,B3,B4,B5] [--runs N]" >&2; exit 2 ;;
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
# One invocation at a time: two would share the stack folder (pid files, ports, the S3
# folder) and each one's cleanup would stop the other's processes.
exec 9> "$DATA/.run.lock"
if ! flock -n 9; then
  echo "bench/run.sh: another bench/run.sh is running ($DATA/.run.lock is held)" >&2
  exit 1
fi
RESULTS=$OUT/results-$TAG.jsonl
# BENCH_APPEND=1 keeps earlier lines (e.g. several --only invocations feeding one table).
[ "${BENCH_APPEND:-0}" = 1 ] || : > "$RESULTS"
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# --- tools -----------------------------------------------------------------------------
VENV=$BENCH/.venv
PY=$VENV/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c 'import duckdb, pyarrow, celery' 2>/dev/null; then
  log "creating $VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$BENCH/requirements.txt"
fi
# Copies, so a rebuild in the shared target dir cannot swap a binary under a running bench;
# BENCH_NO_BUILD=1 reuses the copies of an earlier invocation.
mkdir -p "$DATA/bin"
if [ "${BENCH_NO_BUILD:-0}" != 1 ] || [ ! -x "$DATA/bin/fleetmap-bench" ]; then
  log "building release binaries (the first build takes ~7 min)"
  (cd "$ROOT" && cargo build -q --release -p fleetmap -p fleetmap-bench)
  cp "$ROOT/target/release/fleetmap" "$ROOT/target/release/fleetmap-bench" "$DATA/bin/"
fi
FM=$DATA/bin/fleetmap
FB=$DATA/bin/fleetmap-bench

# --- local data set for B1/B2 ----------------------------------------------------------
LOCAL=$DATA/local-$TAG
LIST=$DATA/files-$TAG.list
if want B1 || want B2; then
  if [ ! -f "$LOCAL/iot-unload/manifest.csv" ]; then
    log "generating $DEVICES devices x $DAYS days into $LOCAL"
    rm -rf "$LOCAL"
    "$FM" gen --out-dir "$LOCAL" --devices $DEVICES --days $DAYS --files 20 >&2
  fi
  sed "s|^|$LOCAL/|" "$LOCAL/iot-unload/manifest.csv" > "$LIST"
  mapfile -t FILES < "$LIST"
fi

one_core() { taskset -c 0 "$@"; }

if want B1; then
  for i in $(seq "$RUNS"); do
    log "B1 run $i/$RUNS"
    {
      one_core "$FB" b1 "${FILES[@]}"
      one_core "$FB" b1-records "${FILES[@]}"
      one_core "$PY" "$BENCH/b12.py" duckdb-b1 "$LIST"
      one_core "$PY" "$BENCH/b12.py" pyarrow-b1 "$LIST"
    } >> "$RESULTS"
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

# --- B3 / B4 / B5: the process stack of deploy/local, on free ports, own queue prefix ------
# deploy/local/lib.sh starts each process in its own session with a pid file and a log
# under $RUN_DIR ($BENCH_STACK_DIR: the S3 server's data sets stay between runs); cleanup
# stops them by those pids and deletes this run's queues.
#
# Why tmpfs: the S3 server stands in for a remote store, so its file system should not set
# the pace, and on this machine's root (ext4 without a journal) it did, unevenly. Creating
# a file there skips every inode freed in the last 60-360 s (`recently_deleted` in
# fs/ext4/ialloc.c), so a run after any deletion of results paid for it: the server's CPU
# per tiny child execution moved between 0.45 and 1.7 ms with what the file system had
# deleted minutes before (for both tools), 0.37-0.40 ms on tmpfs whatever came before.
STACK=0
if want B3 || want B4 || want B5; then
  STACK=1
  # Three free ports, and a base whose next 9 ports are free (worker-i's /metrics on base+i).
  # shellcheck source-path=SCRIPTDIR/.. source=deploy/local/ports.sh
  . "$ROOT/deploy/local/ports.sh"
  read -r S3P COORDP NULLP WBASE <<<"$(free_ports 3 9)"
  STACK_DIR=${BENCH_STACK_DIR:-}
  if [ -z "$STACK_DIR" ]; then
    STACK_DIR=$DATA/stack
    shm_free=$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1 || echo 0)
    if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && [ "${shm_free// /}" -ge $((12 * 1024 * 1024)) ]; then
      STACK_DIR=/dev/shm/fleetmap-bench
    else
      log "/dev/shm is not a tmpfs with 12 GiB free: the S3 server's folder is $STACK_DIR, on disk"
    fi
  fi
  export FLEETMAP_BIN=$FM FLEETMAP_RUN_DIR=$STACK_DIR FLEETMAP_QUEUE_PREFIX=fmbench-$$
  export FLEETMAP_LOCAL_S3_PORT=$S3P FLEETMAP_LOCAL_COORDINATOR_PORT=$COORDP
  export FLEETMAP_LOCAL_WORKER_PORT_BASE=$WBASE
  export CELERY_QUEUE=fmbench-$$-celery RUST_LOG=warn
  # shellcheck source-path=SCRIPTDIR/.. source=deploy/local/lib.sh
  . "$ROOT/deploy/local/lib.sh"
  mkdir -p "$RUN_DIR"/{pids,logs,s3}
  # Stale logs out: load_s3_env reads the endpoint from logs/s3.out, possibly before the
  # new server's shell has truncated the old one.
  rm -f "$RUN_DIR"/pids/*.pid "$RUN_DIR"/logs/*
  API=http://127.0.0.1:$COORDP
  export FLEETMAP_COORDINATOR_URL=$API
fi
EXTRA_PIDS=()
cleanup() {
  [ $STACK = 1 ] || return 0
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for w in $(running_workers); do stop_proc "$w" 30; done
  for n in noop coordinator coordinator-ckpt s3; do stop_proc $n 30; done
  for q in items items.dead outcomes; do
    rabbitmqctl -q delete_queue "$FLEETMAP_QUEUE_PREFIX.$q" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_queue "$FLEETMAP_QUEUE_PREFIX-b5.$q" >/dev/null 2>&1 || true
  done
  rabbitmqctl -q delete_queue "$CELERY_QUEUE" >/dev/null 2>&1 || true
  for x in "$FLEETMAP_QUEUE_PREFIX.dlx" "$FLEETMAP_QUEUE_PREFIX-b5.dlx" "$CELERY_QUEUE"; do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"fleetmap-bench\">>)." \
      >/dev/null 2>&1 || true
  done
  rm -rf "$RUN_DIR/s3/fleetmap-results"/{fm,celery,bench,mapruns,fleetmap-state} 2>/dev/null || true
}
trap cleanup EXIT

if [ $STACK = 1 ]; then
  start_proc s3 s3-server --dir "$RUN_DIR/s3" --listen "127.0.0.1:$S3P" \
    --bucket "$DATA_BUCKET" --bucket "$RESULTS_BUCKET"
  load_s3_env
  BEAM=$(pgrep -o beam.smp || echo 0)
fi
S3DATA=${RUN_DIR:-}/s3/${DATA_BUCKET:-}
gen_s3() { # prefix gen-flags...
  local p=$1; shift
  if [ ! -f "$S3DATA/${p}manifest.csv" ]; then
    log "generating s3://$DATA_BUCKET/$p ($*)"
    "$FM" gen --bucket "$DATA_BUCKET" --prefix "$p" "$@" >&2
  fi
}
coordinator_up() { # name [coordinator flags...]
  local name=$1; shift
  start_proc "$name" coordinator --listen "127.0.0.1:$COORDP" "$@"
  wait_http "$API/readyz" 60 "$name"
}
# s3s-fs keeps each object's metadata beside the buckets, in the root folder, as
# `.bucket-<base64url bucket>.object-…`: drop the results bucket's too, or every run leaves
# thousands of entries that slow the server's file lookups for both tools.
RESULTS_B64=$(printf %s "${RESULTS_BUCKET:-}" | base64 | tr '+/' '-_' | tr -d '=')
# Deleting files is not free on disk either (see "Why tmpfs" above): wiping a tiny run's
# 6,000 files (records and sidecars) before the next run made half of the S3 server's CPU
# inode allocation, for both tools. So tiny runs' results (unique keys per run, a few MB)
# stay until B3 ends; large runs' (gigabytes) go after each run, which on tmpfs also
# gives their memory back.
wipe_results() {
  rm -rf "$RUN_DIR/s3/$RESULTS_BUCKET"/{fm,celery,bench,mapruns}
  find "$RUN_DIR/s3" -maxdepth 1 -name ".bucket-$RESULTS_B64.object-*" -delete
}
cpu_of() { "$PY" "$BENCH/b45.py" cpu "$@"; }
minus() { awk "BEGIN {printf \"%.2f\", $1 - $2}"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

B3_SETS=${BENCH_B3_SETS:-"large tiny"}   # either or both
b3_set() { [[ " $B3_SETS " == *" $1 "* ]]; }
if want B3; then
  # 20 large files (the B1/B2 readings, in S3) and $TINY tiny files of 24 readings.
  if b3_set large; then gen_s3 "large-$TAG/" --devices $DEVICES --days $DAYS --files 20; fi
  gen_s3 "tiny-$TAG/" --devices $TINY --days 1
  coordinator_up coordinator --state-uri "s3://$RESULTS_BUCKET/fleetmap-state/$FLEETMAP_QUEUE_PREFIX/"
  scale_workers 2
  (cd "$BENCH" && exec "$VENV/bin/celery" -A celery_app worker --pool prefork --concurrency 2 \
      -Q "$CELERY_QUEUE" --without-gossip --without-mingle --without-heartbeat \
      -l warning > "$RUN_DIR/logs/celery.log" 2>&1) &
  CELERY=$!
  EXTRA_PIDS+=("$CELERY")
  FMPIDS=("$(pid_of coordinator)" "$(pid_of worker-1)" "$(pid_of worker-2)" "$(pid_of s3)")
  CLPIDS=("$CELERY" "$(pid_of s3)")
  # Where each stack's CPU goes (`cpu_by`): its own processes, and the S3 server and
  # RabbitMQ that both stacks share (RabbitMQ is in neither's cpu_seconds).
  FMGROUPS=("coordinator=$(pid_of coordinator)" "workers=$(pid_of worker-1),$(pid_of worker-2)"
    "s3=$(pid_of s3)" "rabbitmq=$BEAM")
  CLGROUPS=("celery=$CELERY" "s3=$(pid_of s3)" "rabbitmq=$BEAM")
  cpu_by() { "$PY" "$BENCH/b45.py" cpu-by "$@"; }
  fm_run() { # bench prefix
    local c0 l0 by0
    c0=$(cpu_of "${FMPIDS[@]}"); l0=$(load1); by0=$(cpu_by "${FMGROUPS[@]}")
    "$FM" start --manifest "s3://$DATA_BUCKET/$2manifest.csv" --max-concurrency 0 \
      --results-bucket "$RESULTS_BUCKET" --results-prefix fm --wait -o json > "$OUT/run.json"
    "$PY" "$BENCH/b45.py" fm-line --api "$API" "$1" "$OUT/run.json" \
      "{\"cpu_seconds\": $(minus "$(cpu_of "${FMPIDS[@]}")" "$c0"), \"cpu_by\": $(cpu_by --since "$by0" "${FMGROUPS[@]}"), \"load\": [$l0, $(load1)]}" >> "$RESULTS"
    if [ "$1" = B3-large ]; then wipe_results; fi
  }
  celery_run() { # bench prefix
    local c0 l0 line by0
    sed "s|^s3://$DATA_BUCKET/||" "$S3DATA/$2manifest.csv" > "$OUT/keys.list"
    c0=$(cpu_of "${CLPIDS[@]}"); l0=$(load1); by0=$(cpu_by "${CLGROUPS[@]}")
    line=$(cd "$BENCH" && "$PY" celery_run.py "$DATA_BUCKET" "$OUT/keys.list" "$RESULTS_BUCKET")
    echo "$line" | sed "s/\"bench\": \"B3\"/\"bench\": \"$1\"/" | "$PY" "$BENCH/b45.py" merge \
      "{\"cpu_seconds\": $(minus "$(cpu_of "${CLPIDS[@]}")" "$c0"), \"cpu_by\": $(cpu_by --since "$by0" "${CLGROUPS[@]}"), \"load\": [$l0, $(load1)]}" >> "$RESULTS"
    if [ "$1" = B3-large ]; then wipe_results; fi
  }
  # Warm-up, not recorded: page cache for both tools' inputs, Celery's pool processes and
  # pyarrow imports, fleetmap's connections.
  cat "$S3DATA/large-$TAG"/*/* "$S3DATA/large-$TAG"/* > /dev/null 2>&1 || true
  head -n 20 "$S3DATA/tiny-$TAG/manifest.csv" | sed "s|^s3://$DATA_BUCKET/||" > "$OUT/keys.list"
  (cd "$BENCH" && "$PY" celery_run.py "$DATA_BUCKET" "$OUT/keys.list" "$RESULTS_BUCKET") > /dev/null
  mapfile -t WARM < <(head -n 20 "$S3DATA/tiny-$TAG/manifest.csv")
  "$FM" start --objects "${WARM[@]}" --results-bucket "$RESULTS_BUCKET" \
    --results-prefix fm --wait -o json > /dev/null
  wipe_results
  # Tools interleaved, so load drift hits both alike. Every tiny run before the first large
  # one, so that none follows a large run's deletions (see "Why tmpfs" above).
  b3_runs() { # tiny|large
    b3_set "$1" || return 0
    for i in $(seq "$RUNS"); do
      log "B3 run $i/$RUNS: $1 files (fleetmap, Celery)"
      fm_run "B3-$1" "$1-$TAG/"
      celery_run "B3-$1" "$1-$TAG/"
    done
  }
  b3_runs tiny
  b3_runs large
  # What one S3 request costs the SDK client that sends it and the server that answers it:
  # a tiny child execution is three (the coordinator's footer read, the worker's GET and PUT).
  if b3_set tiny; then
    log "B3: CPU per S3 request (fleetmap-bench s3-requests)"
    s0=$(cpu_of "$(pid_of s3)")
    line=$("$FB" s3-requests --get "$(head -n 1 "$S3DATA/tiny-$TAG/manifest.csv")" \
      --put "s3://$RESULTS_BUCKET/bench/s3-requests/")
    sent=$(echo "$line" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["sent"])')
    echo "$line" | "$PY" "$BENCH/b45.py" merge \
      "{\"tool\": \"fleetmap\", \"bench\": \"B3-s3-request\", \"server_cpu_us\": $(awk "BEGIN {printf \"%.1f\", ($(cpu_of "$(pid_of s3)") - $s0) * 1e6 / $sent}")}" >> "$RESULTS"
  fi
  kill "$CELERY" 2>/dev/null; wait "$CELERY" 2>/dev/null || true
  scale_workers 0
  stop_proc coordinator 30
  wipe_results
fi

if want B4; then
  # Control plane alone: a real coordinator, RabbitMQ, and fleetmap-bench's no-op worker
  # (2 consumers, each like a worker: prefetch, confirmed outcome, then ack). CSV input, so
  # opening a run reads the manifest but no footers; the objects need not exist.
  # In memory: 50,000 items (more than the 10,000 a run keeps in flight) and 10,000 (all
  # dispatched at once). With --state-uri: 2,000 items (B3-tiny's size) and 50,000; the
  # 100-item run after them shows what a large run's end (its archive) costs the next one.
  if [ $QUICK = 1 ]; then B4_SIZES=${BENCH_B4_SIZES:-10000}; else B4_SIZES=${BENCH_B4_SIZES:-"50000 10000"}; fi
  if [ $QUICK = 1 ]; then B4_CKPT_SIZES=${BENCH_B4_CKPT_SIZES:-2000}; else B4_CKPT_SIZES=${BENCH_B4_CKPT_SIZES:-"2000 50000"}; fi
  for n in $B4_SIZES $B4_CKPT_SIZES 100; do
    "$PY" "$BENCH/b45.py" manifest "s3://$DATA_BUCKET/b4/manifest-$n.csv" "$n"
  done
  FLEETMAP_BIN=$FB start_proc noop noop-worker --consumers 2 --prefetch 256
  sleep 2
  for mode in memory checkpoint; do
    if [ $mode = memory ]; then
      coordinator_up coordinator; name=coordinator; sfx=""; sizes=$B4_SIZES
    else
      coordinator_up coordinator-ckpt --state-uri "s3://$RESULTS_BUCKET/fleetmap-state/$FLEETMAP_QUEUE_PREFIX-b4/"
      name=coordinator-ckpt; sfx="-ckpt"; sizes=$B4_CKPT_SIZES
    fi
    pids="coord=$(pid_of $name),noop=$(pid_of noop),beam=$BEAM"
    items=0
    for i in $(seq "$RUNS"); do
      for n in $sizes; do
        log "B4$sfx run $i/$RUNS: $n no-op items"
        "$PY" "$BENCH/b45.py" b4 --api "$API" --manifest "s3://$DATA_BUCKET/b4/manifest-$n.csv" \
          --bench "B4-throughput-$n$sfx" --pids "$pids" --poll 0.1 >> "$RESULTS"
        items=$((items + n))
      done
      log "B4$sfx run $i/$RUNS: a 100-item run"
      "$PY" "$BENCH/b45.py" b4 --api "$API" --manifest "s3://$DATA_BUCKET/b4/manifest-100.csv" \
        --bench "B4-first$sfx" --pids "$pids" --poll 0.02 >> "$RESULTS"
      items=$((items + 100))
      wipe_results
    done
    # What the finished runs still hold: RSS after them, and the items they had.
    echo "{\"tool\":\"fleetmap\",\"bench\":\"B4-retained$sfx\",\"rss_kib\":$(awk '/VmRSS/ {print $2}' /proc/"$(pid_of $name)"/status),\"items\":$items}" >> "$RESULTS"
    stop_proc $name 30
  done
  stop_proc noop 10
  rm -rf "$RUN_DIR/s3/$RESULTS_BUCKET/fleetmap-state"
fi

B5_PARTS=${BENCH_B5_PARTS:-"coord state worker"}   # any of them
# The issue's scale for the coordinator: 1,000 open runs x 10,000 items (~0.5 GB at ~50 B
# an item) + 10,000 backlogged; BENCH_COORD_OPEN_RUNS sets fewer open runs.
if [ $QUICK = 1 ]; then MEMRUNS=20; MEMBACKLOG=1000; else MEMRUNS=1000; MEMBACKLOG=10000; fi
MEMRUNS=${BENCH_COORD_OPEN_RUNS:-$MEMRUNS}
if want B5 && [[ " $B5_PARTS " == *" coord "* || " $B5_PARTS " == *" state "* ]]; then
  "$PY" "$BENCH/b45.py" manifest "s3://$DATA_BUCKET/b5/manifest-10000.csv" 10000
fi
if want B5 && [[ " $B5_PARTS " == *" coord "* ]]; then
  # Coordinator memory, no workers (nothing consumes; each run has MaxConcurrency 1, so one
  # item per open run waits in RabbitMQ). 1) open runs of one item: bytes per open run;
  # 2) open runs of 10,000 items plus a backlog: bytes per item and per backlogged run.
  "$PY" "$BENCH/b45.py" manifest "s3://$DATA_BUCKET/b5/manifest-1.csv" 1
  log "B5 coordinator: 1,000 open runs of 1 item"
  coordinator_up coordinator
  "$PY" "$BENCH/b45.py" coord-mem --api "$API" --pid "$(pid_of coordinator)" --bench B5-coord-runs \
    --manifest "s3://$DATA_BUCKET/b5/manifest-1.csv" --items 1 --runs 1000 >> "$RESULTS"
  stop_proc coordinator 30
  rabbitmqctl -q purge_queue "$FLEETMAP_QUEUE_PREFIX.items" >/dev/null 2>&1 || true
  log "B5 coordinator: $MEMRUNS open runs x 10,000 items + $MEMBACKLOG in the backlog"
  coordinator_up coordinator --open-map-run-limit "$MEMRUNS"
  "$PY" "$BENCH/b45.py" coord-mem --api "$API" --pid "$(pid_of coordinator)" --bench B5-coord-items \
    --manifest "s3://$DATA_BUCKET/b5/manifest-10000.csv" --items 10000 --runs "$MEMRUNS" \
    --backlog $MEMBACKLOG >> "$RESULTS"
  stop_proc coordinator 30
  rabbitmqctl -q purge_queue "$FLEETMAP_QUEUE_PREFIX.items" >/dev/null 2>&1 || true
fi
if want B5 && [[ " $B5_PARTS " == *" state "* ]]; then
  # 3) step 2 again, with --state-uri: every StartMapRun is answered once a checkpoint holds
  # it, so this measures what the checkpoint costs at the issue's scale (its size, the
  # children segments written once beside it, the peak RSS), 16 callers starting runs.
  log "B5 coordinator, --state-uri: $MEMRUNS open runs x 10,000 items + $MEMBACKLOG in the backlog"
  B5STATE="fleetmap-state/$FLEETMAP_QUEUE_PREFIX-b5"
  rm -rf "${RUN_DIR:?}/s3/$RESULTS_BUCKET/$B5STATE"
  coordinator_up coordinator --open-map-run-limit "$MEMRUNS" --state-uri "s3://$RESULTS_BUCKET/$B5STATE/"
  "$PY" "$BENCH/b45.py" coord-mem --api "$API" --pid "$(pid_of coordinator)" --bench B5-coord-state \
    --manifest "s3://$DATA_BUCKET/b5/manifest-10000.csv" --items 10000 --runs "$MEMRUNS" \
    --backlog $MEMBACKLOG --clients 16 --state-dir "$RUN_DIR/s3/$RESULTS_BUCKET/$B5STATE" >> "$RESULTS"
  stop_proc coordinator 30
  rabbitmqctl -q purge_queue "$FLEETMAP_QUEUE_PREFIX.items" >/dev/null 2>&1 || true
  rm -rf "${RUN_DIR:?}/s3/$RESULTS_BUCKET/$B5STATE"
fi

if want B5 && [[ " $B5_PARTS " == *" worker "* ]]; then
  # Worker peak RSS on one ~2 GB and one ~20 MB Parquet file (one item each, one worker).
  # The 2 GB file's records would be ~57 GB of JSON, more than the free disk, so the worker
  # talks to bench/nulls3.py: objects served from the same folder, writes discarded.
  # VmRSS is also sampled every 0.5 s into $OUT/b5-SIZE.rss, to show it flat over the file.
  "$PY" "$BENCH/nulls3.py" "$RUN_DIR/s3" "$NULLP" > "$RUN_DIR/logs/nulls3.out" 2>&1 &
  NULLS3=$!
  EXTRA_PIDS+=("$NULLS3")
  sleep 1
  for size in 20mb 2gb; do
    # 288 readings a day (5-minute), one file, default 128 Ki-row row groups: ~30.6 bytes
    # a reading, so 870 devices give ~2.0 GB (65 M readings) and 9 devices ~21 MB.
    if [ $size = 2gb ]; then devs=870; else devs=9; fi
    if [ ! -f "$S3DATA/b5-$size/manifest-s3.csv" ]; then
      log "generating b5-$size ($devs devices x 260 days x 288 readings, one file)"
      "$FM" gen --out-dir "$S3DATA" --prefix "b5-$size/" --devices $devs --days 260 \
        --readings-per-day 288 --files 1 >&2
      sed "s|^|s3://$DATA_BUCKET/|" "$S3DATA/b5-$size/manifest.csv" > "$S3DATA/b5-$size/manifest-s3.csv"
    fi
    for i in $(seq "$([ $size = 2gb ] && echo 1 || echo "$RUNS")"); do
      log "B5 worker, $size file, run $i"
      AWS_ENDPOINT_URL=http://127.0.0.1:$NULLP FLEETMAP_QUEUE_PREFIX=$FLEETMAP_QUEUE_PREFIX-b5 \
        /usr/bin/time -v "$FM" worker --worker-id b5 --ops-addr "127.0.0.1:$((WBASE + 9))" \
        > /dev/null 2> "$OUT/b5-$size.time" &
      TPID=$!
      EXTRA_PIDS+=("$TPID")
      sleep 1
      WPID=$(pgrep -P $TPID)
      (while kill -0 "$WPID" 2>/dev/null; do
         echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' /proc/"$WPID"/status 2>/dev/null)"; sleep 0.5
       done) > "$OUT/b5-$size.rss" &
      c0=$(cpu_of "$WPID")
      AWS_ENDPOINT_URL=http://127.0.0.1:$NULLP FLEETMAP_QUEUE_PREFIX=$FLEETMAP_QUEUE_PREFIX-b5 \
        "$FM" run --manifest "s3://$DATA_BUCKET/b5-$size/manifest-s3.csv" \
        --results-bucket "$RESULTS_BUCKET" --results-prefix fm -o json > "$OUT/run.json"
      c1=$(cpu_of "$WPID")
      kill -TERM "$WPID" 2>/dev/null || true
      wait $TPID 2>/dev/null || true
      rss=$(awk -F: '/Maximum resident/ {print $2+0}' "$OUT/b5-$size.time")
      "$PY" "$BENCH/b45.py" fm-line "B5-$size" "$OUT/run.json" \
        "{\"max_rss_mib\": $((rss / 1024)), \"worker_cpu_seconds\": $(minus "$c1" "$c0"), \"file_bytes\": $(stat -c %s "$S3DATA/$(head -n 1 "$S3DATA/b5-$size/manifest.csv")")}" >> "$RESULTS"
    done
  done
  for q in items items.dead outcomes; do
    rabbitmqctl -q delete_queue "$FLEETMAP_QUEUE_PREFIX-b5.$q" >/dev/null 2>&1 || true
  done
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$FLEETMAP_QUEUE_PREFIX-b5.dlx\">>), false, <<\"fleetmap-bench\">>)." >/dev/null 2>&1 || true
  kill "$NULLS3" 2>/dev/null || true
  # The 2 GB file is regenerated when needed rather than kept (BENCH_KEEP_B5=1 keeps it).
  [ "${BENCH_KEEP_B5:-0}" = 1 ] || rm -rf "$S3DATA/b5-2gb"
fi

echo
echo "fleetmap benchmarks ($TAG): $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%dT%H:%MZ)"
"$PY" "$BENCH/report.py" "$RESULTS"
