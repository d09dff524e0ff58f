#!/usr/bin/env bash
# Runs the fault-injection tests (real RabbitMQ, the loopback S3-protocol server, real
# processes) with a report file and renders docs/reliability.md: each fault, how it was
# injected, runs and readings processed, readings lost and doubled.
#
#   bash tests/reliability.sh            # needs RabbitMQ at $AMQP_URL (default local guest)
#
# The tests assert lost = doubled = 0 themselves; a failing one still leaves its line in the
# table (it reports before it asserts) and makes this script exit non-zero.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit
report=$(mktemp)
trap 'rm -f "$report"' EXIT
FLEETMAP_RELIABILITY_REPORT=$report cargo test --workspace --locked \
  --test recovery --test worker_faults --test broker_restart --test s3_faults --test poison
status=$?
python3 - "$report" "$status" > docs/reliability.md <<'PY'
import json, subprocess, sys, datetime, os
rows = sorted((json.loads(l) for l in open(sys.argv[1]) if l.strip()), key=lambda r: r['fault'])
status = int(sys.argv[2])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
# The report being written is not a change to the code that produced it.
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/reliability.md"], capture_output=True, text=True).stdout.strip()
print("# Reliability: faults injected, readings lost and doubled\n")
print("Produced by `bash tests/reliability.sh`, which runs the fault-injection tests against the")
print("real RabbitMQ and the loopback S3-protocol server and counts, per fault, the analytics")
print("records in the results bucket by reading (deviceid, readingtimestamp).\n")
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at `{commit}`{' (with uncommitted changes)' if dirty else ''},"
      f" {os.cpu_count()} cores; tests {'passed' if status == 0 else 'FAILED (exit %d)' % status}.\n")
print("| fault | how it was injected | runs | readings expected | records found | lost | doubled |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['fault']} | {r['injection']} | {r['runs']} | {r['expected']:,} | {r['processed']:,} | {r['lost']} | {r['doubled']} |")
print(f"\n{len(rows)} faults, {sum(r['processed'] for r in rows):,} readings processed, "
      f"{sum(r['lost'] for r in rows)} lost, {sum(r['doubled'] for r in rows)} doubled.")
print("\nWhere each is tested: `cli/tests/recovery.rs` (coordinator SIGKILL at three moments),")
print("`cli/tests/worker_faults.rs` (worker SIGKILL, SIGTERM), `cli/tests/broker_restart.rs`")
print("(RabbitMQ stop_app/start_app and a full node restart, on a private node),")
print("`tests/tests/s3_faults.rs` (503s through a fault proxy), `tests/tests/poison.rs`.")
PY
echo "wrote docs/reliability.md (tests exit $status)" >&2
exit $status
