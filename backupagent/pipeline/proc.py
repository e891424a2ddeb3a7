"""Child-process plumbing shared by the dump source and the restore sink.

Why a module of its own: both directions need the same three guarantees.
The child runs in its own process group, so a kill reaches whatever it
forked (``pg_dump -j``, shell wrappers). Its stderr is drained by a thread
into a bounded ring buffer, so a chatty tool can never block on a full pipe
and never grow our memory. And cancellation is watched by a thread, so even
a child that hangs without writing a byte is killed promptly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from typing import Any, Dict, Iterable, List, Optional

from backupagent.cancelwatch import CancelWatch
from backupagent.logs import redact
from backupagent.pipeline.errors import PipelineError

STDERR_LIMIT = 64 * 1024
STDERR_TAIL_CHARS = 2000
# Linux lets an unprivileged process grow a pipe to /proc/sys/fs/pipe-max-size
# (1 MiB by default). A bigger pipe means fewer wake-ups between the dump tool
# and us; on other systems this is simply skipped.
_F_SETPIPE_SZ = 1031
_SECRET_ENV = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def secret_env_values(env: Optional[Dict[str, str]]) -> List[str]:
    """Values of secret-looking variables (PGPASSWORD, ...), to scrub from stderr."""
    if not env:
        return []
    return [v for k, v in env.items() if _SECRET_ENV.search(k) and v and len(v) >= 4]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Known process secrets first, then the agent-wide redaction."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact(text)


def grow_pipe(fileobj: Any, size: int = 1 << 20) -> None:
    """Best effort: enlarge a pipe's kernel buffer (Linux only)."""
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, size)


class StderrTail(threading.Thread):
    """Drains a pipe until EOF, keeping only the last ``limit`` bytes."""

    def __init__(self, pipe: Any, limit: int = STDERR_LIMIT) -> None:
        super().__init__(name="stderr-drain", daemon=True)
        self._pipe = pipe
        self._limit = limit
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.total = 0

    def run(self) -> None:
        fd = self._pipe.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                with self._lock:
                    self.total += len(chunk)
                    self._buf += chunk
                    if len(self._buf) > self._limit:
                        del self._buf[: len(self._buf) - self._limit]
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._pipe.close()

    def tail(self, wait: float = 2.0) -> bytes:
        """The kept bytes; waits briefly for the writer side to finish first."""
        self.join(timeout=wait)
        with self._lock:
            return bytes(self._buf)


def tail_text(data: bytes, secrets: Iterable[str] = ()) -> str:
    """The end of a stderr capture as safe text for an error message."""
    text = data.decode("utf-8", errors="replace").strip()
    if len(text) > STDERR_TAIL_CHARS:
        text = "..." + text[-STDERR_TAIL_CHARS:]
    return scrub(text, secrets)


def describe_exit(name: str, returncode: int) -> str:
    """``pg_dump exited with status 1`` / ``pg_dump was killed by signal SIGKILL``."""
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = str(-returncode)
        return f"{name} was killed by signal {signame}"
    return f"{name} exited with status {returncode}"


def spawn(
    argv: List[str],
    env: Optional[Dict[str, str]],
    *,
    cwd: Optional[str],
    stdin: Any,
    stdout: Any,
    what: str,
) -> subprocess.Popen:
    """Start ``argv`` in a new session with stderr piped; missing tool -> PipelineError."""
    if not argv:
        raise PipelineError(f"{what}: empty argv; the engine built no command to run")
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError:
        raise PipelineError(
            f"{what}: {argv[0]!r} not found; install it or put it on PATH",
            code="TOOL_MISSING",
        ) from None
    except PermissionError:
        raise PipelineError(
            f"{what}: {argv[0]!r} is not executable by the agent user; fix its permissions",
            code="TOOL_MISSING",
        ) from None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads its own session)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def watch_process(proc: subprocess.Popen, cancel: Any, interval: float = 0.2) -> CancelWatch:
    """A watch that kills ``proc``'s process group as soon as ``cancel`` fires,
    even if nobody is reading its output (see backupagent.cancelwatch)."""
    return CancelWatch(
        cancel,
        lambda: kill_group(proc),
        finished=lambda: proc.poll() is not None,
        interval=interval,
    )
