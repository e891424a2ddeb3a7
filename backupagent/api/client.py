"""Typed client for the Agent API: one method per endpoint of the reference.

All HTTP goes through ``_call``, which owns timeouts, headers, the retry policy
and error mapping, so the nine endpoint methods are just shapes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import requests

from backupagent import __version__
from backupagent.api.errors import (
    ApiError,
    AuthRejected,
    PermanentApiError,
    TransientApiError,
    Unreachable,
)
from backupagent.api.models import (
    MAX_LOG_BATCH,
    AnomalyReport,
    HeartbeatRequest,
    HeartbeatResponse,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    RegisterRequest,
    RegisterResponse,
    SchemaSnapshotRequest,
    VerificationReport,
    to_json,
)
from backupagent.api.retry import Outcome, RetryPolicy, classify, parse_retry_after
from backupagent.errors import AgentError
from backupagent.logs import redact, register_secret

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/agent"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a config is kilobytes; anything near this is wrong
MAX_JOB_ID = 128  # a UUID is 36; the id also names the job's work dir


def go_os() -> str:
    return platform.system().lower() or "linux"


def go_arch() -> str:
    """Go-style architecture names, as the reference uses (amd64, arm64)."""
    machine = platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "386",
        "i686": "386",
        "armv7l": "arm",
        "armv6l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine or "unknown")


def user_agent() -> str:
    return f"backupagent/{__version__} ({go_os()}; {go_arch()})"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_url(url: str, *, insecure_http: bool = False) -> str:
    """Normalise a server URL, refusing plain HTTP to anything but loopback."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise AgentError(
            f"server URL {url!r} is not an http(s) URL; use e.g. https://backupagent.ai"
        )
    if parts.scheme == "http" and not (insecure_http or _is_loopback(parts.hostname)):
        raise AgentError(
            f"server URL {url!r} uses plain HTTP to a non-loopback host: the API key "
            "would travel in clear text. Use https://, or pass --insecure-http if you "
            "really mean it"
        )
    if parts.query or parts.fragment:
        raise AgentError(f"server URL {url!r} must not carry a query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class ApiClient:
    """A client for one agent's identity (or none, for ``register``)."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        *,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, safe as a default
        ca_bundle: Optional[str] = None,
        insecure_http: bool = False,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
        stop_event: Optional[threading.Event] = None,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.base_url = check_server_url(base_url, insecure_http=insecure_http)
        self._api_key = api_key
        register_secret(api_key)
        self.retry = retry
        self.timeout = timeout
        self._stop = stop_event or threading.Event()
        self._sleep = sleep
        self._session = requests.Session()
        self._session.verify = ca_bundle or True  # TLS verification is never turned off
        self._session.trust_env = True
        self._session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": user_agent(),
            }
        )

    def close(self) -> None:
        self._session.close()

    # -- the nine endpoints -------------------------------------------------

    def register(self, req: RegisterRequest) -> RegisterResponse:
        register_secret(req.registrationToken)
        data = self._call("POST", "/register", to_json(req), auth=False)
        agent_id = _field(data, "agentId", str)
        api_key = _field(data, "apiKey", str)
        register_secret(api_key)
        return RegisterResponse(agentId=agent_id, apiKey=api_key)

    def heartbeat(
        self, req: HeartbeatRequest, *, retry: Optional[RetryPolicy] = None
    ) -> HeartbeatResponse:
        data = self._call("POST", "/heartbeat", to_json(req), retry=retry)
        return HeartbeatResponse(configChanged=_field(data, "configChanged", bool))

    def get_config(self) -> Any:
        """The raw config document, whatever its shape: the config package
        validates it, so a wrong shape is rejected as CONFIG_INVALID like any
        other bad config."""
        return self._call("GET", "/config", None)

    def start_job(self, req: JobStartRequest) -> str:
        # The id names the job's work dir and goes into later URLs: refuse an odd one now.
        return _segment(_field(self._call("POST", "/jobs/start", to_json(req)), "jobId", str))

    def update_job_status(self, job_id: str, update: JobStatusUpdate) -> bool:
        data = self._call("POST", f"/jobs/{_segment(job_id)}/status", to_json(update))
        return bool(_field(data, "success", bool))

    def submit_verification(self, job_id: str, report: VerificationReport) -> str:
        data = self._call("POST", f"/jobs/{_segment(job_id)}/verification", to_json(report))
        return _field(data, "verificationId", str)

    def upload_logs(self, job_id: str, entries: Sequence[LogEntry]) -> int:
        """Ship log entries in batches of at most 100; returns how many were inserted."""
        inserted = 0
        for start in range(0, len(entries), MAX_LOG_BATCH):
            batch = [to_json(e) for e in entries[start : start + MAX_LOG_BATCH]]
            data = self._call("POST", f"/jobs/{_segment(job_id)}/logs", {"logs": batch})
            inserted += int(_field(data, "inserted", int))
        return inserted

    def submit_schema_snapshot(self, req: SchemaSnapshotRequest) -> str:
        return _field(self._call("POST", "/schema-snapshot", to_json(req)), "snapshotId", str)

    def report_anomaly(self, req: AnomalyReport) -> str:
        return _field(self._call("POST", "/anomaly", to_json(req)), "anomalyId", str)

    # -- transport ----------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]],
        *,
        auth: bool = True,
        retry: Optional[RetryPolicy] = None,
    ) -> Any:
        policy = retry or self.retry
        url = self.base_url + API_PREFIX + path
        headers: Dict[str, str] = {}
        if auth:
            if not self._api_key:
                raise AuthRejected("this host is not registered: run `backupagent register`")
            headers["Authorization"] = f"Bearer {self._api_key}"
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        last: Optional[ApiError] = None
        for attempt in range(policy.max_attempts):
            if attempt:
                assert last is not None
                wait = policy.delay(attempt - 1, getattr(last, "retry_after", None))
                log.info("retrying %s %s in %.1fs after: %s", method, path, wait, last)
                if self._wait(wait):
                    break
            try:
                return self._once(method, url, path, payload, headers)
            except (TransientApiError, Unreachable) as exc:
                last = exc
        assert last is not None
        raise last

    def _wait(self, seconds: float) -> bool:
        """Sleep, waking early on shutdown. True when asked to stop."""
        if self._sleep is not None:
            self._sleep(seconds)
            return self._stop.is_set()
        return self._stop.wait(seconds)

    def _once(
        self, method: str, url: str, path: str, payload: Optional[bytes], headers: Dict[str, str]
    ) -> Any:
        started = time.monotonic()
        try:
            resp = self._session.request(
                method,
                url,
                data=payload,
                headers=headers,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise Unreachable(f"TLS error talking to {self.base_url}: {_short(exc)}") from None
        except requests.exceptions.Timeout:
            raise Unreachable(
                f"{method} {path}: no answer from {self.base_url} within "
                f"{self.timeout[0]:.0f}s connect / {self.timeout[1]:.0f}s read"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {_short(exc)}") from None
        try:
            raw = _read_limited(resp)
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"{method} {path}: connection lost: {_short(exc)}") from None
        finally:
            resp.close()
        log.debug(
            "%s %s -> %s in %.0fms",
            method,
            path,
            resp.status_code,
            (time.monotonic() - started) * 1000,
        )
        outcome = classify(resp.status_code)
        if outcome is Outcome.OK:
            try:
                return json.loads(raw.decode("utf-8")) if raw else {}
            except (ValueError, RecursionError):  # bad UTF-8/JSON, 5000-digit number, deep nesting
                raise ApiError(
                    f"{method} {path}: the server sent a body that is not JSON",
                    status=resp.status_code,
                ) from None
        error, message = _server_error(raw)
        text = f"{method} {path}: HTTP {resp.status_code}"
        if error or message:
            text += f" {error or ''}: {message or ''}".rstrip(": ")
        text = redact(text)
        if outcome is Outcome.FATAL:
            raise AuthRejected(text, status=resp.status_code, error=error)
        if outcome is Outcome.PERMANENT:
            raise PermanentApiError(text, status=resp.status_code, error=error)
        exc = TransientApiError(text, status=resp.status_code, error=error)
        exc.retry_after = parse_retry_after(resp.headers.get("Retry-After"))  # type: ignore[attr-defined]
        raise exc


def _read_limited(resp: requests.Response) -> bytes:
    chunks: List[bytes] = []
    size = 0
    for chunk in resp.iter_content(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise PermanentApiError(
                f"response from {resp.url} exceeds {MAX_RESPONSE_BYTES} bytes; refusing it",
                status=resp.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _server_error(raw: bytes) -> tuple[Optional[str], Optional[str]]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        text = raw[:200].decode("utf-8", "replace").strip()
        return None, text or None
    if isinstance(data, dict):
        err, msg = data.get("error"), data.get("message")
        return (
            str(err)[:100] if err is not None else None,
            str(msg)[:500] if msg is not None else None,
        )
    return None, None


def _field(data: Any, name: str, kind: type) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise ApiError(f"the server's response has no {name!r} field")
    value = data[name]
    if kind is int and isinstance(value, bool):
        raise ApiError(f"the server's {name!r} is not an integer")
    if not isinstance(value, kind):
        raise ApiError(f"the server's {name!r} is {type(value).__name__}, expected {kind.__name__}")
    if kind is str and not value:
        raise ApiError(f"the server's {name!r} is empty")
    return value


def _segment(job_id: str) -> str:
    """A job id from the server goes into a URL path: refuse anything odd."""
    if (
        not job_id
        or len(job_id) > MAX_JOB_ID
        or any(not (c.isascii() and (c.isalnum() or c in "-_.")) for c in job_id)
        or job_id in (".", "..")
    ):
        shown = repr(job_id[:80]) + (f" ({len(job_id)} characters)" if len(job_id) > 80 else "")
        raise ApiError(f"job id {shown} is not a safe path segment")
    return job_id


def _short(exc: BaseException) -> str:
    return redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
