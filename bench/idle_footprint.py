#!/usr/bin/env python3
"""Idle daemon footprint: RSS and CPU of `backupagent run` over a minute.

Starts the reference control plane in its own process (so its cost is not
counted), registers a throwaway agent, gives it a config with schedules that
will not fire during the run, then samples the agent process with psutil.

    python bench/idle_footprint.py [--duration 60] [--interval 60]

Targets (docs/performance.md): RSS <= 60 MB, CPU <= 0.2 % averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds to sample")
    ap.add_argument("--interval", type=float, default=60.0, help="agent heartbeat interval")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ba-idle-"))
    db = work / "cp.db"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "backupagent.controlplane.cli", "serve", "--db", str(db),
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = None
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 20
        while True:
            try:
                import requests

                requests.get(url + "/api/v1/health", timeout=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        token = subprocess.run(
            [sys.executable, "-m", "backupagent.controlplane.cli", "token", "create", "--db",
             str(db)], env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
        aenv = dict(env, BACKUPAGENT_CONFIG_DIR=str(work / "etc"),
                    BACKUPAGENT_STATE_DIR=str(work / "state"), BACKUPAGENT_LOG_FORMAT="json")
        subprocess.run([sys.executable, "-m", "backupagent", "register", "--token", "-",
                        "--server", url], input=token, text=True, env=aenv, check=True,
                       capture_output=True)
        agent_id = (work / "etc" / "agent.yaml").read_text().split("agentId:")[1].split()[0]
        cfg = {
            "schedules": [{
                "id": f"s{i}", "databaseId": f"d{i}", "targetId": "t", "cron": "0 3 1 1 *",
                "timezone": "UTC", "enabled": True,
                "database": {"id": f"d{i}", "dbType": "postgresql", "host": "localhost",
                             "port": "5432", "databaseName": f"db{i}"},
            } for i in range(10)],
            "targets": [{"id": "t", "type": "local", "path": str(work / "backups")}],
            "alertChannels": [],
        }
        (work / "cfg.json").write_text(json.dumps(cfg))
        subprocess.run([sys.executable, "-m", "backupagent.controlplane.cli", "config", "set",
                        "--db", str(db), "--agent", agent_id, str(work / "cfg.json")],
                       env=env, check=True, capture_output=True)
        agent = subprocess.Popen(
            [sys.executable, "-m", "backupagent", "run", "--heartbeat-interval",
             str(args.interval)], env=aenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(agent.pid)
        time.sleep(5)  # start-up (imports, first heartbeat, discovery) is not idle
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < args.duration:
            rss_samples.append(proc.memory_info().rss)
            time.sleep(1)
        cpu1 = proc.cpu_times()
        elapsed = time.monotonic() - t0
        cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        result = {
            "durationS": round(elapsed, 1),
            "heartbeatIntervalS": args.interval,
            "rssMaxMB": round(max(rss_samples) / 2**20, 1),
            "rssMeanMB": round(sum(rss_samples) / len(rss_samples) / 2**20, 1),
            "cpuPercent": round(100 * cpu_s / elapsed, 3),
            "threads": proc.num_threads(),
            "python": sys.version.split()[0],
        }
        print(json.dumps(result, indent=2))
        ok = result["rssMaxMB"] <= 60 and result["cpuPercent"] <= 0.2
        print("within targets (RSS <= 60 MB, CPU <= 0.2 %):", "yes" if ok else "NO")
        return 0 if ok else 1
    finally:
        for p in (agent, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    sys.exit(main())
