"""B3 driver for the Celery reference: one task per object key, wait for every result.

    python celery_run.py BUCKET KEYLIST RESULTS_BUCKET

Prints one JSON line: seconds from the first send to the last result, child executions
(tasks), readings. Workers must already be running (see celery_app.py).
"""

import json
import sys
import time
import uuid

from celery import group

from celery_app import process_file

bucket, keylist, results_bucket = sys.argv[1], sys.argv[2], sys.argv[3]
keys = [k.strip() for k in open(keylist) if k.strip()]
run = uuid.uuid4().hex[:8]
start = time.perf_counter()
res = group(process_file.s(bucket, k, results_bucket, f"celery/{run}/{i:06}.json")
            for i, k in enumerate(keys)).apply_async()
out = res.get(timeout=3600, disable_sync_subtasks=False)
seconds = time.perf_counter() - start
print(json.dumps({"tool": "celery", "bench": "B3", "seconds": round(seconds, 4),
                  "executions": len(out), "readings": sum(o["readings"] for o in out),
                  "anomalous": sum(o["anomalous"] for o in out)}))
