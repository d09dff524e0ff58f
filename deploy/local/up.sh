#!/usr/bin/env bash
# Runs fleetmap's stack on this machine without Docker, all on 127.0.0.1:
#   RabbitMQ (the system one, via rabbitmq-up.sh), `fleetmap s3-server` (buckets fleetmap-data
#   and fleetmap-results), `fleetmap coordinator`, and N `fleetmap worker` processes.
#
#   deploy/local/up.sh [--workers N]        (default 3, like docker-compose.yml)
#   . target/fleetmap-local/env             # AMQP_URL, AWS_*, FLEETMAP_* for the CLI
#   fleetmap gen --bucket fleetmap-data --devices 50 --days 30 --files 20
#   fleetmap start --manifest s3://fleetmap-data/iot-unload/manifest.csv --max-concurrency 50 --wait
#   deploy/local/down.sh
#
# Settings (env): FLEETMAP_BIN (target/debug/fleetmap), FLEETMAP_RUN_DIR
# (target/fleetmap-local: pids/, logs/, s3/, env), FLEETMAP_LOCAL_S3_PORT (9000),
# FLEETMAP_LOCAL_COORDINATOR_PORT (8080), FLEETMAP_LOCAL_WORKER_PORT_BASE (9100: worker-i's
# /metrics on base+i), FLEETMAP_QUEUE_PREFIX (fleetmap-local), AMQP_URL, FLEETMAP_API_TOKEN
# (unset: the coordinator's API takes no token, fine on loopback).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

workers=3
while [ $# -gt 0 ]; do
  case $1 in
    --workers) workers=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
  esac
done

need_bin
mkdir -p "$RUN_DIR"/{pids,logs,s3}
bash "$REPO/deploy/local/rabbitmq-up.sh" >&2

if ! pid_of s3 >/dev/null; then
  port_free "$S3_PORT" || die "port $S3_PORT is taken; set FLEETMAP_LOCAL_S3_PORT"
  start_proc s3 s3-server --dir "$RUN_DIR/s3" --listen "127.0.0.1:$S3_PORT" \
    --bucket "$DATA_BUCKET" --bucket "$RESULTS_BUCKET"
fi
load_s3_env

coordinator_url=""
if has_role coordinator; then
  if ! pid_of coordinator >/dev/null; then
    port_free "$COORDINATOR_PORT" || die "port $COORDINATOR_PORT is taken; set FLEETMAP_LOCAL_COORDINATOR_PORT"
    start_proc coordinator coordinator --listen "127.0.0.1:$COORDINATOR_PORT" \
      --state-uri "s3://$RESULTS_BUCKET/fleetmap-state/"
  fi
  coordinator_url="http://127.0.0.1:$COORDINATOR_PORT"
  wait_http "$coordinator_url/readyz" 60 coordinator
else
  say "this fleetmap has no \`coordinator\` role yet: starting workers only (use \`fleetmap run\`)"
fi

scale_workers "$workers"

{
  echo "# written by deploy/local/up.sh; source it: . $RUN_DIR/env"
  for v in AMQP_URL FLEETMAP_QUEUE_PREFIX AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  [ -z "$coordinator_url" ] || printf 'export FLEETMAP_COORDINATOR_URL=%q\n' "$coordinator_url"
  [ -z "${FLEETMAP_API_TOKEN:-}" ] || printf 'export FLEETMAP_API_TOKEN=%q\n' "$FLEETMAP_API_TOKEN"
  printf 'export FLEETMAP_RUN_DIR=%q\n' "$RUN_DIR"
} >"$RUN_DIR/env"

say "fleetmap local stack up ($RUN_DIR):"
say "  S3-protocol server  $AWS_ENDPOINT_URL (buckets $DATA_BUCKET, $RESULTS_BUCKET)"
[ -z "$coordinator_url" ] || say "  coordinator         $coordinator_url (/metrics, /healthz, /readyz)"
for w in $(running_workers); do
  say "  $w$(printf '%*s' $((20 - ${#w})) '')http://127.0.0.1:$((WORKER_PORT_BASE + ${w#worker-}))/metrics"
done
say "  queues              $FLEETMAP_QUEUE_PREFIX.items, $FLEETMAP_QUEUE_PREFIX.outcomes on $AMQP_URL"
say "then: . $RUN_DIR/env   and   deploy/local/down.sh to stop"
