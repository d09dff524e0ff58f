"""A loopback S3-protocol endpoint that serves objects from a folder and discards writes.

    python nulls3.py DIR PORT

B5 needs a worker to process a 2 GB Parquet file: ~150 M readings, whose JSON records are
~57 GB, more than this machine's free disk. The worker's memory does not depend on where its
output goes, so for B5 it talks to this server instead of `fleetmap s3-server`: GET / HEAD
(ranged, including suffix ranges) are answered from DIR/<bucket>/<key>, exactly as s3s-fs
lays objects out; PutObject and multipart uploads are read to the end and dropped, and
answered as S3 would. Authentication is not checked (loopback only). On SIGTERM it prints
one JSON line: bytes served and bytes discarded.

Path-style requests only (the fleetmap client uses path style with an endpoint override).
"""

import json
import os
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = os.path.abspath(sys.argv[1])
PORT = int(sys.argv[2])
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
stats = {"served_bytes": 0, "discarded_bytes": 0}
lock = threading.Lock()


def count(field, n):
    with lock:
        stats[field] += n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def target(self):
        u = urlsplit(self.path)
        parts = unquote(u.path).lstrip("/").split("/", 1)
        bucket = parts[0]
        key = parts[1] if len(parts) > 1 else ""
        return bucket, key, parse_qs(u.query, keep_blank_values=True)

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def xml(self, body):
        self.reply(200, ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode(),
                   [("Content-Type", "application/xml")])

    def not_found(self, key):
        self.reply(404, (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
                         f"<Key>{key}</Key></Error>").encode(),
                   [("Content-Type", "application/xml")])

    def drain(self):
        """Reads the request body to its end, keeping nothing."""
        buf = memoryview(bytearray(1 << 20))
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    left -= self.rfile.readinto(buf[:min(left, len(buf))])
                self.rfile.readline()
                n += size
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                got = self.rfile.readinto(buf[:min(left, len(buf))])
                if not got:
                    break
                left -= got
                n += got
        count("discarded_bytes", n)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        bucket, key, _ = self.target()
        if not key:
            return self.reply(200)
        path = os.path.join(ROOT, bucket, key)
        if not os.path.isfile(path):
            return self.not_found(key)
        size = os.path.getsize(path)
        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            if a == "":
                start = max(0, size - int(b))
            else:
                start = int(a)
                end = min(int(b), size - 1) if b else size - 1
            code = 206
        length = end - start + 1
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{size:x}"')
        self.send_header("Last-Modified", "Fri, 27 Nov 2026 00:00:00 GMT")
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self.wfile.flush()
        with open(path, "rb") as f:
            self.connection.sendfile(f, offset=start, count=length)
        count("served_bytes", length)

    def do_PUT(self):
        self.drain()
        self.reply(200, headers=[("ETag", f'"{uuid.uuid4().hex}"')])

    def do_POST(self):
        bucket, key, q = self.target()
        self.drain()
        if "uploads" in q:
            return self.xml(f"<InitiateMultipartUploadResult {NS}><Bucket>{bucket}</Bucket>"
                            f"<Key>{key}</Key><UploadId>{uuid.uuid4().hex}</UploadId>"
                            "</InitiateMultipartUploadResult>")
        if "uploadId" in q:
            return self.xml(f"<CompleteMultipartUploadResult {NS}><Location>/{bucket}/{key}"
                            f"</Location><Bucket>{bucket}</Bucket><Key>{key}</Key>"
                            f'<ETag>"{uuid.uuid4().hex}-1"</ETag></CompleteMultipartUploadResult>')
        self.reply(200)

    def do_DELETE(self):
        self.drain()
        self.reply(204)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True


def stop(*_):
    print(json.dumps(stats), flush=True)
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print(f"AWS_ENDPOINT_URL=http://127.0.0.1:{PORT}", flush=True)
server.serve_forever()
