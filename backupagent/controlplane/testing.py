"""An in-process control plane for tests: ``with running_server(db) as srv: ...``.

The server runs in a background thread on a free 127.0.0.1 port, over real
HTTP, so an agent under test talks to it exactly as to a remote one, while the
test reads what arrived straight from ``srv.store``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from backupagent.controlplane.faults import FaultInjector
from backupagent.controlplane.server import bind, make_server, url_for
from backupagent.controlplane.store import Store


@dataclass
class ServerHandle:
    url: str  # base URL, e.g. http://127.0.0.1:41234 (the agent's --server)
    store: Store
    port: int
    faults: FaultInjector  # e.g. srv.faults.add("/heartbeat", 503, times=2, retry_after="1")

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1/agent"

    def create_token(self, ttl_seconds: float = 3600.0) -> str:
        return self.store.create_registration_token(ttl_seconds)


@contextmanager
def running_server(
    db_path: Union[str, Path], *, host: str = "127.0.0.1", startup_timeout: float = 10.0
) -> Iterator[ServerHandle]:
    """Start the control plane over ``db_path``; always stopped (and the store closed) on exit."""
    store = Store(db_path)
    sock, port = bind(host, 0)
    faults = FaultInjector()
    server = make_server(store, faults=faults)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"controlplane-{port}", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start on {host}:{port}")
            time.sleep(0.02)
        yield ServerHandle(url=url_for(host, port), store=store, port=port, faults=faults)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        store.close()
