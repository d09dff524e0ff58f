#!/usr/bin/env bash
# Horizontal scaling on this machine: the same data set, one coordinator, and 1, 2, 4 worker
# processes in turn. Prints readings/s per configuration and how many child executions each
# worker took (executionsByWorker of the DescribeMapRun document).
#
#   deploy/local/scaling.sh [--workers "1 2 4"] [--devices 200] [--days 30]
#                           [--readings-per-day 288] [--files 20] [--concurrency 1] [--repeat 1]
#
# Each worker runs --concurrency items at once (FLEETMAP_CONCURRENCY, default 1 here so that
# one worker process is about one core's worth of work and adding processes is what adds
# throughput; with the default of 4, one worker already fills a small machine). Before the
# measured runs, one untimed run warms the S3 server's page cache. Uses its own run folder,
# queue prefix and free ports, and stops everything it started on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

worker_counts="1 2 4"
devices=200 days=30 readings_per_day=288 files=20 concurrency=1 repeat=1
while [ $# -gt 0 ]; do
  case $1 in
    --workers) worker_counts=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --readings-per-day) readings_per_day=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

max_workers=$(tr ' ' '\n' <<<"$worker_counts" | sort -n | tail -n 1)
# Two free ports, and a base whose next max_workers ports are free (worker-i's /metrics).
# shellcheck source-path=SCRIPTDIR source=ports.sh
. "$here/ports.sh"
read -r s3_port coordinator_port worker_base <<<"$(free_ports 2 "$max_workers")"
FLEETMAP_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fleetmap-scaling.XXXXXX")
export FLEETMAP_RUN_DIR
export FLEETMAP_QUEUE_PREFIX=fleetmap-scaling-$$
export FLEETMAP_LOCAL_S3_PORT=$s3_port FLEETMAP_LOCAL_COORDINATOR_PORT=$coordinator_port
export FLEETMAP_LOCAL_WORKER_PORT_BASE=$worker_base
export FLEETMAP_CONCURRENCY=$concurrency

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_bin
has_role coordinator || die "this fleetmap has no \`coordinator\` role: cargo build -p fleetmap"
trap 'bash "$here/down.sh" --purge >/dev/null 2>&1 || true' EXIT

bash "$here/up.sh" --workers 0 2>"$RUN_DIR/up.log" || { cat "$RUN_DIR/up.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$RUN_DIR/env"

say "generating the data set: $devices devices × $days days × $readings_per_day readings/day in $files Parquet files"
"$FLEETMAP_BIN" gen --bucket "$DATA_BUCKET" --devices "$devices" --days "$days" \
  --readings-per-day "$readings_per_day" --files "$files" >"$RUN_DIR/logs/gen.out" 2>"$RUN_DIR/logs/gen.log"
tail -n 1 "$RUN_DIR/logs/gen.out" >&2
manifest=s3://$DATA_BUCKET/iot-unload/manifest.csv

run_once() { # → DescribeMapRun JSON on stdout
  "$FLEETMAP_BIN" start --manifest "$manifest" --max-concurrency 0 --wait -o json 2>>"$RUN_DIR/logs/start.log"
}

scale_workers "$max_workers"
say "warm-up run with $max_workers workers (not measured)"
run_once >/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
results=$RUN_DIR/results.jsonl
: >"$results"
for n in $worker_counts; do
  scale_workers "$n"
  for ((r = 1; r <= repeat; r++)); do
    say "measuring: $n worker(s), run $r of $repeat"
    run_once | python3 -c 'import json,sys; d=json.load(sys.stdin); d["workers"]=int(sys.argv[1]); print(json.dumps(d))' "$n" >>"$results"
  done
done

build="$("$FLEETMAP_BIN" --version), $(case $FLEETMAP_BIN in */release/*) echo release ;; *) echo debug ;; esac) build"
python3 - "$results" "$concurrency" "$(nproc)" "$load_before" "$build" <<'EOF'
import json, sys
from datetime import datetime

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))

runs = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for d in runs:
    if d["status"] != "SUCCEEDED":
        sys.exit(f"a map run ended {d['status']}: {d.get('error')} {d.get('cause')}")
    secs = (ts(d["stopDate"]) - ts(d["startDate"])).total_seconds()
    d["secs"] = secs
    d["rate"] = d["readings"] / secs
    if d["workers"] not in best or d["rate"] > best[d["workers"]]["rate"]:
        best[d["workers"]] = d
print(f"{'workers':>7}  {'seconds':>7}  {'readings':>9}  {'readings/s':>10}  {'speed-up':>8}  child executions per worker")
for n in sorted(best):
    d = best[n]
    by = d["executionsByWorker"]
    per = ", ".join(f"{w} {by[w]}" for w in sorted(by, key=lambda w: (len(w), w)))
    print(f"{n:>7}  {d['secs']:>7.2f}  {d['readings']:>9}  {d['rate']:>10,.0f}  {d['rate'] / best[min(best)]['rate']:>7.2f}×  {per}")
print(f"({sys.argv[5]}; each worker {sys.argv[2]} item(s) at a time; best of "
      f"{len(runs) // len(best)} run(s) per row; nproc {sys.argv[3]}; load average before: {sys.argv[4]})")
EOF
