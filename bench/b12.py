"""B1 / B2 reference drivers: DuckDB (threads=1) and pyarrow (one CPU thread).

    python b12.py duckdb-b1 FILELIST
    python b12.py pyarrow-b1 FILELIST
    python b12.py duckdb-b2 FILELIST OUT.json

FILELIST holds one Parquet path per line (the sample writes files without an extension, so
no glob is used). Each mode prints one JSON line in the same shape as fleetmap-bench:
`seconds` covers the work only (imports and connection set-up excluded), plus a checksum
that run.sh compares with fleetmap's.

The rules are the fleetmap defaults (temperature > 35 or < -10, humidity > 95 or < 5,
battery < 20, strict). DuckDB compares NaN as greater than everything; the generated data has
no NaN, so the queries do not special-case it.
"""

import json
import sys
import time

B1_SQL = """
SELECT deviceid,
       count(*) FILTER (WHERE temperature > 35 OR temperature < -10
                           OR humidity > 95 OR humidity < 5
                           OR batterylevel < 20)                      AS anomalous,
       count(*) FILTER (WHERE temperature > 35 OR temperature < -10)  AS temperature_spike,
       count(*) FILTER (WHERE humidity > 95 OR humidity < 5)          AS humidity_anomaly,
       count(*) FILTER (WHERE batterylevel < 20)                      AS low_battery,
       count(*)                                                       AS readings
FROM read_parquet($files)
GROUP BY deviceid
"""

# The sample's analytics record, field for field, in fleetmap's order. Metrics rounded to
# 2 decimals; anomalies listed temperature, humidity, battery.
B2_SQL = """
COPY (
  WITH r AS (
    SELECT deviceid, timestamp,
           round(temperature, 2) AS t, round(humidity, 2) AS h, round(batterylevel, 2) AS b,
           round(latitude, 2) AS la, round(longitude, 2) AS lo,
           list_filter([
             CASE WHEN temperature > 35 THEN {'type': 'temperature_spike', 'value': round(temperature, 2), 'threshold': '>35°C'}
                  WHEN temperature < -10 THEN {'type': 'temperature_spike', 'value': round(temperature, 2), 'threshold': '<-10°C'} END,
             CASE WHEN humidity > 95 THEN {'type': 'humidity_anomaly', 'value': round(humidity, 2), 'threshold': '>95%'}
                  WHEN humidity < 5 THEN {'type': 'humidity_anomaly', 'value': round(humidity, 2), 'threshold': '<5%'} END,
             CASE WHEN batterylevel < 20 THEN {'type': 'low_battery', 'value': round(batterylevel, 2), 'threshold': '<20%'} END
           ], lambda x: x IS NOT NULL) AS anomalies
    FROM read_parquet($files)
  )
  SELECT deviceid,
         '2026-11-27' AS analysisdate,
         timestamp AS readingtimestamp,
         1 AS readingscount,
         {'temperature': t, 'humidity': h, 'batterylevel': b, 'latitude': la, 'longitude': lo} AS metrics,
         anomalies,
         len(anomalies) AS anomalycount,
         CASE WHEN len(anomalies) = 0 THEN 'healthy' ELSE 'anomalies_detected' END AS healthstatus,
         '2026-11-27T20:45:00.123Z' AS timestamp
  FROM r
) TO '{out}' (FORMAT json)
"""


def files_of(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def duckdb_con():
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("SET preserve_insertion_order = true")
    return con


def duckdb_b1(files):
    con = duckdb_con()
    start, cpu0 = time.perf_counter(), time.process_time()
    rows = con.execute(B1_SQL, {"files": files}).fetchall()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    with_anomalies = [r for r in rows if r[1] > 0]
    report("duckdb", "B1", seconds, cpu, sum(r[5] for r in rows),
           anomalous=sum(r[1] for r in rows),
           temperature_spike=sum(r[2] for r in rows),
           humidity_anomaly=sum(r[3] for r in rows),
           low_battery=sum(r[4] for r in rows),
           devices_with_anomalies=len(with_anomalies))


def duckdb_b2(files, out):
    import os

    con = duckdb_con()
    start, cpu0 = time.perf_counter(), time.process_time()
    # COPY takes no parameter for its target, and the file list is long: inline both.
    sql = B2_SQL.replace("$files", "[" + ",".join("'%s'" % f for f in files) + "]")
    sql = sql.replace("{out}", out)
    n = con.execute(sql).fetchall()[0][0]
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    report("duckdb", "B2", seconds, cpu, n, bytes=os.path.getsize(out))


def pyarrow_b1(files):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    start, cpu0 = time.perf_counter(), time.process_time()
    parts = []
    readings = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["deviceid", "temperature", "humidity", "batterylevel"],
                                  use_threads=False)
            readings += t.num_rows
            temp = pc.or_(pc.greater(t["temperature"], 35), pc.less(t["temperature"], -10))
            hum = pc.or_(pc.greater(t["humidity"], 95), pc.less(t["humidity"], 5))
            bat = pc.less(t["batterylevel"], 20)
            anyb = pc.or_(pc.or_(temp, hum), bat)
            flags = pa.table({
                "deviceid": t["deviceid"],
                "a": pc.cast(anyb, pa.int64()),
                "t": pc.cast(temp, pa.int64()),
                "h": pc.cast(hum, pa.int64()),
                "b": pc.cast(bat, pa.int64()),
            }).filter(anyb)
            parts.append(flags.group_by("deviceid", use_threads=False)
                         .aggregate([("a", "sum"), ("t", "sum"), ("h", "sum"), ("b", "sum")]))
    summary = pa.concat_tables(parts).group_by("deviceid", use_threads=False).aggregate(
        [("a_sum", "sum"), ("t_sum", "sum"), ("h_sum", "sum"), ("b_sum", "sum")])
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    col = lambda name: pc.sum(summary[name]).as_py() or 0
    report("pyarrow", "B1", seconds, cpu, readings,
           anomalous=col("a_sum_sum"), temperature_spike=col("t_sum_sum"),
           humidity_anomaly=col("h_sum_sum"), low_battery=col("b_sum_sum"),
           devices_with_anomalies=summary.num_rows)


def report(tool, bench, seconds, cpu, readings, **extra):
    print(json.dumps({"tool": tool, "bench": bench, "seconds": round(seconds, 4),
                      "cpu_seconds": round(cpu, 2),
                      "readings": readings, **extra}))


if __name__ == "__main__":
    mode, files = sys.argv[1], files_of(sys.argv[2])
    if mode == "duckdb-b1":
        duckdb_b1(files)
    elif mode == "duckdb-b2":
        duckdb_b2(files, sys.argv[3])
    elif mode == "pyarrow-b1":
        pyarrow_b1(files)
    else:
        sys.exit("unknown mode " + mode)
