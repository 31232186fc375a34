"""An HTTP proxy in front of the S3 test server that counts requests and injects faults.

Faults are drawn with a seeded random generator per request: a 500, a 503 SlowDown, a connection reset
without an answer, or a slow answer. ``deny_puts_after`` answers 403 AccessDenied to every PUT once that
many PUTs went through (a permanent failure); ``ignore_conditional_writes`` drops ``If-None-Match`` from
requests, so the server behaves as one that ignores it. Only loopback addresses are involved.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error.</Message></Error>")
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")


@dataclasses.dataclass
class FaultPolicy:
    fail_rate: float = 0.0  # share of requests that get a fault
    kinds: tuple[str, ...] = ("500", "503", "reset", "slow")
    slow_seconds: float = 0.3
    deny_puts_after: int | None = None
    seed: int = 0
    ignore_conditional_writes: bool = False  # drop If-None-Match, as older S3-compatible servers ignore it


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.policy = FaultPolicy()
        self.counts: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.put_paths: list[str] = []
        self.get_paths: list[str] = []
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._decide(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault in ("500", "503", "403"):
                    status, payload = {"500": (500, INTERNAL), "503": (503, SLOW_DOWN), "403": (403, DENIED)}[fault]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "slow":
                    time.sleep(proxy.policy.slow_seconds)
                sent = dict(self.headers)
                if proxy.policy.ignore_conditional_writes:
                    sent = {k: v for k, v in sent.items() if k.lower() != "if-none-match"}
                status, headers, data = proxy._forward(self.command, self.path, sent, body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set_policy(self, policy: FaultPolicy) -> None:
        with self._lock:
            self.policy = policy
            self._rng = random.Random(policy.seed)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.faults.clear()
            self.put_paths.clear()
            self.get_paths.clear()

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            p = self.policy
            if method == "PUT" and p.deny_puts_after is not None and self.counts["PUT"] >= p.deny_puts_after:
                self.faults["403"] += 1
                return "403"
            if p.fail_rate and self._rng.random() < p.fail_rate:
                kind = self._rng.choice(p.kinds)
                self.faults[kind] += 1
                return kind
            self.counts[method] += 1
            if method == "PUT":
                self.put_paths.append(path)
            if method == "GET":
                self.get_paths.append(path)
            return None

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
