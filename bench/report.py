"""Folds bench/results/results.jsonl (one JSON line per measurement) into one table.

Each figure is the median over its runs (n shown); the ratio is fleetmap's throughput over the
reference's, measured in the same run of bench/run.sh.
"""

import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = defaultdict(list)
for r in rows:
    runs[(r["bench"], r["tool"])].append(r)


def med(bench, tool, field):
    xs = [r[field] for r in runs.get((bench, tool), []) if r.get(field) is not None]
    return (statistics.median(xs), len(xs)) if xs else (None, 0)


def rate(bench, tool, amount="readings"):
    """Median throughput: amount / time of each run. One-core benches (B1, B2) divide by
    CPU seconds, so other load on a shared machine does not count against either tool;
    end-to-end benches by wall seconds."""
    field = "cpu_seconds" if bench in ("B1", "B2") else "seconds"
    xs = [r[amount] / r[field] for r in runs.get((bench, tool), []) if r.get(field)]
    return (statistics.median(xs), len(xs)) if xs else (None, 0)


def fmt(v, unit=""):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k{unit}"
    return f"{v:.1f}{unit}"


out = ["| bench | what | fleetmap | reference | ratio | target |",
       "| --- | --- | --- | --- | --- | --- |"]


def line(bench, what, ours, theirs, ref_name, target, unit="/s"):
    (a, na), (b, nb) = ours, theirs
    if not na and not nb:
        return
    ratio = f"{a / b:.2f}×" if a and b else "—"
    ref = f"{ref_name} {fmt(b, unit)} (n={nb})" if ref_name else "—"
    out.append(f"| {bench} | {what} | {fmt(a, unit)} (n={na}) | {ref} | {ratio} | {target} |")


line("B1", "readings/s, 1 core", rate("B1", "fleetmap"), rate("B1", "duckdb"),
     "DuckDB threads=1", "≥ 1.5×")
line("B1", "readings/s, 1 core", rate("B1", "fleetmap"), rate("B1", "pyarrow"),
     "pyarrow.compute", "—")
line("B1", "same, via the worker's 7-column Readings", rate("B1", "fleetmap-records"),
     rate("B1", "duckdb"), "DuckDB threads=1", "(info)")
line("B2", "records/s, 1 core", rate("B2", "fleetmap"), rate("B2", "duckdb"),
     "DuckDB COPY json", "≥ 2×")
for size, tgt_r, tgt_e in (("large", "≥ 3×", "—"), ("tiny", "—", "≥ 10×")):
    b = f"B3-{size}"
    line(b, "readings/s, e2e", rate(b, "fleetmap"), rate(b, "celery"), "Celery+pyarrow", tgt_r)
    line(b, "child executions/s", rate(b, "fleetmap", "executions"),
         rate(b, "celery", "executions"), "Celery+pyarrow", tgt_e)
    for tool in ("fleetmap", "celery"):
        by = [r for r in runs.get((b, tool), []) if r.get("cpu_by") and r.get("executions")]
        if by:
            groups = ", ".join(
                f"{g} {statistics.median(r['cpu_by'][g] * 1e3 / r['executions'] for r in by):.2f}"
                for g in by[0]["cpu_by"])
            out.append(f"| {b} | CPU ms per child execution, {tool} stack | {groups} "
                       f"(n={len(by)}) | — | — | (info) |")
    v, n = med(b, "fleetmap", "first_start_ms")
    if n:
        out.append(f"| {b} | run start → first child execution started (footer reads "
                   f"included) | {v:.0f} ms (n={n}) | — | — | (info) |")
get, n = med("B3-s3-request", "fleetmap", "get_cpu_us")
if n:
    put, _ = med("B3-s3-request", "fleetmap", "put_cpu_us")
    server, _ = med("B3-s3-request", "fleetmap", "server_cpu_us")
    dget, dn = med("B3-s3-request", "fleetmap", "direct_get_cpu_us")
    dput, _ = med("B3-s3-request", "fleetmap", "direct_put_cpu_us")
    direct = f"; direct lane {dget:.0f} / {dput:.0f}" if dn else ""
    out.append(f"| B3-tiny | CPU µs per S3 request (a tiny child execution makes 3): SDK client "
               f"GET 64 KiB suffix / PUT 10 KiB{direct}, S3 server per request (both lanes) | "
               f"{get:.0f} / {put:.0f}{direct}, server {server:.0f} (n={n}) | — | — | (info) |")
for sfx, what in (("", "in memory"), ("-ckpt", "with --state-uri")):
    sizes = sorted({int(b.split("-")[2]) for (b, _) in runs
                    if b.startswith("B4-throughput-") and b.endswith(sfx or "0")}, reverse=True)
    for n in sizes:
        b = f"B4-throughput-{n}{sfx}"
        line(b, f"child executions/s, {n:,} no-op items, coordinator {what}",
             rate(b, "fleetmap", "executions"), (None, 0), "", "≥ 5,000/s")
    b = f"B4-first{sfx}"
    for field, span in (("first_start_ms", "run start → first child execution started"),
                        ("client_first_start_ms", "StartMapRun sent → first started")):
        v, n = med(b, "fleetmap", field)
        if n:
            out.append(f"| {b} | {span}, 100 items, coordinator {what} "
                       f"| {v:.0f} ms (n={n}) | — | — | < 100 ms |")
for name in ("B5-2gb", "B5-20mb"):
    v, n = med(name, "fleetmap", "max_rss_mib")
    size, _ = med(name, "fleetmap", "file_bytes")
    if n:
        out.append(f"| {name} | worker peak RSS, {size / 2**20:.0f} MiB file | {v:.0f} MiB (n={n}) "
                   f"| — | — | ≤ 256 MiB |")
for name, field, what, target in (
        ("B5-coord-runs", "bytes_per_open_run_incl_items", "coordinator bytes per open run",
         "≤ 16 KiB"),
        ("B5-coord-items", "bytes_per_open_item", "coordinator bytes per pending item",
         "≤ 64 B"),
        ("B5-coord-items", "bytes_per_backlog_run", "coordinator bytes per backlogged run",
         "(info)")):
    v, n = med(name, "fleetmap", field)
    if n:
        r = runs[(name, "fleetmap")][0]
        scale = f"{r['open_runs']:,} open runs × {r['items_per_run']:,} items"
        if field == "bytes_per_backlog_run":
            scale = f"{r['backlog_runs']:,} backlogged runs"
        out.append(f"| {name} | {what} ({scale}) | {v:,.0f} B (n={n}) | — | — | {target} |")
for name, field, what, unit in (
        ("B5-coord-state", "start_seconds", "StartMapRun of every open run, each answered once durable", "s"),
        ("B5-coord-state", "backlog_start_seconds", "StartMapRun of every backlogged run", "s"),
        ("B5-coord-state", "checkpoint_bytes", "checkpoint size with every run started", "B"),
        ("B5-coord-state", "segment_bytes", "children segments, written once", "B"),
        ("B5-coord-state", "bytes_per_open_item", "coordinator bytes per pending item", "B"),
        ("B5-coord-state", "hwm_open_kib", "coordinator peak RSS while the open runs are planned",
         "KiB")):
    v, n = med(name, "fleetmap", field)
    if n:
        r = runs[(name, "fleetmap")][0]
        scale = (f"`--state-uri`, {r['open_runs']:,} open runs × {r['items_per_run']:,} items + "
                 f"{r.get('backlog_runs', 0):,} backlogged, {r['clients']} clients")
        shown = {"s": f"{v:,.2f} s", "B": f"{v:,.0f} B", "KiB": f"{v / 1024:,.0f} MiB"}[unit]
        out.append(f"| {name} | {what} ({scale}) | {shown} (n={n}) | — | — | (info) |")
print("\n".join(out))
