"""deploy/check.sh's checks of deploy/ and k8s/ (run in check.sh's venv).

Each subcommand prints one line per finding and exits 1 if any is an error:

  k8s DIR             rendered overlays (DIR/<name>.yaml from `kubectl kustomize`): the
                      Kubernetes schemas (kubernetes-validate, strict), then the fields the
                      design relies on, for core kinds and the custom resources alike
  crd-json DIR OUT    the custom resources of every render, as a JSON array for crd-validate.mjs
  compose FILE        docker-compose.yml beyond its JSON schema: references, mounts, roles
  dashboard FILE OUT  Grafana JSON structure; writes every query as a recording rule to OUT
                      so that `promtool check rules OUT` parses the PromQL
  metrics SCRAPE...   every metric the dashboard and the alerts name is one that a real run
                      exported (SCRAPE: files of /metrics text), or a known RabbitMQ metric
  promql URL PREFIX   every dashboard query returns data from a Prometheus (at URL) that
                      scraped a real run (RabbitMQ queries excepted: no plugin here)
  dockerfile FILE     the image's base, user, entrypoint and version label
  roles               every flag and env var that k8s/ and the compose file pass to
                      `fleetmap <role>` appears in `fleetmap <role> --help`

The binary is $FLEETMAP_BIN.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = REPO / "k8s"
BIN = os.environ.get("FLEETMAP_BIN", str(REPO / "target/debug/fleetmap"))

# Kubernetes versions the core objects must be valid for (oldest and newest we claim).
K8S_VERSIONS = ["1.29.0", "1.37.0"]

# Env vars the processes read without a clap flag (the AWS SDK's chain, logging, the OS).
ENV_WITHOUT_FLAG = {
    "RUST_LOG",
    "FLEETMAP_LOG_FORMAT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_PROFILE",
    "HOSTNAME",
    "HOME",
    "TMPDIR",
}

# RabbitMQ metrics the dashboard and alerts may use: rabbitmq_prometheus's per-object queue
# metrics (GET /metrics/per-object, or /metrics with
# prometheus.return_per_object_metrics = true), labels {vhost, queue}. They cannot be
# scraped here (the system RabbitMQ runs without the plugin), so they are listed.
RABBITMQ_METRICS = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_consumer_utilisation",
    "rabbitmq_queue_process_memory_bytes",
}

SECRET_EXAMPLE = K8S / "base/secret.example.yaml"


class Report:
    """Prints each finding; `quiet` passes are only counted (failures always print)."""

    def __init__(self) -> None:
        self.errors = 0
        self.quiet_ok = 0

    def ok(self, msg: str) -> None:
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        print(f"  FAIL  {msg}")
        self.errors += 1

    def check(self, cond: bool, msg: str, quiet: bool = False) -> bool:
        if cond and quiet:
            self.quiet_ok += 1
        else:
            (self.ok if cond else self.fail)(msg)
        return cond

    def exit(self) -> None:
        if self.quiet_ok:
            print(f"  ok    … and {self.quiet_ok} more checks of the same kinds")
        if self.errors:
            print(f"  {self.errors} FAILED")
        sys.exit(1 if self.errors else 0)


def load_all(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def renders(render_dir: Path) -> dict[str, list[dict]]:
    return {p.stem: load_all(p) for p in sorted(render_dir.glob("*.yaml"))}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[dict], kind: str, name: str) -> dict | None:
    for d in by_kind(docs, kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def configmap_data(docs: list[dict], base_name: str) -> dict[str, str]:
    """The data of the generated ConfigMap `base_name-<hash>` (or `base_name`)."""
    for d in by_kind(docs, "ConfigMap"):
        n = d["metadata"]["name"]
        if n == base_name or re.fullmatch(re.escape(base_name) + r"-[a-z0-9]{10}", n):
            return d.get("data", {})
    return {}


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


# --- fleetmap --help -------------------------------------------------------------------------

_help_cache: dict[str, str | None] = {}


def role_help(role: str) -> str | None:
    if role not in _help_cache:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        r = subprocess.run([BIN, role, "--help"], capture_output=True, text=True, env=env)
        _help_cache[role] = r.stdout if r.returncode == 0 else None
    return _help_cache[role]


def help_envs(text: str) -> set[str]:
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", text))


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)", text))


def check_invocation(rep: Report, where: str, args: list[str], envs: set[str]) -> None:
    """`fleetmap ARGS` with ENVS set: the role exists and knows every flag and env var."""
    if not args:
        rep.fail(f"{where}: no role given to fleetmap")
        return
    role = args[0]
    text = role_help(role)
    if text is None:
        rep.fail(f"{where}: `fleetmap {role} --help` fails: this binary has no role {role!r}")
        return
    known_env = help_envs(text)
    known_flags = help_flags(text)
    bad_flags = [a.split("=")[0] for a in args[1:] if a.startswith("--") and a.split("=")[0] not in known_flags]
    bad_env = sorted(e for e in envs if e not in known_env and e not in ENV_WITHOUT_FLAG)
    rep.check(not bad_flags, f"{where}: flags of `fleetmap {role}` exist" + (f" — unknown: {bad_flags}" if bad_flags else ""))
    rep.check(not bad_env, f"{where}: env vars of `fleetmap {role}` exist" + (f" — unknown: {bad_env}" if bad_env else ""))


# --- k8s -------------------------------------------------------------------------------------

CRD_GROUPS = ("keda.sh", "monitoring.coreos.com", "rabbitmq.com")


def is_crd(d: dict) -> bool:
    return d["apiVersion"].split("/")[0] in CRD_GROUPS


def cmd_crd_json(render_dir: Path, out: Path) -> None:
    objs = [d for docs in renders(render_dir).values() for d in docs if is_crd(d) and d["kind"] != "RabbitmqCluster"]
    out.write_text(json.dumps(objs))


def validate_schemas(rep: Report, name: str, docs: list[dict]) -> None:
    import kubernetes_validate as kv

    for version in K8S_VERSIONS:
        bad = []
        n = 0
        for d in docs:
            if is_crd(d):
                continue
            n += 1
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                bad.append(f"{d['kind']}/{d['metadata']['name']} at {path}: {e.message}")
            except kv.SchemaNotFoundError:
                bad.append(f"{d['kind']}/{d['metadata']['name']}: no schema for {d['apiVersion']}")
        rep.check(not bad, f"{name}: {n} objects valid against Kubernetes {version} (strict)")
        for b in bad:
            rep.fail(f"    {b}")


def secret_keys() -> dict[str, set[str]]:
    d = load_all(SECRET_EXAMPLE)[0]
    return {d["metadata"]["name"]: set(d.get("stringData", {}))}


def check_pod_spec(rep: Report, where: str, docs: list[dict], pod: dict, fleetmap: bool) -> None:
    spec = pod["spec"]
    secrets = secret_keys()
    for c in spec.get("containers", []):
        w = f"{where} container {c['name']}"
        # every ConfigMap / Secret it references exists (the Secret as secret.example.yaml)
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef:
                cm = ef["configMapRef"]["name"]
                rep.check(named(docs, "ConfigMap", cm) is not None, f"{w}: envFrom ConfigMap {cm} is in the render", quiet=True)
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                rep.check(
                    ref["key"] in secrets.get(ref["name"], set()),
                    f"{w}: env {e['name']} ← Secret {ref['name']}/{ref['key']} is documented in secret.example.yaml", quiet=True,
                )
        ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            hg = c.get(probe, {}).get("httpGet")
            if hg:
                rep.check(hg["port"] in ports, f"{w}: {probe} port {hg['port']} is a container port", quiet=True)
        if not fleetmap:
            continue
        rep.check(
            c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz"
            and c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
            f"{w}: liveness on /healthz, readiness on /readyz",
        )
        sc = c.get("securityContext", {})
        psc = spec.get("securityContext", {})
        rep.check(
            sc.get("readOnlyRootFilesystem") is True
            and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
            and (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
            and psc.get("runAsUser") == 10001,
            f"{w}: non-root 10001, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp",
        )
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        rep.check(
            "/tmp" in mounts and "emptyDir" in vols.get(mounts["/tmp"], {}),
            f"{w}: /tmp is a writable emptyDir",
        )
        res = c.get("resources", {})
        rep.check(
            {"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
            f"{w}: cpu/memory requests and a memory limit",
        )
        rep.check(c.get("image", "").split("/")[-1].startswith("fleetmap"), f"{w}: runs the fleetmap image")


def check_fleetmap_roles(rep: Report, name: str, docs: list[dict]) -> None:
    for dep in by_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]
        for c in pod["spec"]["containers"]:
            if not c.get("image", "").split("/")[-1].startswith("fleetmap"):
                continue
            envs = {e["name"] for e in c.get("env", [])}
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    cm = named(docs, "ConfigMap", ef["configMapRef"]["name"])
                    envs |= set((cm or {}).get("data", {}))
            check_invocation(rep, f"{name}: Deployment/{dep['metadata']['name']}", list(c.get("command", [])[1:]) + list(c.get("args", [])), envs)


def check_k8s_semantics(rep: Report, name: str, docs: list[dict]) -> None:
    common = configmap_data(docs, "fleetmap-common")
    worker_cm = configmap_data(docs, "fleetmap-worker")
    coord_cm = configmap_data(docs, "fleetmap-coordinator")
    prefix = common.get("FLEETMAP_QUEUE_PREFIX", "fleetmap")

    coord = named(docs, "Deployment", "fleetmap-coordinator")
    worker = named(docs, "Deployment", "fleetmap-worker")
    if not rep.check(coord is not None and worker is not None, f"{name}: coordinator and worker Deployments"):
        return
    rep.check(
        coord["spec"].get("replicas") == 1 and coord["spec"].get("strategy", {}).get("type") == "Recreate",
        f"{name}: coordinator is one replica with strategy Recreate",
    )
    rep.check("replicas" not in worker["spec"], f"{name}: worker replicas left to the autoscaler")
    drain = int(worker_cm.get("FLEETMAP_DRAIN_TIMEOUT_SECS", "30"))
    timeout = int(worker_cm.get("FLEETMAP_CHILD_EXECUTION_TIMEOUT_SECS", "1500"))
    grace = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    rep.check(grace >= drain + 15, f"{name}: worker terminationGracePeriodSeconds {grace} > drain timeout {drain} + 15 s")
    # A draining pod finishes what it holds: no item runs longer than the child execution
    # timeout, so a drain that long never cuts one off, and the grace period covers it.
    rep.check(drain >= timeout, f"{name}: drain timeout {drain} >= child execution timeout {timeout}")
    rep.check(grace > timeout, f"{name}: terminationGracePeriodSeconds {grace} > child execution timeout {timeout}")
    # RabbitMQ must not redeliver an item the worker is still allowed to work on.
    for rmq in (d for d in docs if d.get("kind") == "RabbitmqCluster"):
        conf = rmq["spec"].get("rabbitmq", {}).get("additionalConfig", "")
        m = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)", conf, re.M)
        ct = int(m.group(1)) // 1000 if m else 1800
        rep.check(ct > timeout, f"{name}: RabbitMQ consumer_timeout {ct} s > child execution timeout {timeout} s")
    rep.check(
        len(worker["spec"]["template"]["spec"].get("topologySpreadConstraints", [])) >= 1,
        f"{name}: worker topology spread constraints",
    )
    for dep in (coord, worker):
        check_pod_spec(rep, f"{name}: Deployment/{dep['metadata']['name']}", docs, dep["spec"]["template"], True)
    for dep in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        if dep not in (coord, worker):
            check_pod_spec(rep, f"{name}: {dep['kind']}/{dep['metadata']['name']}", docs, dep["spec"]["template"], False)
    rep.check(
        coord_cm.get("FLEETMAP_LISTEN", "").endswith(":8080"),
        f"{name}: coordinator listens on :8080 (Service, NetworkPolicy and ServiceMonitor assume it)",
    )
    # Services select pods that exist and name their ports
    pods = [(d["spec"]["template"]["metadata"].get("labels", {}), d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")]
    for svc in by_kind(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        hits = [spec for labels, spec in pods if matches(sel, labels)]
        if rep.check(bool(hits), f"{name}: Service/{svc['metadata']['name']} selects a Deployment's pods"):
            cport = {p.get("name") for s in hits for c in s["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if isinstance(tp, str):
                    rep.check(tp in cport, f"{name}: Service/{svc['metadata']['name']} targetPort {tp} is a container port")

    # KEDA: scale the worker Deployment on <prefix>.items via the management API
    sos = by_kind(docs, "ScaledObject")
    if rep.check(len(sos) == 1, f"{name}: one ScaledObject"):
        so = sos[0]["spec"]
        rep.check(so["scaleTargetRef"]["name"] == "fleetmap-worker", f"{name}: ScaledObject targets fleetmap-worker")
        rep.check(1 <= so.get("minReplicaCount", 0) <= so.get("maxReplicaCount", 100), f"{name}: 1 ≤ minReplicaCount ≤ maxReplicaCount")
        sd = so.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {}).get("scaleDown", {})
        rep.check(sd.get("stabilizationWindowSeconds", 0) >= 60, f"{name}: scale-down stabilization window ≥ 60 s")
        trig = so["triggers"]
        rq = [t for t in trig if t["type"] == "rabbitmq"]
        if rep.check(len(rq) == 1, f"{name}: one rabbitmq trigger"):
            m = rq[0]["metadata"]
            rep.check(m.get("protocol") == "http", f"{name}: rabbitmq trigger uses protocol http (ready + unacked count)")
            rep.check(m.get("mode") == "QueueLength", f"{name}: rabbitmq trigger mode QueueLength")
            rep.check(m.get("excludeUnacknowledged", "false") == "false", f"{name}: unacknowledged messages are counted")
            rep.check(
                m.get("queueName") == f"{prefix}.items",
                f"{name}: rabbitmq trigger queueName {m.get('queueName')!r} == FLEETMAP_QUEUE_PREFIX + '.items' ({prefix}.items)",
            )
            conc = int(worker_cm.get("FLEETMAP_CONCURRENCY", "4"))
            rep.check(
                m.get("value", "").isdigit() and int(m["value"]) >= conc,
                f"{name}: queue length per worker {m.get('value')} ≥ FLEETMAP_CONCURRENCY {conc}",
            )
            auth = rq[0].get("authenticationRef", {}).get("name")
            ta = named(docs, "TriggerAuthentication", auth or "")
            if rep.check(ta is not None, f"{name}: TriggerAuthentication {auth} is in the render"):
                refs = ta["spec"].get("secretTargetRef", [])
                keys = secret_keys()
                rep.check(
                    any(r["parameter"] == "host" and r["key"] in keys.get(r["name"], set()) for r in refs),
                    f"{name}: TriggerAuthentication gives `host` from a documented Secret key",
                )
    # PDB selects the workers
    pdbs = by_kind(docs, "PodDisruptionBudget")
    rep.check(
        any(matches(p["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"]) for p in pdbs),
        f"{name}: a PodDisruptionBudget covers the workers",
    )
    # NetworkPolicies: default deny, and the design's paths
    nps = by_kind(docs, "NetworkPolicy")
    rep.check(
        any(n["spec"]["podSelector"] == {} and set(n["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not n["spec"].get("ingress") and not n["spec"].get("egress") for n in nps),
        f"{name}: default-deny NetworkPolicy",
    )

    def egress_ports(labels: dict) -> set[int]:
        out = set()
        for n in nps:
            if matches(n["spec"]["podSelector"].get("matchLabels", {}), labels):
                for e in n["spec"].get("egress", []):
                    out |= {p["port"] for p in e.get("ports", [])}
        return out

    def ingress_ports(labels: dict) -> set[int]:
        out = set()
        for n in nps:
            if matches(n["spec"]["podSelector"].get("matchLabels", {}), labels):
                for e in n["spec"].get("ingress", []):
                    out |= {p["port"] for p in e.get("ports", [])}
        return out

    need = {53, 5672, 5671, 443} | ({9000} if "AWS_ENDPOINT_URL" in common else set())
    for dep in (coord, worker):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        got = egress_ports(labels)
        rep.check(need <= got, f"{name}: {dep['metadata']['name']} egress allows {sorted(need)} (has {sorted(got)})")
    rep.check(8080 in ingress_ports(coord["spec"]["template"]["metadata"]["labels"]), f"{name}: coordinator ingress on 8080")
    rep.check(9091 in ingress_ports(worker["spec"]["template"]["metadata"]["labels"]), f"{name}: worker metrics ingress on 9091")

    # Monitoring: ServiceMonitors find a Service and its port; the rules equal alerts.yml
    services = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        if sm["metadata"]["name"] == "rabbitmq":
            # the operator creates that Service; its ports are amqp, management, prometheus
            rep.check(sm["spec"]["endpoints"][0]["path"] == "/metrics/per-object", f"{name}: RabbitMQ scraped at /metrics/per-object")
            continue
        sel = sm["spec"]["selector"]["matchLabels"]
        hit = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
        ports = {p.get("name") for s in hit for p in s["spec"]["ports"]}
        rep.check(
            bool(hit) and all(e["port"] in ports for e in sm["spec"]["endpoints"]),
            f"{name}: ServiceMonitor/{sm['metadata']['name']} selects a Service with port {[e['port'] for e in sm['spec']['endpoints']]}",
        )
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    prs = by_kind(docs, "PrometheusRule")
    rep.check(
        len(prs) == 1 and prs[0]["spec"]["groups"] == alerts,
        f"{name}: PrometheusRule groups == deploy/prometheus/alerts.yml",
    )

    # RabbitmqCluster (no schema package): the fields we use, and nothing the CRD lacks
    for rc in by_kind(docs, "RabbitmqCluster"):
        spec = rc["spec"]
        crd_fields = {
            "replicas", "image", "imagePullSecrets", "service", "persistence", "resources",
            "affinity", "tolerations", "rabbitmq", "tls", "override", "skipPostDeploySteps",
            "terminationGracePeriodSeconds", "secretBackend", "delayStartSeconds",
            "autoEnableAllFeatureFlags",
        }
        rep.check(rc["apiVersion"] == "rabbitmq.com/v1beta1", f"{name}: RabbitmqCluster is rabbitmq.com/v1beta1")
        rep.check(set(spec) <= crd_fields, f"{name}: RabbitmqCluster spec fields {sorted(set(spec) - crd_fields) or 'all'} known to the CRD")
        rep.check(spec.get("replicas") == 3, f"{name}: RabbitmqCluster has 3 replicas (quorum queues need a majority)")
        rmq = spec.get("rabbitmq", {})
        rep.check(
            set(rmq) <= {"additionalPlugins", "additionalConfig", "advancedConfig", "envConfig", "erlangInetConfig"},
            f"{name}: RabbitmqCluster spec.rabbitmq fields known to the CRD",
        )
        rep.check(isinstance(rmq.get("additionalConfig", ""), str), f"{name}: RabbitmqCluster additionalConfig is a string")
        rep.check(
            isinstance(spec.get("persistence", {}).get("storage", ""), str),
            f"{name}: RabbitmqCluster persistence.storage is a quantity string",
        )
        rep.check(
            common.get("AWS_ENDPOINT_URL", "").startswith("http://minio."),
            f"{name}: AWS_ENDPOINT_URL points at the in-cluster MinIO",
        )

    # aws: IRSA and the IAM policy names the buckets the config uses
    sa = named(docs, "ServiceAccount", "fleetmap")
    if name == "aws":
        ann = (sa or {}).get("metadata", {}).get("annotations", {})
        rep.check(
            re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", ann.get("eks.amazonaws.com/role-arn", "")) is not None,
            f"{name}: ServiceAccount carries eks.amazonaws.com/role-arn",
        )
        rep.check("AWS_ENDPOINT_URL" not in common, f"{name}: no AWS_ENDPOINT_URL (AWS S3)")
        rep.check(
            not any("AWS_ACCESS_KEY_ID" == e["name"] for d in (coord, worker) for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])),
            f"{name}: no static AWS keys (IRSA)",
        )
        check_iam_policy(rep, coord_cm)


def check_iam_policy(rep: Report, coord_cm: dict) -> None:
    path = K8S / "overlays/aws/iam-policy.json"
    try:
        pol = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001
        rep.fail(f"aws: {path.name} is not JSON: {e}")
        return
    stmts = pol.get("Statement", [])
    actions = {a for s in stmts for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    resources = [r for s in stmts for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    rep.check(pol.get("Version") == "2012-10-17", "aws: iam-policy.json Version 2012-10-17")
    rep.check(all(a.startswith("s3:") and "*" not in a for a in actions), f"aws: iam-policy.json grants named S3 actions only ({sorted(actions)})")
    rep.check(all(r.startswith("arn:aws:s3:::") and r != "arn:aws:s3:::*" for r in resources), "aws: iam-policy.json scopes every statement to buckets")
    rep.check(all(s.get("Effect") == "Allow" for s in stmts), "aws: iam-policy.json statements are Allow")
    m = re.fullmatch(r"s3://([^/]+)/(.*)", coord_cm.get("FLEETMAP_STATE_URI", ""))
    state_bucket, state_prefix = (m.group(1), m.group(2)) if m else ("", "")
    # Runs write their results to the bucket they name; the overlay's layout keeps them in
    # the state's bucket under the default prefixes.
    results, prefix = state_bucket, "analytics"

    def grants(action: str, arn: str) -> bool:
        for s in stmts:
            acts = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            if action in acts and any(re.fullmatch(re.escape(r).replace(r"\*", ".*"), arn) for r in res):
                return True
        return False

    rep.check(grants("s3:PutObject", f"arn:aws:s3:::{results}/{prefix}/2026/01/01/00/x.json"), f"aws: PutObject on s3://{results}/{prefix}/ (analytics records)")
    rep.check(grants("s3:PutObject", f"arn:aws:s3:::{results}/mapruns/run/manifest.json"), f"aws: PutObject on s3://{results}/mapruns/ (ResultWriter)")
    rep.check(
        grants("s3:PutObject", f"arn:aws:s3:::{state_bucket}/{state_prefix}x") and grants("s3:GetObject", f"arn:aws:s3:::{state_bucket}/{state_prefix}x"),
        f"aws: Get/PutObject on the coordinator state s3://{state_bucket}/{state_prefix} (FLEETMAP_STATE_URI)",
    )
    rep.check(not grants("s3:PutObject", "arn:aws:s3:::example-fleetmap-data/x"), "aws: the input bucket is read-only")


def cmd_k8s(render_dir: Path) -> None:
    rep = Report()
    for name, docs in renders(render_dir).items():
        print(f"[{name}] {len(docs)} objects")
        validate_schemas(rep, name, docs)
        try:
            check_k8s_semantics(rep, name, docs)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            rep.fail(f"{name}: a field the checks rely on is missing or of the wrong type: {type(e).__name__}: {e}")
    rep.exit()


def cmd_roles(render_dir: Path, compose_file: Path) -> None:
    rep = Report()
    for name, docs in renders(render_dir).items():
        check_fleetmap_roles(rep, name, docs)
    compose_roles(rep, compose_file)
    rep.exit()


# --- compose ---------------------------------------------------------------------------------


def compose_roles(rep: Report, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    for sname, svc in doc["services"].items():
        if not str(svc.get("image", "")).startswith("fleetmap"):
            continue
        cmd = svc.get("command")
        if cmd is None:
            continue  # the `cli` tool service: verbs come from the command line
        env = svc.get("environment", {})
        envs = set(env) if isinstance(env, dict) else {e.split("=")[0] for e in env}
        check_invocation(rep, f"compose: service {sname}", list(cmd), envs)


def cmd_compose(path: Path) -> None:
    rep = Report()
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    volumes = set(doc.get("volumes", {}) or {})
    for sname, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = deps if isinstance(deps, dict) else {d: {} for d in deps}
        for d in deps:
            rep.check(d in services, f"compose: {sname} depends_on {d} is a service", quiet=True)
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                rep.check((path.parent / src).exists(), f"compose: {sname} mounts {src}, which exists", quiet=True)
            elif not src.startswith("/"):
                rep.check(src in volumes, f"compose: {sname} volume {src} is declared", quiet=True)
        for p in svc.get("ports", []):
            rep.check(str(p).startswith("127.0.0.1:"), f"compose: {sname} publishes {p} on 127.0.0.1 only", quiet=True)
        b = svc.get("build")
        if b:
            ctx = path.parent / b.get("context", ".")
            rep.check((ctx / b.get("dockerfile", "Dockerfile")).exists(), f"compose: {sname} builds {b.get('dockerfile')} from {b.get('context')}")
    workers = services.get("worker", {})
    rep.check(workers.get("deploy", {}).get("replicas") == 3, "compose: three workers")
    rep.check("rabbitmq_prometheus" in (path.parent / "rabbitmq/enabled_plugins").read_text(), "compose: RabbitMQ Prometheus plugin enabled")
    rep.check(services.get("rabbitmq", {}).get("image", "").startswith("rabbitmq:3.13-management"), "compose: rabbitmq:3.13-management")
    # Prometheus scrapes services that exist, on the ports they serve
    prom = yaml.safe_load((path.parent / "prometheus/prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        hosts = [t.split(":")[0] for sc in job.get("static_configs", []) for t in sc["targets"]]
        hosts += [n for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        for h in hosts:
            rep.check(h in services, f"compose: Prometheus job {job['job_name']} scrapes service {h}")
    # Grafana's provisioning points at the mounted dashboard
    prov = yaml.safe_load((path.parent / "grafana/provisioning/dashboards/fleetmap.yml").read_text())
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith("./grafana/fleetmap.json")]
    rep.check(
        bool(mounted) and Path(mounted[0]).parent == Path(prov["providers"][0]["options"]["path"]),
        "compose: Grafana provisions the dashboard from where it is mounted",
    )
    rep.exit()


# --- dashboard -------------------------------------------------------------------------------

PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "row", "text", "heatmap", "piechart"}


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$prefix", "fleetmap")


def cmd_dashboard(path: Path, rules_out: Path) -> None:
    rep = Report()
    dash = json.loads(path.read_text())
    rep.check(dash.get("uid") == "fleetmap" and bool(dash.get("title")), "dashboard: uid and title")
    rep.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, "dashboard: schemaVersion ≥ 36")
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    rep.check(len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), "dashboard: unique integer panel ids")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    rep.check({"datasource", "prefix"} <= variables, "dashboard: variables datasource and prefix")
    occupied = set()
    overlaps = []
    for p in panels:
        rep.check(p.get("type") in PANEL_TYPES, f"dashboard: panel {p.get('title')!r} has a known type {p.get('type')!r}", quiet=True)
        g = p.get("gridPos", {})
        if not rep.check(
            all(isinstance(g.get(k), int) for k in "xywh") and g["x"] + g["w"] <= 24,
            f"dashboard: panel {p.get('title')!r} gridPos inside 24 columns", quiet=True,
        ):
            continue
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        if cells & occupied:
            overlaps.append(p["title"])
        occupied |= cells
        if p["type"] == "row":
            continue
        refs = [t.get("refId") for t in p.get("targets", [])]
        rep.check(bool(refs) and len(refs) == len(set(refs)), f"dashboard: panel {p['title']!r} has targets with unique refIds", quiet=True)
        rep.check(
            p.get("datasource", {}).get("uid") == "${datasource}" and all(t.get("datasource", {}).get("uid") == "${datasource}" for t in p["targets"]),
            f"dashboard: panel {p['title']!r} queries the $datasource variable", quiet=True,
        )
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval"}
            rep.check(used <= variables, f"dashboard: {p['title']!r} uses only defined variables ({sorted(used)})", quiet=True)
    rep.check(not overlaps, f"dashboard: panels do not overlap {overlaps or ''}")
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": substitute(e)} for i, (_, e) in enumerate(dashboard_exprs(dash))]}]}
    rules_out.write_text(yaml.safe_dump(rules, sort_keys=False))
    rep.exit()


# --- metrics ---------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals (label values)
    return set(re.findall(r"\b((?:fleetmap|rabbitmq)_[a-zA-Z0-9_]+)\b", expr))


def parse_families(texts: list[str]) -> dict[str, str]:
    fams = {}
    for t in texts:
        for m in re.finditer(r"(?m)^# TYPE (\S+) (\S+)$", t):
            fams[m.group(1)] = m.group(2)
    return fams


def cmd_metrics(scrapes: list[Path]) -> None:
    rep = Report()
    fams = parse_families([p.read_text() for p in scrapes])
    rep.check(bool(fams), f"metrics: scraped {len(fams)} metric families from {len(scrapes)} /metrics endpoints")
    used: dict[str, set[str]] = {}
    dash = json.loads((DEPLOY / "grafana/fleetmap.json").read_text())
    for title, e in dashboard_exprs(dash):
        for n in metric_names(e):
            used.setdefault(n, set()).add(f"dashboard {title!r}")
    for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]:
        for r in g["rules"]:
            for n in metric_names(r["expr"]):
                used.setdefault(n, set()).add(f"alert {r.get('alert') or r.get('record')}")
    exprs = [e for _, e in dashboard_exprs(dash)]
    for n, where in sorted(used.items()):
        w = ", ".join(sorted(where))
        if n.startswith("rabbitmq_"):
            rep.check(n in RABBITMQ_METRICS, f"{n} is a rabbitmq_prometheus per-object metric ({w})")
            continue
        base, suffix = n, ""
        for s in ("_bucket", "_sum", "_count"):
            if n.endswith(s) and n[: -len(s)] in fams:
                base, suffix = n[: -len(s)], s
        typ = fams.get(base)
        if typ is None:
            rep.fail(f"{n} is not exported by the coordinator or the worker ({w})")
        elif suffix == "_bucket" and typ != "histogram":
            rep.fail(f"{n}: {base} is a {typ}, not a histogram: no _bucket series ({w})")
        elif suffix == "" and typ == "histogram":
            rep.fail(f"{n}: {base} is a histogram; use {base}_bucket with histogram_quantile ({w})")
        else:
            rep.ok(f"{n} exported as a {typ} ({w})")
    # a summary queried by quantile must really carry quantile labels
    for e in exprs:
        for n in metric_names(e):
            if fams.get(n) == "summary" and "quantile" not in e:
                rep.fail(f"{n} is a summary but {e!r} does not select a quantile")
    # and everything exported is on the dashboard or in an alert (or knowingly left off)
    not_shown = sorted(set(fams) - {n for n in used} - {n[: -len(s)] for n in used for s in ("_sum", "_count", "_bucket") if n.endswith(s)})
    if not_shown:
        print(f"  note  exported but not on the dashboard: {', '.join(not_shown)}")
    rep.exit()


def cmd_promql(url: str, prefix: str) -> None:
    """Evaluates every dashboard query on a Prometheus that scraped a real run."""
    import urllib.parse
    import urllib.request

    rep = Report()
    dash = json.loads((DEPLOY / "grafana/fleetmap.json").read_text())
    for title, e in dashboard_exprs(dash):
        q = e.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$prefix", prefix)
        if any(n.startswith("rabbitmq_") for n in metric_names(q)):
            print(f"  skip  {title!r}: {q} (RabbitMQ metrics: no rabbitmq_prometheus plugin here)")
            continue
        with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=10) as r:
            res = json.load(r)
        n = len(res.get("data", {}).get("result", []))
        rep.check(res.get("status") == "success" and n > 0, f"{title!r}: {q} → {n} series")
    rep.exit()


# --- Dockerfile ------------------------------------------------------------------------------


def cmd_dockerfile(path: Path) -> None:
    rep = Report()
    text = path.read_text()
    rv = re.search(r'(?m)^rust-version\s*=\s*"([\d.]+)"', (REPO / "Cargo.toml").read_text())
    img = re.search(r"(?m)^ARG RUST_IMAGE=rust:([\d.]+)-bookworm$", text)
    rep.check(bool(img), "Dockerfile: builder is rust:<version>-bookworm")
    if rv and img:
        need = tuple(int(x) for x in rv.group(1).split("."))
        have = tuple(int(x) for x in img.group(1).split("."))
        rep.check(have[: len(need)] >= need[: len(have)], f"Dockerfile: rust {img.group(1)} ≥ the workspace's rust-version {rv.group(1)}")
    rep.check(bool(re.search(r"(?m)^ARG RUNTIME_IMAGE=(debian:bookworm-slim|gcr\.io/distroless/cc)", text)), "Dockerfile: runtime is debian:bookworm-slim or distroless cc")
    rep.check(bool(re.search(r"(?m)^USER 10001(:10001)?$", text)), "Dockerfile: runs as uid 10001")
    rep.check(bool(re.search(r'(?m)^ENTRYPOINT \["fleetmap"\]$', text)), 'Dockerfile: ENTRYPOINT ["fleetmap"]')
    rep.check("org.opencontainers.image.version=\"${VERSION}\"" in text, "Dockerfile: version label from the VERSION build arg")
    rep.check("ca-certificates" in text, "Dockerfile: ca-certificates in the runtime")
    rep.check("--locked" in text and "-p fleetmap" in text, "Dockerfile: builds -p fleetmap --locked")
    di = (REPO / ".dockerignore").read_text().split()
    rep.check("target/" in di and ".git/" in di, ".dockerignore: leaves out target/ and .git/")
    rep.exit()


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "k8s":
        cmd_k8s(Path(args[0]))
    elif cmd == "crd-json":
        cmd_crd_json(Path(args[0]), Path(args[1]))
    elif cmd == "roles":
        cmd_roles(Path(args[0]), Path(args[1]))
    elif cmd == "compose":
        cmd_compose(Path(args[0]))
    elif cmd == "dashboard":
        cmd_dashboard(Path(args[0]), Path(args[1]))
    elif cmd == "metrics":
        cmd_metrics([Path(a) for a in args])
    elif cmd == "promql":
        cmd_promql(args[0], args[1])
    elif cmd == "dockerfile":
        cmd_dockerfile(Path(args[0]))
    else:
        sys.exit(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
