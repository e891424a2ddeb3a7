"""Run the app under uvicorn on a socket we bind ourselves.

Binding first (rather than letting uvicorn bind) is what makes ``--port 0``
useful: the real port is known before the server starts, so it can be printed
or handed to a test without racing for a "free" port.
"""

from __future__ import annotations

import socket
from typing import Optional, Tuple

import uvicorn

from backupagent.controlplane.app import create_app
from backupagent.controlplane.faults import FaultInjector
from backupagent.controlplane.store import Store


def bind(host: str, port: int) -> Tuple[socket.socket, int]:
    """A listening TCP socket on ``host:port`` (0 picks a free port) and its actual port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on an accepted
    # connection only when the socket says it is TCP. Without it every
    # keep-alive response (headers and body written separately) waits ~40 ms
    # for the client's delayed ACK, which capped the agent's outbox at ~23
    # requests/s (bench/outbox_throughput.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock, sock.getsockname()[1]


def make_server(
    store: Store, *, log_level: str = "warning", faults: Optional[FaultInjector] = None
) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(store, faults=faults),
        log_level=log_level,
        lifespan="off",
        access_log=log_level in ("debug", "info"),
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return uvicorn.Server(config)


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
