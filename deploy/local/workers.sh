#!/usr/bin/env bash
# Scales the local stack's workers to N, like KEDA does on Kubernetes: starts worker-1..N
# that are missing, drains and stops any above N.   deploy/local/workers.sh N
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then die "usage: $0 N"; fi
need_bin
[ -f "$RUN_DIR/env" ] || die "no local stack in $RUN_DIR: run deploy/local/up.sh first"
# shellcheck disable=SC1091
. "$RUN_DIR/env"
scale_workers "$1"
say "workers: $(running_workers | tr '\n' ' ')"
