"""A fault-injecting HTTP proxy on 127.0.0.1 for tests: forwards every request to an upstream server (moto's S3)
and answers chosen ones itself with an error, the way a real store fails.

    with FaultProxy(upstream="http://127.0.0.1:5000") as proxy:
        proxy.fail("tiles/b.png", 403)               # every request whose path contains this, forever
        proxy.fail("tiles/c.png", 503, times=2)      # the next two, then the real answer
        proxy.fail("tiles/d.png", "drop")            # close the connection without an answer
        s3fs.S3FileSystem(endpoint_url=proxy.url, ...)

Errors carry S3's XML body (``SlowDown`` for 503, ``AccessDenied`` for 403, ``InternalError`` for 500), so
botocore and s3fs see what AWS would send. ``proxy.hits`` counts the failures served per rule.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_CODES = {403: ("AccessDenied", "Access Denied"), 404: ("NoSuchKey", "The specified key does not exist."),
          429: ("SlowDown", "Please reduce your request rate."), 500: ("InternalError", "We encountered an "
          "internal error. Please try again."), 503: ("SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.rules: list[list] = []  # [substring, status or "drop", remaining (None: forever), methods]
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._fault(self.command, self.path)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    code, message = _CODES.get(fault, ("Error", "Injected failure"))
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message></Error>").encode()
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                # a HEAD answer has no body but the object's length
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: shutdown() returns at once instead of after half a second
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def fail(self, path_part: str, status: int | str, *, times: int | None = None,
             methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        """Answer requests (of ``methods``) whose path contains ``path_part`` with ``status`` (or ``"drop"``),
        ``times`` times (None: always)."""
        with self._lock:
            self.rules.append([path_part, status, times, methods])
            self.hits.setdefault(path_part, 0)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _fault(self, method: str, path: str) -> int | str | None:
        with self._lock:
            for rule in self.rules:
                part, status, remaining, methods = rule
                if part in path and method in methods and (remaining is None or remaining > 0):
                    if remaining is not None:
                        rule[2] = remaining - 1
                    self.hits[part] += 1
                    return status
        return None

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
