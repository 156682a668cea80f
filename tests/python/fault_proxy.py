"""A fault-injecting, recording HTTP reverse proxy for the object-store tests
(tests/object_store.rs, tests/object_multipart.rs; started by `FaultProxy` in
tests/common/objstore.rs).

Runs in front of moto (S3) or Azurite (Azure Blob); the collector's endpoint points at it. Each
request is forwarded on a fresh upstream connection, byte for byte but for hop-by-hop headers, so
signatures stay valid. Its behaviour is read from MODE_FILE on every request, so a test switches
it while the collector runs:

  pass     forward the request and the answer unchanged
  503      answer 503 with an S3 `<Error><Code>SlowDown</Code>` body and `Retry-After: 1`
  429      answer 429 Too Many Requests (`Retry-After: 1`)
  trickle  forward the request body slowly (TRICKLE_BYTES every TRICKLE_PAUSE seconds), so an
           upload is in flight for seconds; if the client goes away mid-body, the upstream
           connection is closed with the body incomplete, as a dying client leaves it
  cut      (during a trickled body) drop it there: both connections are closed with the body
           incomplete. A client killed with `kill -9` does not cut its upload by itself: its
           kernel still delivers what the process had written to the socket (a whole small
           file, on loopback), so a test kills the client and then cuts, as when the node or
           its network goes with the process
  refuse-after-part
           the first part upload to arrive (S3 `PUT ?partNumber=`, Azure `PUT ?comp=block`)
           passes; every later request waits until the store has answered that part (so a part
           really is stored when the upload fails), then is answered 403 AccessDenied, as a store
           whose permission or credentials went away mid-upload, except the multipart abort
           (S3 `DELETE ?uploadId=`), which is forwarded. Each time MODE_FILE is replaced (a new
           file renamed into place) with this mode, it starts over: the next part passes again
  gcs-etag forward like pass, and add to a successful PUT's answer that has none the header
           `ETag: "<hex md5 of the body>"`, as Google Cloud Storage's XML API answers an object
           PUT; PyPI's gcp-storage-emulator leaves it out, and object_store's GCS client refuses
           a PUT answer without it ("ETag Header missing"). Counted in `etag_added`

Counts are written to STATE_FILE (JSON, replaced atomically) after every event: requests
answered per mode, PUT bodies started/finished/aborted in trickle mode, and the request now
being trickled (`inflight`: method, path, bytes forwarded so far, Content-Length), `refused`
(403s of refuse-after-part), and `log`: every request in the order answered, as
{"method", "target" (path and query as sent), "status"}: the status the store answered (recorded
even when the client has gone meanwhile), the proxy's own 503/429/403, or 0 when no answer was
given (the body was cut or the client went away mid-body).

Standard library only.  Usage: fault_proxy.py LISTEN_PORT UPSTREAM_PORT MODE_FILE STATE_FILE
"""

import hashlib
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRICKLE_BYTES = 1024
TRICKLE_PAUSE = 0.5  # 2 KiB/s

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)
TOO_MANY = b"Too Many Requests (fault_proxy)"
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>refused by the test's fault proxy</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)
REFUSE = "refuse-after-part"
GCS_ETAG = "gcs-etag"
# How long a request held back by refuse-after-part waits for the passed part's answer.
PART_WAIT = 60.0


def query(target):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True)


def is_part(method, target):
    """A part of a multipart upload: S3 UploadPart or Azure Put Block (not Put Block List)."""
    q = query(target)
    return method == "PUT" and ("partNumber" in q or q.get("comp") == ["block"])


def is_abort(method, target):
    """S3 AbortMultipartUpload."""
    return method == "DELETE" and "uploadId" in query(target)


class State:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.counts = {
            "pass": 0,
            "503": 0,
            "429": 0,
            "trickle": 0,
            "trickle_started": 0,
            "trickle_done": 0,
            "trickle_aborted": 0,
            "refused": 0,
            "etag_added": 0,
            "inflight": None,
            "aborted": [],
            "log": [],
        }
        # refuse-after-part: which arming (the mode file's inode) the flags belong to, whether
        # its part went through, and whether the store has answered it.
        self.armed = None
        self.part_passed = False
        self.part_stored = False
        self.stored = threading.Condition(self.lock)
        self.write()

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counts, f)
        os.replace(tmp, self.path)

    def update(self, fn):
        with self.lock:
            fn(self.counts)
            self.write()

    def record(self, method, target, status, counted=None):
        """Logs one request with the status its client got (or would have got)."""
        with self.lock:
            if counted:
                self.counts[counted] += 1
            self.counts["log"].append({"method": method, "target": target, "status": status})
            self.write()

    def refuse_after_part(self, arming, method, target):
        """refuse-after-part: returns (refuse, passing_part) for one request under `arming`.

        A refused request first waits (up to PART_WAIT) until the passed part was answered."""
        with self.lock:
            if self.armed != arming:
                self.armed, self.part_passed, self.part_stored = arming, False, False
            refuse = self.part_passed and not is_abort(method, target)
            passing_part = not refuse and not self.part_passed and is_part(method, target)
            if passing_part:
                self.part_passed = True
            if refuse:
                self.stored.wait_for(lambda: self.part_stored or self.armed != arming, PART_WAIT)
            return refuse, passing_part

    def part_answered(self):
        with self.lock:
            self.part_stored = True
            self.stored.notify_all()

    def disarm(self):
        with self.lock:
            self.armed = None


def mode(mode_file):
    """The mode, and the mode file's identity (a test replaces the file to switch modes)."""
    try:
        with open(mode_file) as f:
            return f.read().strip() or "pass", os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return "pass", None


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream_port = 0
    mode_file = ""
    state = None

    def log_message(self, fmt, *args):
        pass

    def body_length(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        return int(self.headers.get("Content-Length", "0") or "0")

    def read_chunked(self):
        out = b""
        while True:
            line = self.rfile.readline()
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    def answer(self, status, body, headers, length=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def drain(self, length):
        """Takes the request body off the wire and returns it."""
        if length is None:
            return self.read_chunked()
        return self.rfile.read(length) if length else b""

    def handle_one(self):
        m, arming = mode(self.mode_file)
        if m != REFUSE:
            self.state.disarm()
        length = self.body_length()
        if m in ("503", "429"):
            # Take the body off the wire first, so the client sees the answer, not a reset.
            self.drain(length)
            self.state.record(self.command, self.path, int(m), counted=m)
            if m == "503":
                self.answer(
                    503,
                    SLOWDOWN,
                    [("Content-Type", "application/xml"), ("Retry-After", "1")],
                )
            else:
                self.answer(429, TOO_MANY, [("Content-Type", "text/plain"), ("Retry-After", "1")])
            return
        body = None
        passing_part = False
        if m == GCS_ETAG:
            body = self.drain(length)
        if m == REFUSE:
            # The whole body first: requests are ordered by their arrival, as a store sees them.
            body = self.drain(length)
            refuse, passing_part = self.state.refuse_after_part(arming, self.command, self.path)
            if refuse:
                self.state.record(self.command, self.path, 403, counted="refused")
                self.answer(403, ACCESS_DENIED, [("Content-Type", "application/xml")])
                return
        try:
            self.forward(m, length, body)
        finally:
            if passing_part:
                # Answered (or lost): the requests held back behind it are refused now.
                self.state.part_answered()

    def forward(self, m, length, body):
        trickle = m == "trickle" and self.command in ("PUT", "POST") and bool(length)
        counted = "trickle" if m == "trickle" else "pass"
        up = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        if body is None and length is None:
            body = self.read_chunked()
        if body is not None:
            length = len(body)
        for k, v in self.headers.items():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                up.putheader(k, v)
        up.putheader("Content-Length", str(length))
        up.endheaders()
        if body is not None:
            up.send(body)
        elif trickle:
            inflight = {"method": self.command, "path": self.path, "sent": 0, "length": length}
            self.state.update(
                lambda c: (
                    c.__setitem__("trickle_started", c["trickle_started"] + 1),
                    c.__setitem__("inflight", dict(inflight)),
                )
            )
            sent = 0
            while sent < length:
                if mode(self.mode_file)[0] == "cut":
                    chunk = b""
                else:
                    try:
                        chunk = self.rfile.read(min(TRICKLE_BYTES, length - sent))
                    except OSError:
                        chunk = b""
                if not chunk:
                    # The client went away mid-body, or the test cut the connection: leave the
                    # upstream request incomplete, as a lost client or network leaves it.
                    up.sock.close()
                    self.state.update(
                        lambda c: (
                            c.__setitem__("trickle_aborted", c["trickle_aborted"] + 1),
                            c["aborted"].append(self.path),
                            c.__setitem__("inflight", None),
                            c["log"].append(
                                {"method": self.command, "target": self.path, "status": 0}
                            ),
                        )
                    )
                    self.close_connection = True
                    return
                up.send(chunk)
                sent += len(chunk)
                inflight["sent"] = sent
                self.state.update(lambda c: c.__setitem__("inflight", dict(inflight)))
                time.sleep(TRICKLE_PAUSE)
            self.state.update(
                lambda c: (
                    c.__setitem__("trickle_done", c["trickle_done"] + 1),
                    c.__setitem__("inflight", None),
                )
            )
        else:
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(65536, remaining))
                if not chunk:
                    up.sock.close()
                    self.state.record(self.command, self.path, 0)
                    self.close_connection = True
                    return
                up.send(chunk)
                remaining -= len(chunk)
        resp = up.getresponse()
        data = resp.read()
        up.close()
        # What the store answered, even if the client has gone meanwhile (an aborted multipart
        # upload cancels its parts in flight).
        self.state.record(self.command, self.path, resp.status, counted=counted)
        headers = [
            (k, v)
            for k, v in resp.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        ]
        if (
            m == GCS_ETAG
            and self.command == "PUT"
            and 200 <= resp.status < 300
            and not resp.getheader("ETag")
        ):
            # What GCS's XML API answers a PUT with, and the emulator leaves out.
            headers.append(("ETag", '"%s"' % hashlib.md5(body).hexdigest()))
            self.state.update(lambda c: c.__setitem__("etag_added", c["etag_added"] + 1))
        # A HEAD answer has no body but says the object's length.
        self.answer(resp.status, data, headers, resp.getheader("Content-Length") if self.command == "HEAD" else None)

    def do_any(self):
        try:
            self.handle_one()
        except (ConnectionError, OSError):
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_any


def main():
    listen, upstream, mode_file, state_file = sys.argv[1:5]
    Proxy.upstream_port = int(upstream)
    Proxy.mode_file = mode_file
    Proxy.state = State(state_file)
    server = ThreadingHTTPServer(("127.0.0.1", int(listen)), Proxy)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
