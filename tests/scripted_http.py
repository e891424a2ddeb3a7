"""A real HTTP server on loopback that answers from a script.

For transport behaviour the reference control plane cannot be asked to show
(a 503 with Retry-After, a hung response, a garbage body): the client under
test talks real HTTP over a real socket; only the answers are scripted.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes -> raw
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer:
    def __init__(self) -> None:
        self.replies: List[Reply] = []
        self.default: Optional[Reply] = None
        # Answers by request when the script is empty (e.g. routing a daemon's
        # heartbeats, config pulls and job calls); None falls through to default.
        self.responder: Optional[Callable[[Seen], Optional[Reply]]] = None
        self.seen: List[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass  # keep test output clean

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers), body)
                with outer._lock:
                    outer.seen.append(seen)
                    reply = outer.replies.pop(0) if outer.replies else None
                    responder = outer.responder
                if reply is None and responder is not None:
                    reply = responder(seen)
                if reply is None:
                    reply = outer.default
                if reply is None:
                    reply = Reply(500, {"error": "script_exhausted", "message": "no reply"})
                if reply.delay:
                    time.sleep(reply.delay)
                raw = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else json.dumps(reply.body if reply.body is not None else {}).encode()
                )
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)
