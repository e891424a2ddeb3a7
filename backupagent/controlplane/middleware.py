"""ASGI layer in front of the API: body size limit, media type, and the request log.

It is plain ASGI rather than a Starlette ``BaseHTTPMiddleware`` because it must
see and bound the raw body before FastAPI parses it, and record every request,
including the ones it rejects itself, exactly as the client sent them.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

from starlette.concurrency import run_in_threadpool

from backupagent.controlplane.faults import FaultInjector
from backupagent.controlplane.store import API_KEY_PREFIX, Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 1024 * 1024  # 1 MiB; larger bodies get 413
MAX_DRAIN = 16 * 1024 * 1024  # read (and drop) this much of an oversized body before 413
MAX_RECORDED_BODY = 64 * 1024
API_PREFIX = "/api/v1/agent/"


class ApiGuard:
    """Bounds bodies, requires JSON on API POSTs and records each request in the store."""

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        max_body: int = MAX_BODY,
        faults: Optional[FaultInjector] = None,
    ) -> None:
        self.app = app
        self.store = store
        self.max_body = max_body
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.time()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        status: Dict[str, int] = {"code": 500}
        body = b""
        recorded = False

        async def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                # sqlite calls block: keep them off the event loop
                await run_in_threadpool(self._record, scope, headers, body, status["code"], started)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Recorded before the last byte leaves: a client that has its
                # answer finds its request in the log (tests read it at once).
                await record()
            await send(message)

        try:
            body, too_large = await self._read_body(receive, headers)
            rejection = self._reject(scope, headers, too_large)
            if rejection is not None:
                await _send_error(recording_send, *rejection)
                return
            fault = self.faults.take(scope["method"], scope["path"]) if self.faults else None
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    body_out = fault.body or {"error": "injected", "message": "injected fault"}
                    await _send_json(recording_send, fault.status, body_out, fault.headers)
                    return
            await self.app(scope, _replay(body, receive), recording_send)
        finally:
            await record()  # no response sent (the client went away, an error)

    async def _read_body(
        self, receive: Receive, headers: List[Tuple[str, str]]
    ) -> Tuple[bytes, bool]:
        declared = _header(headers, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_DRAIN:
            return b"", True  # too big to be worth draining
        chunks: List[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            elif size > MAX_DRAIN:
                break
            more = message.get("more_body", False)
        return b"".join(chunks), size > self.max_body

    def _reject(
        self, scope: Scope, headers: List[Tuple[str, str]], too_large: bool
    ) -> Optional[Tuple[int, str, str]]:
        if too_large:
            return (
                413,
                "payload_too_large",
                f"request body exceeds {self.max_body} bytes (1 MiB)",
            )
        # /config is GET-only: a POST there is a 405 from routing, not a 415
        post_route = scope["path"].startswith(API_PREFIX) and scope["path"] != API_PREFIX + "config"
        if scope["method"] == "POST" and post_route:
            media = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
            if media != "application/json":
                return (
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be application/json, got {media or 'none'!r}",
                )
        return None

    def _record(
        self,
        scope: Scope,
        headers: List[Tuple[str, str]],
        body: bytes,
        status_code: int,
        started: float,
    ) -> None:
        auth = _header(headers, "authorization")
        agent_id = None
        kept: List[Tuple[str, str]] = []
        for name, value in headers:
            if name == "authorization":
                scheme = value.split(" ", 1)[0]
                value = f"{scheme} <redacted>"  # keep the scheme: tests assert on it
            kept.append((name, value))
        if auth is not None:
            scheme, _, key = auth.partition(" ")
            if scheme == "Bearer" and key.startswith(API_KEY_PREFIX):
                agent_id = self.store.agent_id_for_key(key)
        self.store.record_request(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=kept,
            auth_present=auth is not None,
            auth_valid=agent_id is not None,
            agent_id=agent_id,
            status_code=status_code,
            body=_recordable_body(scope["path"], body),
            received_epoch=started,
            duration_ms=(time.time() - started) * 1000.0,
        )


def _header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for key, value in headers:
        if key == name:
            return value
    return None


def _replay(body: bytes, upstream: Receive) -> Receive:
    """A ``receive`` that hands the buffered body to the app, then passes through.

    Passing through (rather than inventing a disconnect) keeps disconnect
    detection truthful for anything downstream that listens for it.
    """
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive


def _recordable_body(path: str, body: bytes) -> Optional[str]:
    """The body as text for the request log, with the registration token removed."""
    if not body:
        return None
    text = body[:MAX_RECORDED_BODY].decode("utf-8", errors="replace")
    if path.endswith("/register"):
        try:
            doc = json.loads(body)
        except ValueError:
            return f"<unparseable register body, {len(body)} bytes>"
        if isinstance(doc, dict) and "registrationToken" in doc:
            doc["registrationToken"] = "<redacted>"
        return json.dumps(doc)
    return text


async def _send_error(send: Send, status: int, error: str, message: str) -> None:
    await _send_json(send, status, {"error": error, "message": message}, {})


async def _send_json(
    send: Send, status: int, body: Dict[str, Any], headers: Dict[str, str]
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
