"""The email channel: a plain-text message over SMTP.

STARTTLS (certificate and host name verified against the system trust store)
and AUTH are used when configured; port 465 means implicit TLS. A password is
never sent over an unencrypted connection to another host: with
``starttls: false`` it is only used towards a loopback relay. If the server
does not offer STARTTLS when it was asked for, the send fails rather than
falling back to plaintext.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Optional

from backupagent.alerts.event import AlertEvent, AlertSendError
from backupagent.config.model import AlertChannel, SmtpSettings

IMPLICIT_TLS_PORT = 465


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())  # no CR/LF: a header must not be able to add headers
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sender_address(smtp: SmtpSettings, hostname: str) -> str:
    if smtp.from_addr:
        return smtp.from_addr
    host = hostname if "." in hostname else f"{hostname}.localdomain"
    return f"backupagent@{host}"


def build_message(channel: AlertChannel, ev: AlertEvent) -> EmailMessage:
    assert channel.smtp is not None
    msg = EmailMessage()
    msg["From"] = sender_address(channel.smtp, ev.hostname)
    msg["To"] = ", ".join(channel.to)
    msg["Subject"] = _one_line(f"[backupagent] {ev.severity.upper()}: {ev.title}", 200)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=msg["From"].split("@", 1)[1])
    msg["X-Backupagent-Event"] = ev.event
    msg["X-Backupagent-Severity"] = ev.severity
    lines = [ev.title, "", ev.description or "(no description)", ""]
    lines.append(f"Event:     {ev.label} ({ev.event})")
    lines.append(f"Severity:  {ev.severity}")
    lines.append(f"Host:      {ev.hostname}")
    if ev.database:
        lines.append(f"Database:  {ev.database}")
    if ev.job_id:
        lines.append(f"Job:       {ev.job_id}")
    for key, value in ev.details.items():
        lines.append(f"{key + ':':<10} {_one_line(str(value), 500)}")
    lines.append(f"Time:      {ev.timestamp}")
    lines += ["", "-- ", "Sent by backupagent."]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send_email(
    channel: AlertChannel,
    ev: AlertEvent,
    *,
    timeout: float,
    ssl_context: Optional[ssl.SSLContext] = None,
) -> None:
    smtp = channel.smtp
    what = f"email {channel.id!r}"
    if smtp is None or not channel.to:
        raise AlertSendError(
            f"alert channel {channel.id!r} (email) needs `to` and `smtp.host`", transient=False
        )
    where = f"{smtp.host}:{smtp.port}"
    implicit_tls = smtp.port == IMPLICIT_TLS_PORT
    if smtp.username and not (smtp.starttls or implicit_tls or _is_loopback(smtp.host)):
        raise AlertSendError(
            f"{what}: refusing to send the SMTP password unencrypted to {where}; "
            "set smtp.starttls: true (or use port 465)",
            transient=False,
        )
    message = build_message(channel, ev)
    context = ssl_context or ssl.create_default_context()
    try:
        if implicit_tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            client.ehlo()
            if smtp.starttls and not implicit_tls:
                if not client.has_extn("starttls"):
                    raise AlertSendError(
                        f"{what}: {where} does not offer STARTTLS; refusing to send in "
                        "plaintext (set smtp.starttls: false only for a local relay)",
                        transient=False,
                    )
                client.starttls(context=context)
                client.ehlo()
            if smtp.username:
                client.login(smtp.username, smtp.password or "")
            client.send_message(message)
    except AlertSendError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise AlertSendError(
            f"{what}: {where} rejected the login of user {smtp.username!r} "
            f"(SMTP {exc.smtp_code}); check smtp.username and smtp.password",
            transient=False,
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise AlertSendError(
            f"{what}: {where} refused every recipient ({', '.join(exc.recipients)})",
            transient=False,
        ) from None
    except smtplib.SMTPResponseException as exc:
        # 4xx: try later (greylisting, busy); 5xx: this message will never go.
        raise AlertSendError(
            f"{what}: {where} answered {exc.smtp_code} {_one_line(_text(exc.smtp_error), 200)}",
            transient=400 <= exc.smtp_code < 500,
        ) from None
    except ssl.SSLError as exc:
        raise AlertSendError(
            f"{what}: TLS with {where} failed ({_one_line(str(exc), 200)}); the server's "
            "certificate must be valid for the host name and trusted by this system",
            transient=False,
        ) from None
    except (smtplib.SMTPException, socket.timeout, OSError) as exc:
        raise AlertSendError(
            f"{what}: could not send via {where}: {_one_line(str(exc) or type(exc).__name__, 200)}",
            transient=True,
        ) from None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
