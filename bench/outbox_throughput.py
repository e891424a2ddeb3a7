#!/usr/bin/env python3
"""Outbox throughput: how fast a backlog drains into the reference control plane.

Starts the reference control plane in its own process (as in production: the
agent and the server do not share a GIL), registers a throwaway agent, queues
``--jobs`` jobs of the shape a real backup reports (start, four stage
statuses, ``--logs`` log batches, a terminal status, a schema snapshot), then
drains the queue and reports items per second. One "item" is one queued row
that had to reach the server; a log batch of one job counts once per queued
``job_logs`` call, as the soak's backlog does.

Modes, all in one run on the same machine so the figures compare:

- ``serial``: ``deliver_next()`` in a loop, one commit per delivered item
  (how the delivery thread worked before batched acknowledgements);
- ``batched``: ``deliver_batch()`` in a loop, the delivery thread's path now.

    python bench/outbox_throughput.py [--jobs 200] [--logs 3] [--modes serial,batched]
                                      [--profile] [--out result.json]

``--profile`` adds a breakdown of where the drain's wall time goes: HTTP
round trips, the outbox's commits, the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backupagent import __version__  # noqa: E402
from backupagent.api.client import ApiClient  # noqa: E402
from backupagent.api.models import (  # noqa: E402
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    RegisterRequest,
    SchemaSnapshotRequest,
)
from backupagent.report.outbox import OutboxReporter  # noqa: E402

STAGES = ("dumping", "compressing", "encrypting", "uploading")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(work: Path) -> Tuple[subprocess.Popen[bytes], str, Path]:
    cp_db = work / "cp.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "backupagent.controlplane.cli", "serve", "--db", str(cp_db),
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import requests

    deadline = time.time() + 30
    while True:
        try:
            requests.get(url + "/api/v1/health", timeout=1)
            return server, url, cp_db
        except requests.RequestException:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the control plane did not start") from None
            time.sleep(0.2)


def register(url: str, cp_db: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    token = subprocess.run(
        [sys.executable, "-m", "backupagent.controlplane.cli", "token", "create", "--db",
         str(cp_db)], env=env, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    resp = ApiClient(url, insecure_http=True).register(
        RegisterRequest(
            registrationToken=token,
            hostname="bench-outbox",
            os="linux",
            arch="amd64",
            agentVersion=__version__,
        )
    )
    return resp.apiKey


def enqueue(rep: OutboxReporter, jobs: int, log_batches: int) -> int:
    """Queue ``jobs`` backups' worth of reports; returns the number of queued rows' items."""
    items = 0
    for n in range(jobs):
        job = rep.start_job(JobStartRequest(databaseId=f"db-{n % 20}", targetId="local"))
        items += 1
        for stage in STAGES:
            rep.job_status(job, JobStatusUpdate(status=stage))
            items += 1
            if stage == "dumping":
                for b in range(log_batches):
                    rep.job_logs(
                        job,
                        [
                            LogEntry(
                                level="info",
                                message=f"job {n} batch {b} line {i}",
                                timestamp="2026-11-29T00:00:00.000Z",
                            )
                            for i in range(5)
                        ],
                    )
                    items += 1
        rep.job_status(
            job,
            JobStatusUpdate(
                status="completed",
                dumpSize=1000 + n,
                compressedSize=500 + n,
                uploadPath=f"file:///bench/{n}.zst.age",
                durationMs=40,
            ),
        )
        rep.schema_snapshot(
            SchemaSnapshotRequest(
                databaseId=f"db-{n % 20}", snapshot={"tables": []}, tableCount=0, columnCount=0
            )
        )
        items += 2
    return items


class Timing:
    """Wall time spent inside wrapped calls, by name."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def instrument(rep: OutboxReporter, timing: Timing) -> None:
    api = rep._api
    for name in ("start_job", "update_job_status", "upload_logs", "submit_schema_snapshot"):
        setattr(api, name, timing.wrap("http", getattr(api, name)))
    q = rep.queue
    original_tx = q._tx

    import contextlib

    @contextlib.contextmanager
    def timed_tx() -> Any:
        t = time.perf_counter()
        with original_tx() as db:
            yield db
        timing.seconds["outbox commits"] = (
            timing.seconds.get("outbox commits", 0.0) + time.perf_counter() - t
        )
        timing.calls["outbox commits"] = timing.calls.get("outbox commits", 0) + 1

    q._tx = timed_tx  # type: ignore[method-assign]


def run_mode(
    mode: str, url: str, key: str, work: Path, jobs: int, log_batches: int, profile: bool
) -> Dict[str, Any]:
    state = work / f"state-{mode}"
    api = ApiClient(url, key, insecure_http=True)
    rep = OutboxReporter(state, api)
    try:
        t = time.perf_counter()
        items = enqueue(rep, jobs, log_batches)
        enqueue_s = time.perf_counter() - t
        timing = Timing()
        if profile:
            instrument(rep, timing)
        step = rep.deliver_next if mode == "serial" else rep.deliver_batch
        t = time.perf_counter()
        while True:
            outcome = step()
            if outcome == "empty":
                break
            if outcome not in ("ok", "dropped"):
                raise RuntimeError(f"delivery failed ({outcome}): {rep.backlog()['lastError']}")
        drain_s = time.perf_counter() - t
        assert rep.queue.pending() == 0
    finally:
        rep.close()
        api.close()
    result: Dict[str, Any] = {
        "mode": mode,
        "jobs": jobs,
        "items": items,
        "enqueueS": round(enqueue_s, 3),
        "enqueueItemsPerS": round(items / enqueue_s, 1),
        "drainS": round(drain_s, 3),
        "itemsPerS": round(items / drain_s, 1),
    }
    if profile:
        result["profile"] = {
            name: {"seconds": round(s, 3), "calls": timing.calls[name]}
            for name, s in timing.seconds.items()
        }
        result["profile"]["other"] = {"seconds": round(drain_s - sum(timing.seconds.values()), 3)}
    return result


def server_jobs(cp_db: Path) -> Dict[str, int]:
    con = sqlite3.connect(f"file:{cp_db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    finally:
        con.close()
    return {str(s): int(n) for s, n in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200, help="jobs queued per mode")
    ap.add_argument("--logs", type=int, default=3, help="log batches per job")
    ap.add_argument("--modes", default="serial,batched", help="comma-separated: serial, batched")
    ap.add_argument("--profile", action="store_true", help="time HTTP vs outbox commits")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    args = ap.parse_args()

    import shutil

    work = Path(tempfile.mkdtemp(prefix="ba-outbox-bench-"))
    server, url, cp_db = start_server(work)
    results: List[Dict[str, Any]] = []
    try:
        key = register(url, cp_db)
        for mode in args.modes.split(","):
            r = run_mode(mode.strip(), url, key, work, args.jobs, args.logs, args.profile)
            results.append(r)
            line = (
                f"{r['mode']:>8}: {r['items']} items in {r['drainS']:.2f} s = "
                f"{r['itemsPerS']:.0f} items/s (enqueue {r['enqueueItemsPerS']:.0f} items/s)"
            )
            if "profile" in r:
                line += "  " + ", ".join(
                    f"{k} {v['seconds']:.2f}s" + (f"/{v['calls']}" if "calls" in v else "")
                    for k, v in r["profile"].items()
                )
            print(line, flush=True)
        completed = server_jobs(cp_db).get("completed", 0)
        expected = args.jobs * len(results)
        print(f"control plane: {completed} of {expected} jobs completed")
        if completed != expected:
            print("FAIL: not every job arrived completed")
            return 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
