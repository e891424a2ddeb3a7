"""Real servers for tests: each module starts one kind on a free loopback port.

A missing part (binary not installed) skips the test with the reason, except
when ``BACKUPAGENT_REQUIRE_ALL=1`` (set by CI): then it fails, so a green CI
run can never hide a test that did not run.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import Callable

import pytest


def require_all() -> bool:
    return os.environ.get("BACKUPAGENT_REQUIRE_ALL") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under BACKUPAGENT_REQUIRE_ALL=1, fail) when a part is missing."""
    if condition:
        return
    if require_all():
        pytest.fail(f"required test dependency missing: {reason}", pytrace=False)
    pytest.skip(f"requirement missing: {reason}")


def os_user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def require_binary(name: str, hint: str) -> str:
    """Path of an executable on PATH, or skip/fail naming how to install it."""
    path = shutil.which(name)
    require(path is not None, f"`{name}` not found on PATH ({hint})")
    assert path is not None
    return path


def free_port(avoid_twin: int = 0) -> int:
    """A free TCP port on 127.0.0.1.

    ``avoid_twin``: also require ``port + avoid_twin`` to be free and the
    twin to stay below 65536 (SeaweedFS listens for gRPC on port + 10000).
    """
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not avoid_twin:
            return port
        twin = port + avoid_twin
        if twin >= 65536:
            continue
        with socket.socket() as t:
            try:
                t.bind(("127.0.0.1", twin))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the server is not up yet: keep polling
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
