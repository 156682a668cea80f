"""A fault-injecting HTTP reverse proxy for the object-store tests (tests/object_store.rs).

Runs in front of moto (S3) or Azurite (Azure Blob); the collector's endpoint points at it. Its
behaviour is read from MODE_FILE on every request, so a test switches it while the collector
runs:

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

Counts are written to STATE_FILE (JSON, replaced atomically) after every event: requests
answered per mode, PUT bodies started/finished/aborted in trickle mode, and the request now
being trickled (`inflight`: method, path, bytes forwarded so far, Content-Length).

Standard library only.  Usage: fault_proxy.py LISTEN_PORT UPSTREAM_PORT MODE_FILE STATE_FILE
"""

import http.client
import json
import os
import sys
import threading
import time
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
            "inflight": None,
            "aborted": [],
        }
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


def mode(mode_file):
    try:
        with open(mode_file) as f:
            return f.read().strip() or "pass"
    except FileNotFoundError:
        return "pass"


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

    def handle_one(self):
        m = mode(self.mode_file)
        length = self.body_length()
        if m in ("503", "429"):
            # Take the body off the wire first, so the client sees the answer, not a reset.
            if length is None:
                self.read_chunked()
            elif length:
                self.rfile.read(length)
            self.state.update(lambda c: c.__setitem__(m, c[m] + 1))
            if m == "503":
                self.answer(
                    503,
                    SLOWDOWN,
                    [("Content-Type", "application/xml"), ("Retry-After", "1")],
                )
            else:
                self.answer(429, TOO_MANY, [("Content-Type", "text/plain"), ("Retry-After", "1")])
            return
        trickle = m == "trickle" and self.command in ("PUT", "POST") and bool(length)
        counted = "trickle" if m == "trickle" else "pass"
        up = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        body = None
        if length is None:
            body = self.read_chunked()
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
                if mode(self.mode_file) == "cut":
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
                    self.close_connection = True
                    return
                up.send(chunk)
                remaining -= len(chunk)
        resp = up.getresponse()
        data = resp.read()
        up.close()
        self.state.update(lambda c: c.__setitem__(counted, c[counted] + 1))
        headers = [
            (k, v)
            for k, v in resp.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        ]
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
