"""A real Docker engine for the verification tests, and the locally built images.

``docker_engine`` uses a dockerd that already answers on the default socket;
otherwise it starts one itself (root only, in the background, logging to a
temp file) and stops it at the end. It keeps the default data root so the
images built by :mod:`tests.images.build` are cached between runs on the same
machine; a private ``--data-root`` is used only when the default one is held
by another daemon that does not answer (a stale lock).

Image fixtures (``postgres_image``, ``mariadb_image``, ``redis_image``) build
on first use and are reused afterwards (about a minute per image once).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.servers import require, require_binary, wait_for

DEFAULT_SOCKET = "/var/run/docker.sock"


def _client(base_url: Optional[str] = None) -> Any:
    import docker

    if base_url:
        return docker.DockerClient(base_url=base_url, timeout=30)
    return docker.from_env(timeout=30)


def _answers(base_url: Optional[str] = None) -> bool:
    try:
        client = _client(base_url)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


class DockerEngine:
    """A reachable Docker engine: its client and whether this session started it."""

    def __init__(self, base_url: Optional[str], started: bool, log_path: Optional[Path]):
        self.base_url = base_url
        self.started = started
        self.log_path = log_path
        self.client = _client(base_url)

    def env(self) -> dict:
        """Environment for a child (CLI) that must talk to this engine."""
        env = dict(os.environ)
        if self.base_url:
            env["DOCKER_HOST"] = self.base_url
        return env


def _start_dockerd(tmp: Path) -> tuple[subprocess.Popen, Optional[str]]:
    dockerd = require_binary("dockerd", "apt-get install docker.io")
    require(os.geteuid() == 0, "dockerd can only be started as root")
    log_path = tmp / "dockerd.log"
    argv = [dockerd, "--log-level=warn"]
    base_url: Optional[str] = None
    if Path("/var/run/docker.pid").exists() and not _answers():
        # Another daemon holds the default root but does not answer: run beside it.
        sock = tmp / "docker.sock"
        argv += [
            f"--data-root={tmp / 'data'}",
            f"--exec-root={tmp / 'exec'}",
            f"--pidfile={tmp / 'docker.pid'}",
            f"--host=unix://{sock}",
            "--bridge=none",
        ]
        base_url = f"unix://{sock}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, base_url


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A working Docker engine (the running one, or one started for this session)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        require(False, "the `docker` Python package is not installed (pip install docker)")
    require_binary("docker", "apt-get install docker.io")
    if _answers():
        engine = DockerEngine(None, started=False, log_path=None)
        try:
            yield engine
        finally:
            engine.client.close()
        return
    tmp = Path(tempfile.mkdtemp(prefix="backupagent-dockerd-"))
    proc, base_url = _start_dockerd(tmp)
    try:
        try:
            wait_for(lambda: proc.poll() is None and _answers(base_url), 60, "dockerd")
        except TimeoutError as exc:
            tail = (tmp / "dockerd.log").read_text(errors="replace")[-2000:]
            require(False, f"dockerd did not start ({exc}); log tail:\n{tail}")
        engine = DockerEngine(base_url, started=True, log_path=tmp / "dockerd.log")
        if base_url:
            os.environ["DOCKER_HOST"] = base_url
        yield engine
        engine.client.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if base_url:
            os.environ.pop("DOCKER_HOST", None)
        shutil.rmtree(tmp, ignore_errors=True)


def _image(kind: str, engine: DockerEngine) -> str:
    from tests.images.build import BuildError, build_image

    require_binary("debootstrap", "apt-get install debootstrap")
    started = time.monotonic()
    try:
        tag = build_image(kind)
    except BuildError as exc:
        require(False, f"could not build the {kind} test image: {exc}")
        raise
    took = time.monotonic() - started
    if took > 5:
        print(f"built {tag} in {took:.0f}s")
    return tag


@pytest.fixture(scope="session")
def postgres_image(docker_engine: DockerEngine) -> str:
    """Tag of the locally built PostgreSQL 15 image (official-image contract)."""
    return _image("postgres", docker_engine)


@pytest.fixture(scope="session")
def mariadb_image(docker_engine: DockerEngine) -> str:
    """Tag of the locally built MariaDB 10.11 image (official-image contract)."""
    return _image("mariadb", docker_engine)


@pytest.fixture(scope="session")
def redis_image(docker_engine: DockerEngine) -> str:
    """Tag of the locally built Redis 7 image (official-image contract)."""
    return _image("redis", docker_engine)
