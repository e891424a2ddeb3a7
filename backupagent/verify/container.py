"""The throwaway verification container: labelled, limited, offline, always removed.

Why it looks like this:

- ``network_mode="none"``: the dump is streamed into the restore tool inside
  the container through ``docker exec`` stdin, and every check runs inside
  too, so the container needs no network at all; a hostile dump cannot reach
  anything (the container only has a loopback interface).
- Memory, CPU and pid limits: a verification must not starve the database
  the host exists for.
- The label ``io.backupagent.managed=true`` marks it as ours, so a crash that
  skipped the ``finally`` is cleaned at the next start-up by
  :func:`cleanup_leftovers`, and nothing else on the host is ever touched.
- A watchdog kills the container at the hard deadline or on cancel; killing
  the container's main process ends every exec inside it, which unblocks any
  stream that was waiting on it. Removal (force, with anonymous volumes,
  which official database images declare) happens in ``__exit__`` whatever
  happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

from backupagent.verify.errors import (
    VERIFY_CANCELLED,
    VERIFY_CONTAINER_FAIL,
    VERIFY_DOCKER_UNAVAILABLE,
    VERIFY_TIMEOUT,
    VerifyError,
)

log = logging.getLogger(__name__)

LABEL = "io.backupagent.managed"
JOB_LABEL = "io.backupagent.job-id"
PURPOSE_LABEL = "io.backupagent.purpose"
DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_CPUS = 1.0
DEFAULT_PIDS = 1024
STDOUT_CAP = 64 * 1024 * 1024
STDERR_TAIL = 64 * 1024
SEND_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits for one verification container (host settings may change them)."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    cpus: float = DEFAULT_CPUS
    pids: int = DEFAULT_PIDS

    @classmethod
    def from_settings(cls, settings_extra: Optional[Mapping[str, Any]]) -> Limits:
        """``verification: {memoryMb: 2048, cpus: 2, pids: 2048}`` in the host settings."""
        section = (settings_extra or {}).get("verification") or {}
        try:
            memory = int(section.get("memoryMb", DEFAULT_MEMORY_BYTES // (1024 * 1024)))
            cpus = float(section.get("cpus", DEFAULT_CPUS))
            pids = int(section.get("pids", DEFAULT_PIDS))
        except (TypeError, ValueError) as exc:
            raise VerifyError(
                f"host settings: verification.memoryMb/cpus/pids must be numbers ({exc})",
                code="SETTINGS_INVALID",
            ) from None
        if memory < 64 or cpus <= 0 or pids < 16:
            raise VerifyError(
                f"host settings: verification limits too small (memoryMb={memory}, "
                f"cpus={cpus}, pids={pids}); use at least 64 MB, a positive CPU count "
                "and 16 pids",
                code="SETTINGS_INVALID",
            )
        return cls(memory_bytes=memory * 1024 * 1024, cpus=cpus, pids=pids)


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


def docker_client(timeout: float = 60) -> Any:
    """A Docker SDK client from the environment, or a clear error."""
    try:
        import docker
    except ImportError:
        raise VerifyError(
            "the `docker` Python package is not installed; pip install docker",
            code=VERIFY_DOCKER_UNAVAILABLE,
        ) from None
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:
        raise VerifyError(
            f"cannot reach the Docker engine ({exc}); start dockerd and give the agent's "
            "user access to /var/run/docker.sock (the docker group), or set DOCKER_HOST",
            code=VERIFY_DOCKER_UNAVAILABLE,
        ) from None
    return client


def cleanup_leftovers(client: Any = None) -> List[str]:
    """Force-remove every container carrying our label; return their ids.

    Meant for start-up: a container still labelled then belongs to a
    verification that a crash interrupted.
    """
    own = client is None
    client = client or docker_client()
    removed: List[str] = []
    try:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}=true"}):
            try:
                c.remove(force=True, v=True)
                removed.append(c.id)
            except Exception as exc:
                if "No such container" in str(exc) or "is already in progress" in str(exc):
                    continue
                log.warning("could not remove leftover container %s: %s", c.id[:12], exc)
    finally:
        if own:
            client.close()
    if removed:
        log.info("removed %d leftover verification container(s)", len(removed))
    return removed


def _raw_socket(sock: Any) -> socket.socket:
    raw = getattr(sock, "_sock", sock)
    if not isinstance(raw, socket.socket):
        raise VerifyError(
            f"unexpected Docker exec socket type {type(raw).__name__}",
            code=VERIFY_CONTAINER_FAIL,
        )
    return raw


class _Demux(threading.Thread):
    """Reads Docker's multiplexed exec stream (8-byte frame headers) into buffers."""

    def __init__(self, raw: socket.socket) -> None:
        super().__init__(name="verify-exec-out", daemon=True)
        self.raw = raw
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_truncated = False
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = self.raw.recv(256 * 1024)
                if not data:
                    break
                buf += data
                while len(buf) >= 8:
                    size = int.from_bytes(buf[4:8], "big")
                    if len(buf) < 8 + size:
                        break
                    kind, payload = buf[0], bytes(buf[8 : 8 + size])
                    del buf[: 8 + size]
                    if kind == 2:
                        self.stderr += payload
                        if len(self.stderr) > 2 * STDERR_TAIL:
                            del self.stderr[:-STDERR_TAIL]
                    elif len(self.stdout) + len(payload) <= STDOUT_CAP:
                        self.stdout += payload
                    else:
                        self.stdout_truncated = True
        except OSError as exc:
            self.error = exc


StdinSource = Union[bytes, Iterable[bytes], None]


class ManagedContainer:
    """One verification container; use as a context manager so it is always removed."""

    def __init__(
        self,
        client: Any,
        image: str,
        *,
        environment: Optional[Dict[str, str]] = None,
        command: Optional[Sequence[str]] = None,
        job_id: Optional[str] = None,
        limits: Optional[Limits] = None,
        timeout: float = 1800.0,
        cancel: Any = None,
    ) -> None:
        self.client = client
        self.image = image
        self.environment = dict(environment or {})
        self.command = list(command) if command else None
        self.job_id = job_id or ""
        self.limits = limits or Limits()
        self.timeout = timeout
        self.cancel = cancel
        self.container: Any = None
        self.stopped: Optional[str] = None  # "timeout" / "cancel" once the watchdog fired
        self._done = threading.Event()
        self._watchdog: Optional[threading.Thread] = None
        self.deadline = time.monotonic() + timeout

    @property
    def id(self) -> str:
        return str(self.container.id) if self.container is not None else ""

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> ManagedContainer:
        import docker.errors

        labels = {LABEL: "true", PURPOSE_LABEL: "verification"}
        if self.job_id:
            labels[JOB_LABEL] = self.job_id
        name = f"backupagent-verify-{os.urandom(5).hex()}"
        try:
            self.container = self.client.containers.run(
                self.image,
                self.command,
                name=name,
                detach=True,
                environment=self.environment,
                labels=labels,
                network_mode="none",
                mem_limit=self.limits.memory_bytes,
                memswap_limit=self.limits.memory_bytes,
                nano_cpus=int(self.limits.cpus * 1e9),
                pids_limit=self.limits.pids,
                security_opt=["no-new-privileges"],
                shm_size="256m",
            )
        except docker.errors.ImageNotFound:
            raise VerifyError(
                f"image {self.image!r} vanished before the container started",
                code="VERIFY_IMAGE_MISSING",
            ) from None
        except docker.errors.APIError as exc:
            # a created-but-not-started container still carries our label: remove it
            self._remove_by_name(name)
            raise VerifyError(
                f"could not start a container from {self.image!r}: {exc}",
                code=VERIFY_CONTAINER_FAIL,
            ) from None
        self._watchdog = threading.Thread(target=self._watch, name="verify-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def _remove_by_name(self, name: str) -> None:
        try:
            self.client.containers.get(name).remove(force=True, v=True)
        except Exception as exc:  # usually: nothing was created
            log.debug("removing %s after a failed start: %s", name, exc)

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            reason = None
            if self.cancel is not None and getattr(self.cancel, "cancelled", False):
                reason = "cancel"
            elif time.monotonic() >= self.deadline:
                reason = "timeout"
            if reason:
                self.stopped = reason
                log.warning("verification container %s: %s, killing it", self.id[:12], reason)
                try:
                    self.container.kill()
                except Exception as exc:  # already dead is fine
                    log.debug("kill %s: %s", self.id[:12], exc)
                return

    def _timeout_error(self) -> VerifyError:
        return VerifyError(
            f"verification exceeded its {self.timeout:.0f}s limit; the container was "
            "killed (raise the verification timeout for big databases)",
            code=VERIFY_TIMEOUT,
        )

    def check_alive(self) -> None:
        """Raise the timeout/cancel error if the watchdog has fired."""
        if self.stopped == "timeout":
            raise self._timeout_error()
        if self.stopped == "cancel":
            reason = getattr(self.cancel, "reason", "CANCELLED")
            raise VerifyError(f"verification cancelled ({reason})", code=VERIFY_CANCELLED)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def remove(self) -> None:
        """Force-remove the container and its anonymous volumes (idempotent)."""
        self._done.set()
        if self.container is None:
            return
        for attempt in range(3):
            try:
                self.container.remove(force=True, v=True)
                break
            except Exception as exc:
                if "No such container" in str(exc):
                    break
                if "already in progress" in str(exc) or attempt < 2:
                    time.sleep(0.5)
                    continue
                log.error("could not remove verification container %s: %s", self.id[:12], exc)
        if self._watchdog is not None:
            self._watchdog.join(2)

    def __enter__(self) -> ManagedContainer:
        if self.container is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- inside the container --------------------------------------------------

    def logs_tail(self, lines: int = 30) -> str:
        try:
            data = self.container.logs(tail=lines)
        except Exception as exc:
            return f"(logs unavailable: {exc})"
        return data.decode("utf-8", "replace").strip()

    def status(self) -> str:
        try:
            self.container.reload()
        except Exception:
            return "gone"
        return str(self.container.status)

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: StdinSource = None,
        environment: Optional[Dict[str, str]] = None,
        user: str = "",
        on_sent: Optional[Any] = None,
    ) -> ExecResult:
        """Run ``argv`` in the container, streaming ``stdin`` into it; never a shell.

        ``stdin`` is bytes or an iterable of byte chunks, sent as it is
        produced (the restore stream never sits in memory). If the process
        exits early (a failing restore), sending stops and its stderr is
        returned with its exit code.
        """
        self.check_alive()
        api = self.client.api
        try:
            created = api.exec_create(
                self.id,
                list(argv),
                stdin=stdin is not None,
                stdout=True,
                stderr=True,
                environment=environment,
                user=user,
            )
            sock = api.exec_start(created["Id"], socket=True)
        except Exception as exc:
            self.check_alive()
            raise VerifyError(
                f"docker exec {argv[0]!r} in container {self.id[:12]} failed: {exc}",
                code=VERIFY_CONTAINER_FAIL,
            ) from None
        raw = _raw_socket(sock)
        reader = _Demux(raw)
        reader.start()
        send_error: Optional[BaseException] = None
        try:
            if stdin is not None:
                chunks: Iterable[bytes] = (
                    [stdin] if isinstance(stdin, (bytes, bytearray)) else stdin
                )
                try:
                    for chunk in chunks:
                        if self.stopped:
                            break
                        view = memoryview(chunk)
                        for i in range(0, len(view), SEND_CHUNK):
                            raw.sendall(view[i : i + SEND_CHUNK])
                        if on_sent is not None:
                            on_sent(len(view))
                except (BrokenPipeError, ConnectionResetError) as exc:
                    send_error = exc  # the process exited early: its stderr says why
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_WR)
            reader.join()
        finally:
            with contextlib.suppress(OSError):
                raw.close()
            try:
                sock.close()
            except Exception as exc:  # the raw socket is closed already
                log.debug("closing exec socket: %s", exc)
        self.check_alive()
        exit_code = self._exit_code(created["Id"])
        if send_error is not None and exit_code == 0:
            exit_code = -1
        return ExecResult(exit_code, bytes(reader.stdout), bytes(reader.stderr[-STDERR_TAIL:]))

    def _exit_code(self, exec_id: str) -> int:
        for _ in range(100):
            info = self.client.api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else -1
            time.sleep(0.05)
        return -1

    def restart(self) -> None:
        """Stop and start the container's server (Redis loads its RDB at start)."""
        self.check_alive()
        try:
            self.container.restart(timeout=30)
        except Exception as exc:
            self.check_alive()
            raise VerifyError(
                f"restarting container {self.id[:12]} failed: {exc}", code=VERIFY_CONTAINER_FAIL
            ) from None

    def wait_ready(
        self,
        probe: Sequence[str],
        timeout: float,
        what: str,
        expect: Optional[str] = None,
        environment: Optional[Dict[str, str]] = None,
    ) -> float:
        """Poll ``probe`` inside the container until it succeeds; return seconds waited.

        Success is exit 0, and with ``expect`` also that text in its output
        (some tools exit 0 on an error reply).
        """
        started = time.monotonic()
        limit = min(started + timeout, self.deadline)
        last = ""
        while True:
            self.check_alive()
            state = self.status()
            if state in ("exited", "dead", "gone"):
                raise VerifyError(
                    f"{what} in container {self.id[:12]} ({self.image}) exited before it "
                    f"was ready; its log ends with:\n{self.logs_tail()}",
                    code=VERIFY_CONTAINER_FAIL,
                )
            try:
                res = self.exec(probe, environment=environment)
                if res.exit_code == 0 and (expect is None or expect in res.text):
                    return time.monotonic() - started
                last = (res.err_text or res.text).strip()[-300:]
            except VerifyError as exc:
                if exc.code in (VERIFY_TIMEOUT, VERIFY_CANCELLED):
                    raise
                last = str(exc)
            if time.monotonic() >= limit:
                self.check_alive()
                if time.monotonic() >= self.deadline:
                    # The overall limit, not the readiness one: the watchdog
                    # may not have polled yet, but this is the timeout.
                    raise self._timeout_error()
                raise VerifyError(
                    f"{what} in container {self.id[:12]} ({self.image}) was not ready after "
                    f"{timeout:.0f}s (last probe: {last or 'no output'}); its log ends "
                    f"with:\n{self.logs_tail()}",
                    code=VERIFY_CONTAINER_FAIL,
                )
            time.sleep(0.25)
