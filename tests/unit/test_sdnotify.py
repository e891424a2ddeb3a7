"""sd_notify client against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from backupagent.daemon import sdnotify


class Receiver:
    """Plays systemd's side: a bound datagram socket; messages are read back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> List[str]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Receiver(sock)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Iterator[Receiver]:
    name = f"backupagent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Receiver(sock)


def test_ready_reaches_a_path_socket(path_socket: Receiver) -> None:
    assert sdnotify.enabled()
    assert sdnotify.ready() is True
    assert path_socket.recv() == "READY=1"


def test_ready_with_status(path_socket: Receiver) -> None:
    assert sdnotify.ready("agent running\nstandalone")
    assert path_socket.recv() == "READY=1\nSTATUS=agent running standalone"


def test_abstract_namespace_socket(abstract_socket: Receiver) -> None:
    assert sdnotify.status("heartbeat ok")
    assert abstract_socket.recv() == "STATUS=heartbeat ok"


def test_status_newlines_cannot_inject_assignments(path_socket: Receiver) -> None:
    sdnotify.status("failing\nREADY=1\r\nMAINPID=1")
    message = path_socket.recv()
    assert "\n" not in message
    assert message == "STATUS=failing READY=1 MAINPID=1"


def test_stopping(path_socket: Receiver) -> None:
    assert sdnotify.stopping("waiting for 1 job")
    assert path_socket.recv() == "STOPPING=1\nSTATUS=waiting for 1 job"


def test_watchdog_pings_when_systemd_expects_them(
    path_socket: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "600000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 300.0
    assert sdnotify.watchdog() is True
    assert path_socket.recv() == "WATCHDOG=1"


def test_watchdog_without_pid_is_ours(
    path_socket: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert sdnotify.watchdog_interval() == 1.5


@pytest.mark.parametrize(
    ("usec", "pid"),
    [
        (None, None),  # WatchdogSec= not set
        ("0", None),
        ("-5", None),
        ("ten minutes", None),
        ("600000000", "1"),  # inherited from a watched parent, not meant for us
    ],
)
def test_watchdog_off(
    path_socket: Receiver, monkeypatch: pytest.MonkeyPatch, usec: Optional[str], pid: Optional[str]
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval() is None
    assert sdnotify.watchdog() is False
    assert path_socket.pending() == []


def test_noop_outside_systemd(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "600000000")  # without a socket it means nothing
    assert not sdnotify.enabled()
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_unsupported_addresses_are_noops(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not sdnotify.enabled()
    assert sdnotify.ready() is False


def test_missing_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.enabled()
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_full_queue_does_not_hang(path_socket: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody reads the socket: sends time out (or fail) instead of blocking forever."""
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT", 0.05)
    assert sdnotify.status("first") is True
    sent = 0
    while sdnotify.status("x" * 4000):
        sent += 1
        assert sent < 100_000, "the socket never filled up"
    assert sent > 0
