"""Throwaway Redis servers per test session: one open, one with ``requirepass``.

Settings go in a 0600 config file rather than argv, so the ``requirepass``
secret never shows in ``ps``; ``cli()`` hands the password to redis-cli via
``REDISCLI_AUTH`` for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

from tests.servers import free_port, require_binary, wait_for


def _stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Ask nicely with ``sig``; if that hangs, kill the whole process group."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class RedisServer:
    host: str
    port: int
    password: Optional[str]
    base_dir: str
    version: str
    pid: int
    cli_path: str = "redis-cli"

    def __repr__(self) -> str:  # never show the password in a test report
        return (
            f"RedisServer(host={self.host!r}, port={self.port}, auth={self.password is not None})"
        )

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        return env

    def cli(self, *args: str, timeout: float = 30) -> str:
        """``redis-cli -h host -p port ARGS...``; stdout, raising on a failure or
        an ``(error)``/``ERR`` reply (redis-cli exits 0 on those)."""
        argv = [self.cli_path, "-h", self.host, "-p", str(self.port), *args]
        res = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        out = res.stdout
        if res.returncode != 0 or out.startswith(("ERR", "NOAUTH", "WRONGPASS", "(error)")):
            raise RuntimeError(f"redis-cli {args[:1]} failed ({res.returncode}): {out}{res.stderr}")
        return out


def _start_redis(request: pytest.FixtureRequest, password: Optional[str]) -> RedisServer:
    server_bin = require_binary("redis-server", "apt-get install redis-server")
    cli = require_binary("redis-cli", "apt-get install redis-tools")
    base = tempfile.mkdtemp(prefix="ba-redis-")
    port = free_port()
    proc_box: List[subprocess.Popen] = []

    def cleanup() -> None:
        for proc in proc_box:
            _stop_process(proc, signal.SIGTERM, timeout=20)
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    conf = os.path.join(base, "redis.conf")
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f'dir "{base}"',
        'save ""',
        "appendonly no",
        "daemonize no",
        "protected-mode yes",
        f'logfile "{base}/redis.log"',
    ]
    if password:
        lines.append(f'requirepass "{password}"')
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [server_bin, conf],
        cwd=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    proc_box.append(proc)
    ver = subprocess.run([server_bin, "--version"], capture_output=True, text=True, check=False)
    version = ""
    for tok in ver.stdout.split():
        if tok.startswith("v="):
            version = tok[2:]
    server = RedisServer(
        host="127.0.0.1",
        port=port,
        password=password,
        base_dir=base,
        version=version,
        pid=proc.pid,
        cli_path=cli,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited early (code {proc.returncode})")
        return server.cli("PING").strip() == "PONG"

    wait_for(ready, 30, f"Redis on port {port}", interval=0.1)
    return server


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """Redis on a free loopback port, no password."""
    return _start_redis(request, None)


@pytest.fixture(scope="session")
def redis_server_auth(request: pytest.FixtureRequest) -> RedisServer:
    """Redis on a free loopback port with ``requirepass`` (see ``.password``)."""
    return _start_redis(request, "redis-" + secrets.token_hex(12))
