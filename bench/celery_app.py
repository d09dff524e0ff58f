"""B3 reference: the job as a Celery user would write it — one task per Parquet file.

Each task reads the file from the same S3-protocol server fleetmap uses (pyarrow's
S3FileSystem with endpoint_override: ranged reads, the seven columns projected, one record
batch at a time, as fleetmap's worker reads row groups), flags anomalies with
pyarrow.compute, and streams one JSON analytics record per reading in the sample's schema
back to S3 (the same fields and number format as fleetmap: metrics rounded to 2 decimals,
shortest repr, and the same `metadata` with index and source; the index counts within the
file, as fleetmap's does for CSV input, because the driver does not read footers). It returns
the counts through the rpc result backend.

Broker: the same RabbitMQ as fleetmap, on a queue of its own (CELERY_QUEUE). Start workers
with `celery -A celery_app worker --pool prefork --concurrency 2 -Q $CELERY_QUEUE`; the
driver is celery_run.py.
"""

import os
from urllib.parse import urlparse

import pyarrow.compute as pc
import pyarrow.parquet as pq
from celery import Celery

QUEUE = os.environ.get("CELERY_QUEUE", "fleetmap-bench-celery")
app = Celery("fleetmap_bench",
             broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
             backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,             # ack after the work, as fleetmap does
    worker_prefetch_multiplier=4,    # fleetmap's default per-worker concurrency
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_enable_remote_control=False,  # no pidbox queue per worker on the shared broker
    worker_send_task_events=False,
)

COLUMNS = ["deviceid", "timestamp", "temperature", "humidity", "batterylevel", "latitude",
           "longitude"]
ANALYSISDATE = "2026-11-27"
ANALYSIS_TS = "2026-11-27T20:45:00.123Z"

_fs = None


def fs():
    """One S3FileSystem per worker process (connection reuse)."""
    global _fs
    if _fs is None:
        from pyarrow import fs as pafs

        url = urlparse(os.environ["AWS_ENDPOINT_URL"])
        _fs = pafs.S3FileSystem(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region=os.environ.get("AWS_REGION", "us-east-1"),
            endpoint_override=url.netloc, scheme=url.scheme)
    return _fs


def num(v):
    """round(v, 2) as JSON: null for missing / NaN, always with a decimal point."""
    if v is None or v != v:
        return "null"
    r = round(v, 2)
    return repr(r + 0.0) if r != 0 else "0.0"


@app.task(name="process_file")
def process_file(bucket, key, results_bucket, results_key):
    source = f"s3://{bucket}/{key}"
    meta_tail = ',"metadata":{"index":%d,"source":"' + source + '"}}\n'
    readings = anomalous = 0
    f = pq.ParquetFile(fs().open_input_file(f"{bucket}/{key}"))
    with fs().open_output_stream(f"{results_bucket}/{results_key}") as out:
        for batch in f.iter_batches(batch_size=64 * 1024, columns=COLUMNS):
            t, h = batch.column("temperature"), batch.column("humidity")
            b = batch.column("batterylevel")
            t_hi = pc.fill_null(pc.greater(t, 35), False)
            t_lo = pc.fill_null(pc.less(t, -10), False)
            h_hi = pc.fill_null(pc.greater(h, 95), False)
            h_lo = pc.fill_null(pc.less(h, 5), False)
            b_lo = pc.fill_null(pc.less(b, 20), False)
            cols = [batch.column(c).to_pylist() for c in COLUMNS]
            flags = [x.to_pylist() for x in (t_hi, t_lo, h_hi, h_lo, b_lo)]
            lines = []
            for i, (dev, ts, tv, hv, bv, la, lo, th, tl, hh, hl, bl) in enumerate(
                    zip(*cols, *flags), start=readings):
                tn, hn, bn = num(tv), num(hv), num(bv)
                an = []
                if th:
                    an.append('{"type":"temperature_spike","value":%s,"threshold":">35°C"}' % tn)
                elif tl:
                    an.append('{"type":"temperature_spike","value":%s,"threshold":"<-10°C"}' % tn)
                if hh:
                    an.append('{"type":"humidity_anomaly","value":%s,"threshold":">95%%"}' % hn)
                elif hl:
                    an.append('{"type":"humidity_anomaly","value":%s,"threshold":"<5%%"}' % hn)
                if bl:
                    an.append('{"type":"low_battery","value":%s,"threshold":"<20%%"}' % bn)
                anomalous += bool(an)
                lines.append(
                    '{"deviceid":"%s","analysisdate":"%s","readingtimestamp":"%s",'
                    '"readingscount":1,"metrics":{"temperature":%s,"humidity":%s,'
                    '"batterylevel":%s,"latitude":%s,"longitude":%s},"anomalies":[%s],'
                    '"anomalycount":%d,"healthstatus":"%s","timestamp":"%s"'
                    % (dev, ANALYSISDATE, ts, tn, hn, bn, num(la), num(lo), ",".join(an),
                       len(an), "anomalies_detected" if an else "healthy", ANALYSIS_TS)
                    + meta_tail % i)
            out.write("".join(lines).encode())
            readings += batch.num_rows
    return {"readings": readings, "anomalous": anomalous}
