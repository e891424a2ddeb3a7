"""The agent (as a real process) against the reference control plane over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from backupagent.controlplane.testing import ServerHandle, running_server


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path / "controlplane.db") as srv:
        yield srv


@dataclass
class Agent:
    """One agent installation: its own config and state dirs, run as subprocesses."""

    config_dir: Path
    state_dir: Path
    procs: List[subprocess.Popen] = field(default_factory=list)

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "BACKUPAGENT_CONFIG_DIR": str(self.config_dir),
                "BACKUPAGENT_STATE_DIR": str(self.state_dir),
                "BACKUPAGENT_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("BACKUPAGENT_SERVER", None)
        return env

    def cli(
        self, *args: str, input: Optional[str] = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "backupagent", *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.state_dir.parent / f"agent-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupagent", *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def log_lines(self, proc: subprocess.Popen) -> List[Dict[str, Any]]:
        out = []
        for line in Path(proc.log_path).read_text().splitlines():  # type: ignore[attr-defined]
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line, "level": "raw"})
        return out

    def register(self, srv: ServerHandle) -> str:
        token = srv.create_token()
        res = self.cli("register", "--token", "-", "--server", srv.url, input=token + "\n")
        assert res.returncode == 0, res.stderr
        return (self.config_dir / "api-key").read_text().strip()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(config_dir=tmp_path / "etc", state_dir=tmp_path / "state")
    yield a
    for proc in a.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def wait_until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
