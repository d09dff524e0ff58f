"""Drivers for B4 (control-plane throughput, time to first child execution) and the
coordinator half of B5 (memory per open run, per item and per backlogged run).

Both talk to a running `fleetmap coordinator` through its HTTP API (`/v1/map-runs`,
`/v1/admission`) and read the coordinator's memory from /proc/PID/status, so nothing here
needs a build of its own. Each prints one JSON line per measurement for report.py.

    python b45.py manifest URI N                   write a CSV-input manifest of N object URIs
    python b45.py b4 --api URL --manifest URI --bench B4-throughput --pids coord=P,noop=P,beam=P
    python b45.py coord-mem --api URL --pid P --manifest URI --runs R [--backlog B]
                  [--clients C] [--state-dir DIR]
    python b45.py cpu PID...                       CPU seconds of these processes + descendants
    python b45.py fm-line [--api URL] BENCH DESCRIBE.json [FIELDS-JSON]   a fleetmap result line
    python b45.py merge FIELDS-JSON < lines        adds fields to each JSON line

The manifests name objects that do not exist: B4's no-op worker never reads them, and a run
with `InputType CSV` (unlike PARQUET) does not read any object's footer when it opens, so
the coordinator's work per item is the same as for a real run minus that footer read.
"""

import argparse
import http.client
import json
import os
import sys
import time
from datetime import datetime
from urllib.parse import urlparse

RESULTS_BUCKET = os.environ.get("RESULTS_BUCKET", "fleetmap-results")


class Api:
    """One keep-alive connection to the coordinator's API."""

    def __init__(self, url):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
                data = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json"} if data else {}
                self.conn.request(method, path, data, headers)
                r = self.conn.getresponse()
                text = r.read()
                if r.status >= 300:
                    raise RuntimeError(f"{method} {path}: HTTP {r.status}: {text[:300]!r}")
                return json.loads(text)
            except (http.client.HTTPException, ConnectionError):
                self.conn = None
                if attempt == 2:
                    raise

    def start(self, manifest, max_concurrency, label):
        body = {
            "ItemReader": {"ManifestType": "ATHENA_DATA", "InputType": "CSV",
                           "Manifest": manifest},
            "MaxConcurrency": max_concurrency,
            "Results": {"Bucket": RESULTS_BUCKET, "Prefix": "bench"},
            "Label": label,
        }
        return self.call("POST", "/v1/map-runs", body)["mapRunId"]


def ms(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu(pid):
    """User + system CPU seconds of a process (0 if it is gone or unreadable)."""
    try:
        rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


def tree_cpu(roots):
    """CPU seconds of `roots` and all their descendants, including reaped children."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    total, todo, seen = 0.0, [int(r) for r in roots], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            rest = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in rest[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(kids.get(p, []))
    return total


def cmd_cpu(a):
    print(f"{tree_cpu(a.pids):.2f}")


def cmd_cpu_by(a):
    """CPU seconds per named process group (`name=pid,pid`) as a JSON object; with
    `--since JSON` (an earlier output), the seconds spent since then."""
    since = json.loads(a.since) if a.since else {}
    out = {}
    for group in a.groups:
        name, pids = group.split("=", 1)
        out[name] = round(tree_cpu([p for p in pids.split(",") if p]) - since.get(name, 0), 2)
    print(json.dumps(out))


def cmd_fm_line(a):
    """One B3 result line from `fleetmap start --wait -o json`'s DescribeMapRun document:
    seconds from the run's start to its last outcome, on the coordinator's clock."""
    d = json.load(open(a.describe))
    line = {"tool": "fleetmap", "bench": a.bench,
            "seconds": (ms(d["stopDate"]) - ms(d["startDate"])) / 1000,
            "readings": d["readings"]["processed"] if isinstance(d["readings"], dict)
            else d["readings"],
            "executions": d["executionCounts"]["succeeded"],
            "failed": d["executionCounts"]["failed"], "status": d["status"]}
    # Time to the first child execution: for a Parquet manifest this includes reading that
    # object's footer, and shows whether children wait for every footer.
    # Only where a coordinator serves the run (B3), not for `fleetmap run` (B5's worker part).
    if a.api:
        api = Api(a.api)
        page = api.call("GET", f"/v1/map-runs/{d['mapRunId']}/executions?maxResults=1000")
        starts = [ms(e["startDate"]) for e in page["executions"] if e.get("startDate")]
        if starts:
            line["first_start_ms"] = round(min(starts) - ms(d["startDate"]), 1)
    line.update(json.loads(a.fields or "{}"))
    print(json.dumps(line))


def cmd_merge(a):
    extra = json.loads(a.fields)
    for line in sys.stdin:
        if line.strip():
            d = json.loads(line)
            d.update(extra)
            print(json.dumps(d))


def cmd_manifest(a):
    """Writes the manifest through the S3 API (pyarrow's S3 filesystem, the loopback
    server's keys from the environment)."""
    from pyarrow import fs as pafs

    u = urlparse(os.environ["AWS_ENDPOINT_URL"])
    s3 = pafs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                           region=os.environ.get("AWS_REGION", "us-east-1"),
                           endpoint_override=u.netloc, scheme=u.scheme)
    m = urlparse(a.uri)
    base = m.path.lstrip("/").rsplit("/", 1)[0]
    lines = "".join(f"s3://{m.netloc}/{base}/obj-{i:08}.csv\n" for i in range(a.n))
    with s3.open_output_stream(f"{m.netloc}{m.path}") as out:
        out.write(lines.encode())


def wait_terminal(api, run, poll):
    while True:
        d = api.call("GET", f"/v1/map-runs/{run}")
        if d["status"] not in ("RUNNING", "PENDING"):
            return d
        time.sleep(poll)


def cmd_b4(a):
    api = Api(a.api)
    pids = dict(kv.split("=") for kv in a.pids.split(",")) if a.pids else {}
    cpu0 = {k: cpu(p) for k, p in pids.items()}
    load0 = loadavg()
    t_post = time.time() * 1000
    run = api.start(a.manifest, a.max_concurrency, a.bench[:40])
    d = wait_terminal(api, run, a.poll)
    cpu1 = {k: round(cpu(p) - cpu0[k], 2) for k, p in pids.items()}
    start, stop = ms(d["startDate"]), ms(d["stopDate"])
    n = d["executionCounts"]["succeeded"]
    # The first child execution: the earliest worker start in the first page (executions
    # are dispatched in index order, so it is there), and its ExecutionDispatched event.
    page = api.call("GET", f"/v1/map-runs/{run}/executions?maxResults=1000")["executions"]
    first = min(page, key=lambda e: ms(e["startDate"]))
    hist = api.call("GET", f"/v1/map-runs/{run}/executions/{first['execution']}")["history"]
    dispatched = min(ms(h["timestamp"]) for h in hist if h["type"] == "ExecutionDispatched")
    print(json.dumps({
        "tool": "fleetmap", "bench": a.bench, "status": d["status"],
        "executions": n, "failed": d["executionCounts"]["failed"],
        "seconds": round((stop - start) / 1000, 4),
        "first_dispatch_ms": round(dispatched - start, 1),
        "first_start_ms": round(ms(first["startDate"]) - start, 1),
        "client_first_start_ms": round(ms(first["startDate"]) - t_post, 1),
        "cpu": cpu1, "load": [load0, loadavg()], "run": run,
    }), flush=True)


def wait_items(api, runs, items):
    """Until every run in `runs` has its child executions planned."""
    want = set(runs)
    while True:
        ready, token = set(), None
        while True:
            q = "/v1/map-runs?maxResults=1000" + (f"&nextToken={token}" if token else "")
            page = api.call("GET", q)
            for d in page["mapRuns"]:
                if d["mapRunId"] in want and d["executionCounts"]["total"] == items:
                    ready.add(d["mapRunId"])
            token = page.get("nextToken")
            if not token:
                break
        if ready == want:
            return
        time.sleep(0.5)


def settle_rss(pid, secs=2.0):
    time.sleep(secs)
    return proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM")


def start_all(a, labels):
    """Starts one run per label from `a.clients` clients at once (each a connection of its
    own, as separate callers would be), in order per client; returns the run ids in
    `labels`' order. With --state-uri each StartMapRun is answered once a checkpoint holds
    it, so one caller at a time measures checkpoint latency, several measure throughput."""
    if a.clients <= 1:
        api = Api(a.api)
        return [api.start(a.manifest, a.max_concurrency, label) for label in labels]
    from concurrent.futures import ThreadPoolExecutor
    chunks = [labels[i::a.clients] for i in range(a.clients)]

    def client(chunk):
        api = Api(a.api)
        return [api.start(a.manifest, a.max_concurrency, label) for label in chunk]

    with ThreadPoolExecutor(a.clients) as pool:
        done = list(pool.map(client, chunks))
    ids = {}
    for chunk, runs in zip(chunks, done):
        ids.update(zip(chunk, runs))
    return [ids[label] for label in labels]


def checkpoint_files(state_dir):
    """The checkpoint's size on the S3 server's disk: the larger slot, and the children
    segments and archives beside it."""
    out = {"checkpoint_bytes": 0, "segment_objects": 0, "segment_bytes": 0}
    if not state_dir or not os.path.isdir(state_dir):
        return out
    for root, _, files in os.walk(state_dir):
        for f in files:
            size = os.path.getsize(os.path.join(root, f))
            if f.startswith("coordinator-state."):
                out["checkpoint_bytes"] = max(out["checkpoint_bytes"], size)
            elif f.endswith(".bin"):
                out["segment_objects"] += 1
                out["segment_bytes"] += size
    return out


def cmd_coord_mem(a):
    api = Api(a.api)
    pid = a.pid
    rss0, _ = settle_rss(pid, 0.5)
    t0 = time.time()
    runs = start_all(a, [f"mem-open-{i}" for i in range(a.runs)])
    t_started = time.time() - t0
    wait_items(api, runs, a.items)
    t_planned = time.time() - t0
    rss1, hwm1 = settle_rss(pid)
    out = {
        "tool": "fleetmap", "bench": a.bench, "open_runs": a.runs, "items_per_run": a.items,
        "clients": a.clients, "state": bool(a.state_dir),
        "rss0_kib": rss0, "rss_open_kib": rss1, "hwm_open_kib": hwm1,
        "bytes_per_open_item": round((rss1 - rss0) * 1024 / (a.runs * a.items), 1),
        "bytes_per_open_run_incl_items": round((rss1 - rss0) * 1024 / a.runs),
        "start_seconds": round(t_started, 2), "planned_seconds": round(t_planned, 2),
    }
    if a.state_dir:
        out.update({k + "_open": v for k, v in checkpoint_files(a.state_dir).items()})
    if a.backlog:
        t1 = time.time()
        start_all(a, [f"mem-backlog-{i}" for i in range(a.backlog)])
        while api.call("GET", "/v1/admission")["backlogSize"] < a.backlog:
            time.sleep(0.5)
        rss2, hwm2 = settle_rss(pid)
        out.update({
            "backlog_runs": a.backlog, "rss_backlog_kib": rss2, "hwm_backlog_kib": hwm2,
            "bytes_per_backlog_run": round((rss2 - rss1) * 1024 / a.backlog),
            "backlog_start_seconds": round(time.time() - t1, 2),
        })
        if a.state_dir:
            out.update(checkpoint_files(a.state_dir))
    out["cpu_seconds"] = round(cpu(pid), 2)
    out["load"] = loadavg()
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("uri")
    m.add_argument("n", type=int)
    b = sub.add_parser("b4")
    b.add_argument("--api", required=True)
    b.add_argument("--manifest", required=True)
    b.add_argument("--bench", required=True)
    b.add_argument("--max-concurrency", type=int, default=0)
    b.add_argument("--poll", type=float, default=0.05)
    b.add_argument("--pids", default="")
    c = sub.add_parser("coord-mem")
    c.add_argument("--api", required=True)
    c.add_argument("--pid", required=True)
    c.add_argument("--manifest", required=True)
    c.add_argument("--items", type=int, required=True)
    c.add_argument("--runs", type=int, required=True)
    c.add_argument("--backlog", type=int, default=0)
    c.add_argument("--max-concurrency", type=int, default=1)
    c.add_argument("--bench", default="B5-coordinator")
    c.add_argument("--clients", type=int, default=1)
    c.add_argument("--state-dir", default="")
    c = sub.add_parser("cpu")
    c.add_argument("pids", nargs="+")
    c = sub.add_parser("cpu-by")
    c.add_argument("--since")
    c.add_argument("groups", nargs="+")
    c = sub.add_parser("fm-line")
    c.add_argument("--api", help="coordinator to ask for the first child's start")
    c.add_argument("bench")
    c.add_argument("describe")
    c.add_argument("fields", nargs="?")
    c = sub.add_parser("merge")
    c.add_argument("fields")
    a = p.parse_args()
    {"manifest": cmd_manifest, "b4": cmd_b4, "coord-mem": cmd_coord_mem, "cpu": cmd_cpu, "cpu-by": cmd_cpu_by,
     "fm-line": cmd_fm_line, "merge": cmd_merge}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
