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
    ratio = f"{a / b:.2f}×" if a and b else "—"
    out.append(f"| {bench} | {what} | {fmt(a, unit)} (n={na}) | {ref_name} {fmt(b, unit)} (n={nb}) "
               f"| {ratio} | {target} |")


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
for tool in ("fleetmap",):
    for name in ("B5-2GB", "B5-20MB"):
        v, n = med(name, tool, "max_rss_mib")
        if n:
            out.append(f"| {name} | worker peak RSS | {v:.0f} MiB (n={n}) | — | — | ≤ 256 MiB |")
print("\n".join(out))
