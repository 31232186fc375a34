"""Real peers for job notifications: an HTTP server that records webhook posts, and an SMTP server (aiosmtpd)
that keeps what it is sent, optionally with STARTTLS and a login, both on loopback ports of their own."""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclasses.dataclass
class Post:
    path: str
    headers: dict[str, str]
    document: dict[str, Any]


class WebhookServer:
    """Answers each POST with the next status of ``statuses`` (200 once they run out)."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.statuses: list[int] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.posts.append(Post(self.path, dict(self.headers.items()), json.loads(body)))
                status = server.statuses.pop(0) if server.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


def free_port() -> int:
    """A loopback port nobody listens on (bound and closed: connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Mail:
    sender: str
    recipients: list[str]
    text: str
    authenticated: bool


class MailBox:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), content.decode("utf-8", "replace"),
                               bool(session.authenticated)))
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.endswith("@refused.example"):
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@dataclasses.dataclass
class SmtpServer:
    host: str
    port: int
    box: MailBox
    ca_file: Path | None = None


def _self_signed(where: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = where / "smtp.crt", where / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


StartSmtp = Callable[..., SmtpServer]


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[StartSmtp]:
    """Start a real SMTP server: plain, or with STARTTLS (a self-signed certificate for localhost, handed
    back as ``ca_file``) and a required login of ``user``/``password``."""
    controllers: list[Controller] = []

    def start(tls: bool = False, user: str | None = None, password: str | None = None) -> SmtpServer:
        box = MailBox()
        port = free_port()
        kwargs: dict[str, Any] = {}
        ca = None
        if tls:
            ca, key = _self_signed(tmp_path)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(ca, key)
            kwargs.update(tls_context=context, require_starttls=True)
        if user is not None:
            def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                             auth_data: Any) -> AuthResult:
                ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
                    and auth_data.password.decode() == password
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=tls)
        controller = Controller(box, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
        controller.start()
        controllers.append(controller)
        return SmtpServer("localhost" if tls else "127.0.0.1", port, box, ca)

    yield start
    for controller in controllers:
        controller.stop()
