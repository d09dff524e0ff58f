# shellcheck shell=bash disable=SC2034 # variables used by the scripts that source this
# Shared by deploy/local/*.sh: process management for the Docker-free local stack.
# Every process gets a pid file under $RUN_DIR/pids and a log under $RUN_DIR/logs; stopping
# goes by those pids only (checked against the process's command line first).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FLEETMAP_BIN=${FLEETMAP_BIN:-$REPO/target/debug/fleetmap}
RUN_DIR=${FLEETMAP_RUN_DIR:-$REPO/target/fleetmap-local}
S3_PORT=${FLEETMAP_LOCAL_S3_PORT:-9000}
COORDINATOR_PORT=${FLEETMAP_LOCAL_COORDINATOR_PORT:-8080}
WORKER_PORT_BASE=${FLEETMAP_LOCAL_WORKER_PORT_BASE:-9100}
export FLEETMAP_QUEUE_PREFIX=${FLEETMAP_QUEUE_PREFIX:-fleetmap-local}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
DATA_BUCKET=fleetmap-data
RESULTS_BUCKET=fleetmap-results

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

need_bin() {
  [ -x "$FLEETMAP_BIN" ] || die "$FLEETMAP_BIN not found: cargo build -p fleetmap (or set FLEETMAP_BIN)"
}

has_role() { "$FLEETMAP_BIN" "$1" --help >/dev/null 2>&1; }

pid_of() {
  local f="$RUN_DIR/pids/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  # Only a live process that is still ours (not a recycled pid).
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q fleetmap; then
    echo "$pid"
  else
    return 1
  fi
}

# start_proc NAME ARGS... : runs `fleetmap ARGS...` in the background (in its own session,
# so it outlives the calling script), stdout to logs/NAME.out, stderr to logs/NAME.log.
start_proc() {
  local name=$1; shift
  mkdir -p "$RUN_DIR/pids" "$RUN_DIR/logs"
  if pid_of "$name" >/dev/null; then
    say "$name already running (pid $(pid_of "$name"))"
    return 0
  fi
  setsid "$FLEETMAP_BIN" "$@" </dev/null >"$RUN_DIR/logs/$name.out" 2>"$RUN_DIR/logs/$name.log" &
  echo $! >"$RUN_DIR/pids/$name.pid"
}

# stop_proc NAME [TIMEOUT_SECS]: SIGTERM (the process drains), then SIGKILL after TIMEOUT.
stop_proc() {
  local name=$1 timeout=${2:-30} pid i
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) still running after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$RUN_DIR/pids/$name.pid"
}

running_workers() {
  local f
  for f in "$RUN_DIR"/pids/worker-*.pid; do
    [ -e "$f" ] || continue
    basename "$f" .pid
  done | sort -t- -k2 -n
}

# wait_http URL SECS NAME: until URL answers 2xx, or fail showing NAME's log.
wait_http() {
  local url=$1 secs=$2 name=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    if ! pid_of "$name" >/dev/null; then
      say "$name exited; last lines of $RUN_DIR/logs/$name.log:"
      tail -n 20 "$RUN_DIR/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  say "$name did not answer $url within ${secs}s; last lines of its log:"
  tail -n 20 "$RUN_DIR/logs/$name.log" >&2 || true
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The S3 server prints AWS_ENDPOINT_URL=… and the key pair on start.
load_s3_env() {
  local i
  for ((i = 0; i < 300; i++)); do
    if grep -q '^AWS_REGION=' "$RUN_DIR/logs/s3.out" 2>/dev/null; then
      set -a
      # shellcheck disable=SC1091
      . "$RUN_DIR/logs/s3.out"
      set +a
      return 0
    fi
    pid_of s3 >/dev/null || break
    sleep 0.1
  done
  say "the S3-protocol server did not start; $RUN_DIR/logs/s3.log and s3.out:"
  tail -n 20 "$RUN_DIR/logs/s3.log" "$RUN_DIR/logs/s3.out" >&2 || true
  return 1
}

# start_worker I: worker-I with its ops endpoint on WORKER_PORT_BASE+I.
start_worker() {
  local i=$1 port=$((WORKER_PORT_BASE + $1))
  port_free "$port" || die "port $port (worker-$i ops) is taken; set FLEETMAP_LOCAL_WORKER_PORT_BASE"
  start_proc "worker-$i" worker --worker-id "worker-$i" --ops-addr "127.0.0.1:$port"
  wait_http "http://127.0.0.1:$port/readyz" 30 "worker-$i"
}

# scale_workers N: start or stop workers until exactly worker-1..worker-N run.
scale_workers() {
  local n=$1 w i
  for w in $(running_workers); do
    i=${w#worker-}
    if [ "$i" -gt "$n" ]; then stop_proc "$w" 60; fi
  done
  for ((i = 1; i <= n; i++)); do
    pid_of "worker-$i" >/dev/null || start_worker "$i"
  done
}
