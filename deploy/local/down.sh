#!/usr/bin/env bash
# Stops what deploy/local/up.sh started, by pid file: workers first (each drains its
# in-flight items), then the coordinator (checkpoints), then the S3-protocol server.
# RabbitMQ is the system's and stays up.
#
#   deploy/local/down.sh [--purge]   --purge also deletes the prefix's queues and the run folder
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

purge=false
case ${1:-} in
  --purge) purge=true ;;
  "") ;;
  *) die "unknown argument $1" ;;
esac

[ -d "$RUN_DIR/pids" ] || { say "nothing to stop in $RUN_DIR"; exit 0; }
for w in $(running_workers); do stop_proc "$w" 60; done
stop_proc coordinator 60
stop_proc s3 10
say "stopped the local stack in $RUN_DIR"

if $purge; then
  for q in items items.dead outcomes; do
    rabbitmqctl -q delete_queue "$FLEETMAP_QUEUE_PREFIX.$q" >/dev/null 2>&1 || true
  done
  # rabbitmqctl has no delete_exchange: the dead-letter exchange goes through eval.
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$FLEETMAP_QUEUE_PREFIX.dlx\">>), false, <<\"fleetmap-down\">>)." \
    >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR"
  say "deleted queues $FLEETMAP_QUEUE_PREFIX.* and $RUN_DIR"
fi
