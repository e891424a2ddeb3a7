"""A minimal sd_notify client: tells systemd we are ready, alive, or stopping.

The unit runs with ``Type=notify`` and ``WatchdogSec=``: systemd considers the
service started only when READY=1 arrives, and restarts it when WATCHDOG=1 pings
stop. The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace),
so we speak it directly instead of depending on libsystemd or a PyPI package.

Every function is a no-op returning False when the agent is not run by systemd
(no ``$NOTIFY_SOCKET``), and never raises: losing a notification must not take
the daemon down; systemd's own timeouts handle a notifier that goes quiet.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)

SEND_TIMEOUT = 2.0  # a datagram to a full queue blocks; never hang the daemon on it


def _address() -> Optional[str]:
    """The socket address to send to, in the form ``socket.sendto`` takes."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of "@".
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    if raw:
        log.debug("NOTIFY_SOCKET=%r is not an AF_UNIX address; not notifying systemd", raw)
    return None


def enabled() -> bool:
    """True when systemd (or anything speaking its protocol) is listening."""
    return _address() is not None


def notify(message: str) -> bool:
    """Send one raw notification (``KEY=value`` lines). True when it was sent."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message.encode("utf-8", "replace"), address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment: STATUS= must stay one line.
    return " ".join(text.split())


def ready(status_text: Optional[str] = None) -> bool:
    """Start-up finished: systemd moves the unit from "activating" to "active"."""
    message = "READY=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def watchdog() -> bool:
    """Keep-alive ping; call it at least every :func:`watchdog_interval` seconds."""
    if watchdog_interval() is None:
        return False
    return notify("WATCHDOG=1")


def stopping(status_text: Optional[str] = None) -> bool:
    """Graceful shutdown started: no watchdog pings are expected any more."""
    message = "STOPPING=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def status(text: str) -> bool:
    """Free-form one-line status shown by ``systemctl status backupagent``."""
    return notify("STATUS=" + _one_line(text))


def watchdog_interval() -> Optional[float]:
    """Seconds between pings (half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled
    advises), or None when systemd expects no pings from this process."""
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw or not enabled():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        # The variables were inherited from a parent that systemd watches, not us.
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
