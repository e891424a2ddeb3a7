"""Alert channels against real local receivers: an HTTP server and aiosmtpd.

Covers delivery and payload shape for webhook, Slack and email (plain, AUTH,
STARTTLS with a self-signed certificate the test trusts and one it does not),
retry after a 500, no retry after a 4xx, and that an unreachable or hanging
receiver neither raises nor delays the caller, and leaks no URL token to logs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from backupagent.alerts import AlertDispatcher
from backupagent.api.models import AnomalyReport
from backupagent.config.model import AlertChannel, SmtpSettings
from tests.servers import free_port, require

pytestmark = pytest.mark.integration

TOKEN_PATH = "/services/T0000SECRET/B0000SECRET/XyZsecretTokenValue"


# -- an HTTP receiver --------------------------------------------------------------


class Receiver:
    """Records every POST; answers from ``script`` (a list of statuses), then 200."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, Dict[str, str], bytes]] = []
        self.script: List[int] = []
        self.hang = threading.Event()  # set: accept and never answer
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    status = receiver.script.pop(0) if receiver.script else 200
                if receiver.hang.is_set():
                    receiver.release.wait(10)
                    return
                payload = b"ok" if status == 200 else b"error for " + self.path.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = TOKEN_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


def dispatcher(channels: List[AlertChannel], **kw: Any) -> AlertDispatcher:
    kw.setdefault("backoff", 0.05)
    kw.setdefault("timeout", 2.0)
    return AlertDispatcher(channels, "db-host-1.example.com", **kw)


@pytest.fixture
def closing() -> Iterator[List[AlertDispatcher]]:
    made: List[AlertDispatcher] = []
    yield made
    for d in made:
        d.close(timeout=5)


# -- webhook and Slack ------------------------------------------------------------------


def test_webhook_posts_event_document(receiver: Receiver, closing: list) -> None:
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())])
    closing.append(d)
    n = d.notify(
        "job_failed",
        "Backup of shop failed",
        "pg_dump exited 1: connection refused",
        "critical",
        database="shop",
        job_id="job-123",
        errorCode="CONNECTION_FAILED",
    )
    assert n == 1
    assert d.flush(10)
    ((path, headers, body),) = receiver.requests
    assert path == TOKEN_PATH
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("backupagent/")
    doc = json.loads(body)
    assert doc["event"] == "job_failed"
    assert doc["title"] == "Backup of shop failed"
    assert doc["description"] == "pg_dump exited 1: connection refused"
    assert doc["severity"] == "critical"
    assert doc["database"] == "shop"
    assert doc["jobId"] == "job-123"
    assert doc["agent"]["hostname"] == "db-host-1.example.com"
    assert doc["details"] == {"errorCode": "CONNECTION_FAILED"}
    ts = dt.datetime.strptime(doc["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((dt.datetime.utcnow() - ts).total_seconds()) < 60
    assert d.stats == {"sent": 1, "failed": 0, "dropped": 0}


def test_only_subscribed_channels_get_the_event(receiver: Receiver, closing: list) -> None:
    d = dispatcher(
        [
            AlertChannel("failures", "webhook", events=("job_failed",), url=receiver.url("/f")),
            AlertChannel("all", "webhook", url=receiver.url("/all")),
        ]
    )
    closing.append(d)
    report = AnomalyReport("size_anomaly", "warning", "Backup size 60% smaller", "Expected ~1 GB")
    assert d.notify_anomaly(report, database="shop") == 1
    assert d.notify("verification_failed", "t", "d", "critical") == 1
    assert d.notify("not_an_event", "t", "d", "info") == 0
    assert d.flush(10)
    paths = sorted(p for p, _, _ in receiver.requests)
    assert paths == ["/all", "/all"]
    docs = [json.loads(b) for _, _, b in receiver.requests]
    anomaly = next(x for x in docs if x["event"] == "anomaly")
    assert anomaly["details"] == {"anomalyType": "size_anomaly"}
    assert anomaly["severity"] == "warning"


def test_500_then_200_is_retried_and_delivered_once(receiver: Receiver, closing: list) -> None:
    receiver.script = [500, 503]
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())], attempts=3)
    closing.append(d)
    d.notify("job_failed", "t", "d", "critical")
    assert d.flush(10)
    assert len(receiver.requests) == 3
    assert d.stats["sent"] == 1


def test_retries_are_bounded(receiver: Receiver, closing: list, caplog) -> None:
    receiver.script = [500] * 10
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())], attempts=3)
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "t", "d", "critical")
        assert d.flush(10)
    assert len(receiver.requests) == 3
    assert d.stats == {"sent": 0, "failed": 1, "dropped": 0}
    assert "failed after 3 attempts" in caplog.text
    assert "HTTP 500" in caplog.text
    assert "SECRET" not in caplog.text  # the path (with its token) is scrubbed, body too


def test_client_error_is_not_retried(receiver: Receiver, closing: list) -> None:
    receiver.script = [404]
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())], attempts=3)
    closing.append(d)
    d.notify("job_failed", "t", "d", "critical")
    assert d.flush(10)
    assert len(receiver.requests) == 1
    assert d.stats["failed"] == 1


def test_slack_incoming_webhook_payload(receiver: Receiver, closing: list) -> None:
    d = dispatcher([AlertChannel("chat", "slack", webhook_url=receiver.url())])
    closing.append(d)
    d.notify(
        "anomaly",
        "Table orders dropped from 10,000 to 0 rows",
        "Expected ~10,000 rows, got 0 <see> & check",
        "critical",
        database="shop",
        job_id="job-9",
    )
    assert d.flush(10)
    ((_, headers, body),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"text", "blocks"}
    assert "Table orders dropped from 10,000 to 0 rows" in doc["text"]
    assert "[critical]" in doc["text"]
    kinds = [b["type"] for b in doc["blocks"]]
    assert kinds[0] == "header" and "context" in kinds
    assert doc["blocks"][0]["text"] == {
        "type": "plain_text",
        "text": "Table orders dropped from 10,000 to 0 rows",
    }
    section = doc["blocks"][1]["text"]
    assert section["type"] == "mrkdwn"
    assert section["text"] == "Expected ~10,000 rows, got 0 &lt;see&gt; &amp; check"
    fields = " ".join(f["text"] for f in doc["blocks"][2]["fields"])
    for expected in ("shop", "job-9", "db-host-1.example.com", "critical"):
        assert expected in fields


def test_unreachable_receiver_never_raises_nor_leaks(closing: list, caplog) -> None:
    dead = f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"
    d = dispatcher(
        [
            AlertChannel("hook", "webhook", url=dead),
            AlertChannel("chat", "slack", webhook_url=dead),
            AlertChannel("bad", "webhook", url="http://[::1"),  # unparseable
        ],
        attempts=2,
    )
    closing.append(d)
    with caplog.at_level(logging.INFO, logger="backupagent.alerts"):
        start = time.monotonic()
        assert d.notify("job_failed", "t", "d", "critical") == 3
        assert time.monotonic() - start < 0.5
        assert d.flush(20)
    assert d.stats == {"sent": 0, "failed": 3, "dropped": 0}
    assert "could not reach http://127.0.0.1" in caplog.text
    assert "SECRET" not in caplog.text
    assert "XyZ" not in caplog.text


def test_hanging_receiver_does_not_delay_notify(receiver: Receiver, closing: list) -> None:
    receiver.hang.set()
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())], attempts=1, timeout=0.5)
    closing.append(d)
    start = time.monotonic()
    d.notify("job_failed", "t", "d", "critical")
    assert time.monotonic() - start < 0.2
    assert d.flush(10)  # the read timeout ends it
    assert d.stats["failed"] == 1


def test_full_queue_drops_and_counts(receiver: Receiver, closing: list) -> None:
    receiver.hang.set()
    d = dispatcher(
        [AlertChannel("hook", "webhook", url=receiver.url())],
        attempts=1,
        timeout=2.0,
        workers=1,
        max_pending=2,
    )
    closing.append(d)
    queued = sum(d.notify("job_failed", f"t{i}", "d", "critical") for i in range(10))
    assert 2 <= queued <= 3  # one in the worker's hands, two waiting
    assert d.stats["dropped"] == 10 - queued
    receiver.release.set()
    assert d.flush(20)


def test_closed_dispatcher_delivers_queue_then_refuses(receiver: Receiver) -> None:
    d = dispatcher([AlertChannel("hook", "webhook", url=receiver.url())])
    d.notify("job_failed", "t", "d", "critical")
    assert d.close(10)
    assert len(receiver.requests) == 1
    assert d.notify("job_failed", "t", "d", "critical") == 0


# -- email --------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: List[Tuple[str, List[str], bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = session.ssl is not None
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls))
        return "250 Message accepted"


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password, self.attempts = user.encode(), password.encode(), 0

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        self.attempts += 1
        ok = auth_data.login == self.user and auth_data.password == self.password
        return AuthResult(success=ok, handled=False)


def self_signed(tmp: Path) -> Tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backupagent test smtp")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Smtp:
    def __init__(self, **params: Any) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:  # pragma: no cover - depends on the machine
            require(False, "PyPI aiosmtpd (pip install aiosmtpd)")
            raise
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **params)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp_servers() -> Iterator[list]:
    started: List[Smtp] = []
    yield started
    for s in started:
        s.stop()


def email_channel(port: int, **smtp: Any) -> AlertChannel:
    return AlertChannel(
        "mail",
        "email",
        to=("ops@example.com", "dba@example.com"),
        smtp=SmtpSettings(host="127.0.0.1", port=port, **smtp),
    )


def only_message(server: Smtp) -> Tuple[str, List[str], Any, bool]:
    ((sender, rcpts, raw, tls),) = server.inbox.messages
    return sender, rcpts, message_from_bytes(raw), tls


def test_email_plain_to_local_relay(smtp_servers: list, closing: list) -> None:
    server = Smtp()
    smtp_servers.append(server)
    d = dispatcher([email_channel(server.port, starttls=False, from_addr="agent@example.com")])
    closing.append(d)
    d.notify(
        "verification_failed",
        "Verification of shop failed",
        "row_count public.orders: expected 10, got 9",
        "critical",
        database="shop",
        job_id="job-7",
    )
    assert d.flush(15)
    sender, rcpts, msg, tls = only_message(server)
    assert sender == "agent@example.com"
    assert rcpts == ["ops@example.com", "dba@example.com"]
    assert not tls
    assert msg["From"] == "agent@example.com"
    assert msg["To"] == "ops@example.com, dba@example.com"
    assert msg["Subject"] == "[backupagent] CRITICAL: Verification of shop failed"
    assert msg["X-Backupagent-Event"] == "verification_failed"
    body = msg.get_payload(decode=True).decode()
    assert "row_count public.orders: expected 10, got 9" in body
    assert "Database:  shop" in body
    assert "Job:       job-7" in body
    assert "Host:      db-host-1.example.com" in body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_auth_without_tls_on_loopback(smtp_servers: list, closing: list) -> None:
    auth = Authenticator("alerts", "s3cret-pass")
    server = Smtp(authenticator=auth, auth_required=True, auth_require_tls=False)
    smtp_servers.append(server)
    good = email_channel(server.port, starttls=False, username="alerts", password="s3cret-pass")
    d = dispatcher([good])
    closing.append(d)
    d.notify("job_failed", "Backup failed", "x", "critical")
    assert d.flush(15)
    assert len(server.inbox.messages) == 1
    assert only_message(server)[2]["From"] == "backupagent@db-host-1.example.com"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_wrong_password_fails_once_without_leaking(
    smtp_servers: list, closing: list, caplog
) -> None:
    auth = Authenticator("alerts", "s3cret-pass")
    server = Smtp(authenticator=auth, auth_required=True, auth_require_tls=False)
    smtp_servers.append(server)
    bad = email_channel(server.port, starttls=False, username="alerts", password="WRONG-pass-123")
    d = dispatcher([bad], attempts=3)
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "Backup failed", "x", "critical")
        assert d.flush(15)
    assert server.inbox.messages == []
    # smtplib tries each offered mechanism (PLAIN, LOGIN) once; the send is not retried
    assert auth.attempts == 2
    assert "failed after 1 attempt:" in caplog.text
    assert "rejected the login of user 'alerts'" in caplog.text
    assert "WRONG-pass-123" not in caplog.text


def test_email_starttls_and_auth_with_trusted_certificate(
    tmp_path: Path, smtp_servers: list, closing: list, monkeypatch
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    auth = Authenticator("alerts", "s3cret-pass")
    server = Smtp(tls_context=tls, require_starttls=True, authenticator=auth, auth_required=True)
    smtp_servers.append(server)
    # The agent verifies against the system trust store; point it at our CA only.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    channel = email_channel(server.port, starttls=True, username="alerts", password="s3cret-pass")
    d = dispatcher([channel])
    closing.append(d)
    d.notify("anomaly", "Backup size 60% smaller than average", "Expected ~2.4 GB", "warning")
    assert d.flush(15)
    _, _, msg, was_tls = only_message(server)
    assert was_tls
    assert auth.attempts == 1
    assert msg["Subject"] == "[backupagent] WARNING: Backup size 60% smaller than average"


def test_email_starttls_with_untrusted_certificate_is_refused(
    tmp_path: Path, smtp_servers: list, closing: list, monkeypatch, caplog
) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed(tmp_path / "other")  # a CA that did not sign the server's cert
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    server = Smtp(tls_context=tls, require_starttls=True)
    smtp_servers.append(server)
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    d = dispatcher([email_channel(server.port, starttls=True)], attempts=3)
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "t", "d", "critical")
        assert d.flush(15)
    assert server.inbox.messages == []
    assert "TLS with 127.0.0.1" in caplog.text
    assert "failed after 1 attempt" in caplog.text  # a certificate problem is not transient


def test_email_missing_starttls_is_not_downgraded(
    smtp_servers: list, closing: list, caplog
) -> None:
    server = Smtp()  # no tls_context: STARTTLS not offered
    smtp_servers.append(server)
    d = dispatcher([email_channel(server.port, starttls=True, username="u", password="p4ss")])
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "t", "d", "critical")
        assert d.flush(15)
    assert server.inbox.messages == []
    assert "does not offer STARTTLS" in caplog.text


def test_email_password_never_sent_in_plaintext_to_remote_host(closing: list, caplog) -> None:
    channel = AlertChannel(
        "mail",
        "email",
        to=("ops@example.com",),
        smtp=SmtpSettings(
            host="smtp.example.com", port=25, username="u", password="p4ss", starttls=False
        ),
    )
    d = dispatcher([channel])
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "t", "d", "critical")
        assert d.flush(5)
    assert "refusing to send the SMTP password unencrypted" in caplog.text


def test_email_unreachable_server_is_retried_then_given_up(closing: list, caplog) -> None:
    d = dispatcher([email_channel(free_port(), starttls=False)], attempts=2)
    closing.append(d)
    with caplog.at_level(logging.WARNING, logger="backupagent.alerts"):
        d.notify("job_failed", "t", "d", "critical")
        assert d.flush(15)
    assert "attempt 1/2 failed, retrying" in caplog.text
    assert "failed after 2 attempts" in caplog.text


def test_one_dead_channel_does_not_stop_the_others(
    receiver: Receiver, smtp_servers: list, closing: list
) -> None:
    server = Smtp()
    smtp_servers.append(server)
    d = dispatcher(
        [
            AlertChannel("dead", "webhook", url=f"http://127.0.0.1:{free_port()}/x"),
            AlertChannel("hook", "webhook", url=receiver.url()),
            email_channel(server.port, starttls=False),
        ]
    )
    closing.append(d)
    d.notify("job_failed", "t", "d", "critical")
    assert d.flush(20)
    assert len(receiver.requests) == 1
    assert len(server.inbox.messages) == 1
    assert d.stats == {"sent": 2, "failed": 1, "dropped": 0}
