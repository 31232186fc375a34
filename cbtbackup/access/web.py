"""``cbtbackup web``: a read-only status page of a repository, with a JSON API behind it and Prometheus metrics.

Routes (GET only; anything else is 405 — the page never writes):
  /                    every chain: source, host, newest backup's age (flagged stale), size, changed, stored, dedup
  /chain/NAME          one chain's backups, and a plot of stored and changed bytes per backup
  /api/chains          the first page as JSON;  /api/chains/NAME  the second, with every backup
  /metrics             ``stats --prometheus``
What it reads is read again at most every ``refresh`` seconds, however many people look. It binds to loopback
by default; on any other address it needs a token (``Authorization: Bearer``, or ``?token=`` once, which sets
a cookie), and it says so when it starts.
"""

from __future__ import annotations

import dataclasses
import hmac
import html
import http.server
import ipaddress
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from cbtbackup.access.prometheus import stats_exposition
from cbtbackup.access.status_plot import plot_svg
from cbtbackup.access.status_view import ChainRow, StatusView, read_status
from cbtbackup.errors import CbtError, UsageError
from cbtbackup.model.durations import format_duration, format_when
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.stats import run_stats
from cbtbackup.repo.repository import Repository

COOKIE = "cbtbackup_token"
STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}
tr.stale td{background:#fde8e8}.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 .4em;
font-size:.8em}.ok{color:#2e7d32}small{color:#666}"""


@dataclasses.dataclass(frozen=True)
class WebOptions:
    listen: str = "127.0.0.1:8080"
    stale_after: float = 26 * 3600.0
    token: str | None = None
    refresh: float = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise UsageError(f"--listen {text!r}: say HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


class _Views:
    """The repository read at most every ``refresh`` seconds; readers share one read."""

    def __init__(self, repo: Repository, options: WebOptions) -> None:
        self.repo, self.options = repo, options
        self._lock = threading.Lock()
        self._view: StatusView | None = None
        self._metrics: tuple[float, bytes] | None = None

    def view(self) -> StatusView:
        with self._lock:
            if self._view is None or time.time() - self._view.taken >= self.options.refresh:
                self._view = read_status(self.repo, self.options.stale_after)
            return self._view

    def metrics(self) -> bytes:
        with self._lock:
            if self._metrics is None or time.time() - self._metrics[0] >= self.options.refresh:
                self._metrics = (time.time(), stats_exposition(run_stats(self.repo)))
            return self._metrics[1]


def _page(title: str, body: str, refresh: float) -> bytes:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta http-equiv="refresh" content="{max(int(refresh), 10)}"><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>").encode()


def _chain_link(name: str) -> str:
    return f'<a href="/chain/{urllib.parse.quote(name, safe="")}">{html.escape(name)}</a>'


def index_html(view: StatusView, location: str) -> str:
    stale = [c for c in view.chains if c.stale]
    rows = []
    for c in view.chains:
        newest = c.newest
        flag = ' <span class="badge">stale</span>' if c.stale else ""
        rows.append(
            f'<tr class="chain{" stale" if c.stale else ""}" data-chain="{html.escape(c.name)}">'
            f"<td>{_chain_link(c.name)}</td><td>{html.escape(c.host)}</td><td>{html.escape(c.source)}</td>"
            f'<td class="n">{len(c.backups)}</td>'
            f'<td class="age">{age_text(c.age(view.taken))}{flag}</td>'
            f'<td class="n">{format_size(newest.device_size) if newest else "-"}</td>'
            f'<td class="n">{format_size(newest.bytes_changed) if newest else "-"}</td>'
            f'<td class="n">{format_size(c.stored_bytes)}</td><td class="n">{c.dedup_ratio}x</td></tr>')
    summary = (f'<span class="badge">{len(stale)} stale</span>' if stale else '<span class="ok">none stale</span>')
    threshold = format_duration(round(view.stale_after))
    return (f"<h1>cbtbackup: {html.escape(location)}</h1>"
            f"<p>{len(view.chains)} chains, {summary} (stale: no backup in {threshold}); "
            f"<small>read {format_when(view.taken)}</small></p>"
            "<table><thead><tr><th>Chain</th><th>Host</th><th>Source</th><th>Backups</th><th>Last backup</th>"
            "<th>Size</th><th>Changed</th><th>Stored</th><th>Dedup</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            '<p><small><a href="/api/chains">JSON</a> · <a href="/metrics">metrics</a></small></p>')


def chain_html(view: StatusView, chain: ChainRow) -> str:
    rows = "".join(
        f'<tr class="backup"><td><code>{b.id}</code></td><td>{b.kind}</td><td>{b.method}</td>'
        f"<td>{format_when(b.created)}</td><td class='n'>{format_size(b.device_size)}</td>"
        f"<td class='n'>{format_size(b.bytes_read)}</td><td class='n'>{format_size(b.bytes_changed)}</td>"
        f"<td class='n'>{format_size(b.bytes_stored)}</td><td class='n'>{b.duration_s:.1f} s</td></tr>"
        for b in reversed(chain.backups))
    flag = ' <span class="badge">stale</span>' if chain.stale else ""
    unreadable = f"<p>{chain.unreadable} backup(s) whose manifest cannot be read.</p>" if chain.unreadable else ""
    return (f'<p><a href="/">all chains</a></p><h1>{html.escape(chain.name)}{flag}</h1>'
            f"<p>{html.escape(chain.host)}:{html.escape(chain.source)} · {len(chain.backups)} backups · last "
            f"{age_text(chain.age(view.taken))} · stored {format_size(chain.stored_bytes)} · dedup "
            f"{chain.dedup_ratio}x</p>{unreadable}<figure>{plot_svg(chain.backups)}"
            "<figcaption>stored and changed bytes per backup</figcaption></figure>"
            "<table><thead><tr><th>Backup</th><th>Kind</th><th>Method</th><th>Time</th><th>Size</th><th>Read</th>"
            f"<th>Changed</th><th>Stored</th><th>Took</th></tr></thead><tbody>{rows}</tbody></table>")


def make_handler(views: _Views, options: WebOptions, location: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "cbtbackup-web"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: a page view is not news
            pass

        def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            self._send(status, json.dumps(doc, sort_keys=True).encode(), "application/json")

        def _authorised(self, url: urllib.parse.SplitResult) -> bool:
            if options.token is None:
                return True
            wanted = options.token.encode()
            offered = []
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                offered.append(auth[7:].strip())
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    offered.append(value)
            query = urllib.parse.parse_qs(url.query).get("token", [])
            if any(hmac.compare_digest(o.encode(), wanted) for o in query):
                self._send(303, b"", "text/plain", {
                    "Location": url.path or "/",
                    "Set-Cookie": f"{COOKIE}={options.token}; HttpOnly; SameSite=Strict; Path=/"})
                return False
            if any(hmac.compare_digest(o.encode(), wanted) for o in offered):
                return True
            self._send(401, b"a token is needed: Authorization: Bearer TOKEN, or ?token=TOKEN once\n",
                       "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if not self._authorised(url):
                return
            path = urllib.parse.unquote(url.path)
            try:
                self._route(path)
            except CbtError as e:  # the repository could not be read just now: say so, keep serving
                self._send(503, f"cannot read the repository: {e}\n".encode(), "text/plain; charset=utf-8")

        def _route(self, path: str) -> None:
            if path in ("/", "/index.html"):
                view = views.view()
                self._send(200, _page(f"cbtbackup: {location}", index_html(view, location), options.refresh),
                           "text/html; charset=utf-8")
            elif path.startswith("/chain/"):
                view = views.view()
                chain = view.chain(path[len("/chain/"):])
                if chain is None:
                    self._send(404, _page("no such chain", '<p>No such chain. <a href="/">All chains</a></p>',
                                          options.refresh), "text/html; charset=utf-8")
                else:
                    self._send(200, _page(f"{chain.name}: cbtbackup", chain_html(view, chain), options.refresh),
                               "text/html; charset=utf-8")
            elif path == "/api/chains":
                self._json(200, {"repository": location, **views.view().to_json()})
            elif path.startswith("/api/chains/"):
                view = views.view()
                chain = view.chain(path[len("/api/chains/"):])
                if chain is None:
                    self._json(404, {"error": "no such chain"})
                else:
                    self._json(200, chain.to_json(view.taken, with_backups=True))
            elif path == "/metrics":
                self._send(200, views.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _refuse(self) -> None:
            self._send(405, b"read-only: GET only\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


class _ServerV6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def run_web(repo: Repository, options: WebOptions, ready: Callable[[str], None]) -> None:
    """Serve the page until Ctrl-C or SIGTERM."""
    host, port = parse_listen(options.listen)
    if not is_loopback(host) and not options.token:
        raise UsageError(f"--listen {options.listen} is not loopback: anyone who reaches it would see every chain; "
                         "give a token (--token-file FILE or CBTBACKUP_WEB_TOKEN)")
    views = _Views(repo, options)
    views.view()  # a repository that cannot be read fails here, in one line, not on the first visit
    server_class = _ServerV6 if ":" in host else http.server.ThreadingHTTPServer
    try:
        server = server_class((host, port), make_handler(views, options, repo.location))
    except OSError as e:
        raise UsageError(f"cannot listen on {options.listen}: {e.strerror or e}") from None
    server.daemon_threads = True
    actual = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    guard = "; a token is needed" if options.token else ""
    ready(f"serving the status page of {repo.location} on http://{shown}:{actual}/ (read-only{guard}); "
          "Ctrl-C or SIGTERM stops")
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
