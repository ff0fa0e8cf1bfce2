"""An HTTP proxy in front of moto's S3 server whose conditional PUTs race as S3's do.

moto checks ``If-None-Match: *``, then writes: two racing creates of one key can both succeed. S3 runs
one conditional write per key at a time and answers a concurrent one ``409 ConditionalRequestConflict``
(the caller retries; the retry finds the winner's object, 412). The proxy does the same, and holds each
conditional PUT of a key not yet created ``hold`` seconds (a slow upload), so writers started together
overlap; one of a key that exists is refused at once. It counts the 409s it answered; every other
request goes to moto unchanged.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CONFLICT = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code><Message>'
            b"A conflicting operation occurred. If using PutObject you can retry the request.</Message>"
            b"<RequestId>proxy</RequestId></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class ConditionalS3Proxy:
    def __init__(self, upstream: str, hold: float):
        self.upstream = urlsplit(upstream).netloc
        self.hold = hold
        self.conflicts: Counter[str] = Counter()  # 409s answered, by key
        self._in_flight: set[str] = set()
        self._created: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ConditionalS3Proxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _begin(self, key: str) -> bool:
        """Whether a conditional write of ``key`` may run now (none other is in flight)."""
        with self._lock:
            if key in self._in_flight and key not in self._created:
                self.conflicts[key] += 1
                return False
            self._in_flight.add(key)
            return True

    def _end(self, key: str, created: bool) -> None:
        with self._lock:
            self._in_flight.discard(key)
            if created:
                self._created.add(key)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # no request log in the test output
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP or (self.command == "HEAD" and name.lower() == "content-length"):
                        self.send_header(name, value)  # a HEAD's length is the object's
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                body = self._body()
                key = urlsplit(self.path).path
                conditional = self.command == "PUT" and self.headers.get("If-None-Match") == "*"
                if conditional and not proxy._begin(key):
                    self._reply(409, [("Content-Type", "application/xml")], CONFLICT)
                    return
                answer = None
                try:
                    if conditional and key not in proxy._created:
                        time.sleep(proxy.hold)
                    upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    upstream.close()
                finally:
                    if conditional:
                        proxy._end(key, created=answer is not None and answer.status == 200)
                self._reply(answer.status, answer.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
