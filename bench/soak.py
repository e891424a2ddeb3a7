#!/usr/bin/env python3
"""Soak: the real daemon under many schedules and a compressed clock.

Starts the reference control plane in its own process, registers a throwaway
agent with ``maxConcurrentJobs`` (default 2) and a short heartbeat, and gives
it many schedules (default 200) over a few small SQLite databases, every one
``* * * * *``: each minute fires every schedule at once, so a 10-minute run is
2000 scheduled backups, far more work per minute than a real host sees. That
compressed clock is what makes leaks and unbounded queues show within minutes.

While it runs the agent process is sampled with psutil (RSS, threads, open
fds, child processes) along with the job journal (jobs running now) and the
outbox backlog. Afterwards the daemon's own JSON log gives each backup's start
and end ("started as job" / "completed" / "failed"), from which the maximum
overlap is computed, and APScheduler's warnings give the fires that were
skipped because the schedule's previous run had not finished (max_instances=1)
or missed. Every fire is accounted for: ran, skipped or missed.

    python bench/soak.py [--minutes 10] [--schedules 200] [--databases 20]
                         [--max-jobs 2] [--heartbeat 1.5] [--out soak.json]

Pass/fail (exit 1 on any failure): RSS flat, i.e. growth from the settled
level to the end (the median of the last minute) under 3 %. The settled
level is the median of the minute when every bounded cache has filled: the
anomaly baselines (the latest 200 sizes of each database) take
200 x databases / schedules minutes under this compressed clock, 20 in the
default run; runs shorter than twice that compare from minute 5 (2 under 8
minutes), while the baselines are still filling. threads and fds flat (end
within +2 of the settled level; thread peaks at most 3 per running job above
it); the outbox backlog not growing (its last-minute median no higher than
at the settled level, plus 10 % and 20 items of slack); observed concurrency
never above the limit, no failed job, every fire accounted for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SKIPPED_MARK = "maximum number of running instances reached"
MISSED_MARK = "was missed by"
SHUTDOWN_MARK = "not starting schedule"
# Threads one running backup may add: pipeline-read, pipeline-upload, one spare.
THREADS_PER_JOB = 3
RSS_FLAT_PCT = 3.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def make_databases(directory: Path, count: int, rows: int) -> List[Path]:
    """Small but real SQLite files (a few tables, ``rows`` rows each)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"app{i:02d}.db"
        con = sqlite3.connect(path)
        con.executescript(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, total REAL);"
            "CREATE INDEX orders_user ON orders (user_id);"
        )
        con.executemany("INSERT INTO users (name) VALUES (?)", [(f"u{n}",) for n in range(rows)])
        con.executemany(
            "INSERT INTO orders (user_id, total) VALUES (?, ?)",
            [(n % 50, n * 1.5) for n in range(rows)],
        )
        con.commit()
        con.close()
        paths.append(path)
    return paths


def config_doc(
    dbs: List[Path], schedules: int, backups: Path, keep_last: int, cron: str = "* * * * *"
) -> Dict[str, Any]:
    """``schedules`` schedules spread round-robin over ``dbs``, all on ``cron``."""
    items = []
    for i in range(schedules):
        db = dbs[i % len(dbs)]
        items.append(
            {
                "id": f"soak-{i:03d}",
                "databaseId": f"db-{i % len(dbs):02d}",
                "targetId": "local",
                "cron": cron,
                "timezone": "UTC",
                "enabled": True,
                "database": {
                    "id": f"db-{i % len(dbs):02d}",
                    "dbType": "sqlite",
                    "databaseName": str(db),
                },
                "retention": {"keepLast": keep_last},
                "compression": {"algorithm": "zstd", "level": 3},
                "verification": {"enabled": False},
            }
        )
    return {
        "schedules": items,
        "targets": [{"id": "local", "type": "local", "path": str(backups)}],
        "alertChannels": [],
    }


# -- reading the daemon's log ----------------------------------------------------


def read_log(path: Path) -> List[Dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"msg": line, "level": "raw"}
        if isinstance(rec, dict):
            out.append(rec)
    return out


def job_intervals(records: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """jobId -> {start, end, status} from the backup job's own log lines."""
    jobs: Dict[str, Dict[str, Any]] = {}
    for rec in records:
        job_id = rec.get("jobId")
        msg = str(rec.get("msg", ""))
        if not job_id or "ts" not in rec or not msg.startswith("backup "):
            continue
        entry = jobs.setdefault(str(job_id), {"start": None, "end": None, "status": None})
        when = parse_ts(str(rec["ts"]))
        if " started as job " in msg:
            entry["start"] = when
        elif " completed: " in msg:
            entry["end"], entry["status"] = when, "completed"
        elif " failed (" in msg:
            entry["end"], entry["status"] = when, "failed"
    return jobs


def max_overlap(intervals: List[Tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    events = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def scheduler_notes(records: List[Dict[str, Any]]) -> Dict[str, int]:
    skipped = sum(1 for r in records if SKIPPED_MARK in str(r.get("msg", "")))
    missed = sum(1 for r in records if MISSED_MARK in str(r.get("msg", "")))
    shutdown = sum(1 for r in records if SHUTDOWN_MARK in str(r.get("msg", "")))
    return {"skipped": skipped, "missed": missed, "notStartedAtShutdown": shutdown}


def fires_between(t0: float, t1: float) -> int:
    """Whole-minute boundaries in (t0, t1]: how often ``* * * * *`` fired."""
    return int(t1 // 60) - int(t0 // 60)


# -- sampling ----------------------------------------------------------------------


def sample(proc: psutil.Process, state_dir: Path) -> Dict[str, Any]:
    from backupagent.report.outbox import read_backlog

    with proc.oneshot():
        rss = proc.memory_info().rss
        threads = proc.num_threads()
        fds = proc.num_fds()
    children = len(proc.children(recursive=True))
    running_dir = state_dir / "running"
    running = len(list(running_dir.glob("*.json"))) if running_dir.is_dir() else 0
    backlog = read_backlog(state_dir) or {}
    return {
        "t": time.time(),
        "rssMB": round(rss / 2**20, 2),
        "threads": threads,
        "fds": fds,
        "children": children,
        "journalRunning": running,
        "outboxPending": backlog.get("pending"),
    }


def level_at(samples: List[Dict[str, Any]], key: str, since: float) -> Any:
    """Median of ``key`` over the minute from ``since``: a level, not a spike.

    Samples without a value (the outbox before its file exists) are left out.
    """
    window = sorted(s[key] for s in samples if since <= s["t"] < since + 60 and s[key] is not None)
    return window[len(window) // 2] if window else samples[0][key]


def tail_level(samples: List[Dict[str, Any]], key: str) -> Any:
    end = samples[-1]["t"]
    window = sorted(s[key] for s in samples if s["t"] >= end - 60 and s[key] is not None)
    return window[len(window) // 2] if window else samples[-1][key]


# -- finding a leak (a dev run, not the measurement) ---------------------------------

# What both dev wrappers below share: they run the daemon in-process (argv
# after DIR is the agent's) with glibc's and SQLite's counters at hand.
_WRAPPER_PRELUDE = """
import ctypes, ctypes.util, json, runpy, sys, threading, time
out = sys.argv[1]
sys.argv = ["backupagent"] + sys.argv[2:]

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
sqlite.sqlite3_memory_used.restype = ctypes.c_int64
"""

# Runs the daemon with tracemalloc on and a thread that dumps a snapshot every
# minute: minute-5 against the last one shows what grows per schedule or job.
TRACEMALLOC_WRAPPER = (
    _WRAPPER_PRELUDE
    + """
import tracemalloc
tracemalloc.start(8)

def dump():
    n = 0
    while True:
        time.sleep(60)
        n += 1
        tracemalloc.take_snapshot().dump(f"{out}/minute-{n:02d}.snap")
        mi = libc.mallinfo2()
        with open(f"{out}/memory.jsonl", "a") as fh:
            fh.write(json.dumps({
                "minute": n,
                "pythonTracedMB": tracemalloc.get_traced_memory()[0] / 2**20,
                "sqliteMB": sqlite.sqlite3_memory_used() / 2**20,
                "mallocInUseMB": (mi.uordblks + mi.hblkhd) / 2**20,
                "mallocFreeHeldMB": mi.fordblks / 2**20,
                "mallocArenaMB": mi.arena / 2**20,
                "threads": threading.active_count(),
            }) + "\\n")
threading.Thread(target=dump, name="tracemalloc-dump", daemon=True).start()
runpy.run_module("backupagent", run_name="__main__", alter_sys=True)
"""
)


# Where the daemon's RSS is, once a minute, without tracemalloc's overhead:
# Python's allocated blocks, pymalloc's arenas (the daemon's 1 MiB anonymous
# mappings: CPython 3.10+ allocates each arena as one), glibc's heap and
# bytes in use, SQLite's memory, and the resident size of each kind of
# mapping. Growth in "arenas RSS" while blocks stay flat is fragmentation
# inside pymalloc (pools touched for the first time), not a leak.
HEAP_STATS_WRAPPER = (
    _WRAPPER_PRELUDE
    + """

def mappings():
    kb = {"heapRssMB": 0, "arenasRssMB": 0, "arenas": 0, "otherAnonRssMB": 0, "fileRssMB": 0}
    kind = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                name = parts[5] if len(parts) > 5 else ""
                if name == "[heap]":
                    kind = "heapRssMB"
                elif name:
                    kind = "fileRssMB"
                elif hi - lo == 1 << 20:
                    kind = "arenasRssMB"
                    kb["arenas"] += 1
                else:
                    kind = "otherAnonRssMB"
            elif parts[0] == "Rss:":
                kb[kind] += int(parts[1])
    return {k: (v if k == "arenas" else round(v / 1024, 3)) for k, v in kb.items()}

def dump():
    n = 0
    while True:
        time.sleep(60)
        n += 1
        mi = libc.mallinfo2()
        with open(f"{out}/heap.jsonl", "a") as fh:
            fh.write(json.dumps({
                "minute": n,
                "pythonBlocks": sys.getallocatedblocks(),
                "sqliteMB": round(sqlite.sqlite3_memory_used() / 2**20, 3),
                "mallocInUseMB": round((mi.uordblks + mi.hblkhd) / 2**20, 3),
                "mallocFreeHeldMB": round(mi.fordblks / 2**20, 3),
                "threads": threading.active_count(),
                **mappings(),
            }) + "\\n")
threading.Thread(target=dump, name="heap-stats", daemon=True).start()
runpy.run_module("backupagent", run_name="__main__", alter_sys=True)
"""
)


def compare_snapshots(old: Path, new: Path, top: int = 15) -> None:
    import tracemalloc

    a = tracemalloc.Snapshot.load(str(old))
    b = tracemalloc.Snapshot.load(str(new))
    total = sum(s.size for s in b.statistics("filename")) - sum(
        s.size for s in a.statistics("filename")
    )
    print(f"traced Python memory {total / 1024:+.0f} KiB from {old.name} to {new.name}")
    for stat in b.compare_to(a, "traceback")[:top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-6:]:
            print("    " + line)


# -- the run ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to soak")
    ap.add_argument("--schedules", type=int, default=200)
    ap.add_argument("--databases", type=int, default=20)
    ap.add_argument("--rows", type=int, default=20000, help="rows per table per database")
    ap.add_argument("--max-jobs", type=int, default=2, help="maxConcurrentJobs")
    ap.add_argument("--heartbeat", type=float, default=1.5, help="heartbeat interval (s)")
    ap.add_argument("--keep-last", type=int, default=3, help="retention keepLast per schedule")
    ap.add_argument("--sample", type=float, default=3.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument(
        "--tracemalloc",
        type=Path,
        metavar="DIR",
        help="dev run: trace the agent's allocations and write a snapshot to DIR each "
        "minute (slows the agent; compare with bench/soak.py --compare-snapshots)",
    )
    ap.add_argument(
        "--settled-minute",
        type=float,
        metavar="N",
        help="compare the end with the median of minute N (default: when the "
        "history baselines are full, if the run is twice as long; else 5)",
    )
    ap.add_argument(
        "--heap-stats",
        type=Path,
        metavar="DIR",
        help="write where the agent's RSS is (pymalloc arenas, glibc heap, SQLite, "
        "Python blocks) to DIR/heap.jsonl each minute; cheap, unlike --tracemalloc",
    )
    ap.add_argument(
        "--compare-snapshots",
        nargs=2,
        type=Path,
        metavar=("OLD", "NEW"),
        help="print the allocation sites that grew most between two snapshots, then exit",
    )
    args = ap.parse_args()
    if args.compare_snapshots:
        compare_snapshots(*args.compare_snapshots)
        return 0

    work = Path(tempfile.mkdtemp(prefix="ba-soak-"))
    cp_db = work / "cp.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server_log = open(work / "server.log", "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [sys.executable, "-m", "backupagent.controlplane.cli", "serve", "--db", str(cp_db),
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=server_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    agent: Optional[subprocess.Popen] = None
    agent_log_path = work / "agent.log"
    try:
        import requests

        deadline = time.time() + 30
        while True:
            try:
                requests.get(url + "/api/v1/health", timeout=1)
                break
            except requests.RequestException:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the control plane did not start") from None
                time.sleep(0.2)
        token = subprocess.run(
            [sys.executable, "-m", "backupagent.controlplane.cli", "token", "create", "--db",
             str(cp_db)], env=env, capture_output=True, text=True, check=True,
        ).stdout.split()[-1]  # fmt: skip
        state_dir = work / "state"
        aenv = dict(
            env,
            BACKUPAGENT_CONFIG_DIR=str(work / "etc"),
            BACKUPAGENT_STATE_DIR=str(state_dir),
            BACKUPAGENT_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
        )
        aenv.pop("BACKUPAGENT_SERVER", None)
        subprocess.run(
            [sys.executable, "-m", "backupagent", "register", "--token", "-", "--server", url],
            input=token, text=True, env=aenv, check=True, capture_output=True,
        )  # fmt: skip
        agent_yaml = work / "etc" / "agent.yaml"
        agent_id = agent_yaml.read_text().split("agentId:")[1].split()[0].strip("'\"")
        with agent_yaml.open("a") as f:
            f.write(f"\nmaxConcurrentJobs: {args.max_jobs}\nheartbeatInterval: {args.heartbeat}\n")
        dbs = make_databases(work / "dbs", args.databases, args.rows)
        cfg = config_doc(dbs, args.schedules, work / "backups", args.keep_last)
        (work / "cfg.json").write_text(json.dumps(cfg))
        subprocess.run(
            [sys.executable, "-m", "backupagent.controlplane.cli", "config", "set", "--db",
             str(cp_db), "--agent", agent_id, str(work / "cfg.json")],
            env=env, check=True, capture_output=True,
        )  # fmt: skip

        agent_log = open(agent_log_path, "w")  # noqa: SIM115 (closed with the process)
        argv = [sys.executable, "-m", "backupagent", "run"]
        if args.tracemalloc:
            args.tracemalloc.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-c", TRACEMALLOC_WRAPPER, str(args.tracemalloc), "run"]
        elif args.heap_stats:
            args.heap_stats.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-c", HEAP_STATS_WRAPPER, str(args.heap_stats), "run"]
        agent = subprocess.Popen(argv, env=aenv, stdout=agent_log, stderr=subprocess.STDOUT)
        proc = psutil.Process(agent.pid)
        t_start = time.time()
        t_end = t_start + args.minutes * 60
        samples: List[Dict[str, Any]] = []
        print(f"soaking {args.minutes:g} min: {args.schedules} schedules x '* * * * *', "
              f"maxConcurrentJobs {args.max_jobs}, work dir {work}", flush=True)  # fmt: skip
        next_print = t_start + 60
        while time.time() < t_end:
            if agent.poll() is not None:
                raise RuntimeError(
                    f"the agent exited early ({agent.returncode}); see {agent_log_path}"
                )
            samples.append(sample(proc, state_dir))
            if time.time() >= next_print:
                s = samples[-1]
                print(f"  +{(s['t'] - t_start) / 60:4.1f} min  RSS {s['rssMB']:6.1f} MB  "
                      f"threads {s['threads']:3d}  fds {s['fds']:3d}  "
                      f"outbox {s['outboxPending']}", flush=True)  # fmt: skip
                next_print += 60
            time.sleep(args.sample)
        t_stop = time.time()
        agent.send_signal(signal.SIGTERM)
        try:
            exit_code = agent.wait(120)
        except subprocess.TimeoutExpired:
            agent.kill()
            exit_code = agent.wait(10)
        agent_log.close()
        result = analyse(args, samples, read_log(agent_log_path), t_start, t_stop, exit_code)
        result["controlPlane"] = control_plane_jobs(cp_db)
        if args.heap_stats and (args.heap_stats / "heap.jsonl").exists():
            lines = (args.heap_stats / "heap.jsonl").read_text().splitlines()
            result["heap"] = [json.loads(line) for line in lines if line.strip()]
        result["workDir"] = str(work)
    finally:
        for p in (agent, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        server_log.close()

    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep and result["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["ok"] else 1


def control_plane_jobs(cp_db: Path) -> Dict[str, int]:
    """What the control plane heard (after the agent's outbox was flushed at stop)."""
    con = sqlite3.connect(f"file:{cp_db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    finally:
        con.close()
    return {str(status): int(n) for status, n in rows}


def history_warmup_minutes(schedules: int, databases: int) -> int:
    """When every database's anomaly baseline holds its most samples.

    Each backup reads its database's latest ``max_samples`` sizes from the
    history (docs/anomalies.md), so what a backup reads grows until the
    history holds that many. The compressed clock gives each database
    schedules/databases backups a minute: 200 samples take 20 minutes in
    the default soak, 8 days with an hourly schedule.
    """
    from backupagent.analysis.anomalies import DEFAULT_THRESHOLDS

    per_minute = max(1.0, schedules / max(1, databases))
    return math.ceil(DEFAULT_THRESHOLDS.max_samples / per_minute) + 1


def settled_minute(args: argparse.Namespace) -> int:
    """The minute whose median RSS the end is compared with.

    After glibc's arenas, SQLite's page caches and the history baselines
    have filled (``history_warmup_minutes``), when the run is at least twice
    that long; otherwise minute 5 (2 in runs under 8 minutes), where only
    the first of those has.
    """
    if args.settled_minute is not None:
        return int(args.settled_minute)
    warm = history_warmup_minutes(args.schedules, args.databases)
    if args.minutes >= 2 * warm:
        return warm
    return 5 if args.minutes >= 8 else 2 if args.minutes > 3 else 0


def analyse(
    args: argparse.Namespace,
    samples: List[Dict[str, Any]],
    records: List[Dict[str, Any]],
    t_start: float,
    t_stop: float,
    exit_code: int,
) -> Dict[str, Any]:
    jobs = job_intervals(records)
    finished = [j for j in jobs.values() if j["start"] is not None and j["end"] is not None]
    unfinished = [j for j in jobs.values() if j["start"] is not None and j["end"] is None]
    intervals = [(j["start"], j["end"]) for j in finished]
    intervals += [(j["start"], t_stop) for j in unfinished]
    overlap = max_overlap(intervals)
    notes = scheduler_notes(records)
    fires = fires_between(t_start, t_stop) * args.schedules
    started = sum(1 for j in jobs.values() if j["start"] is not None)
    accounted = started + notes["skipped"] + notes["missed"] + notes["notStartedAtShutdown"]
    failed = sum(1 for j in finished if j["status"] == "failed")
    durations = sorted(j["end"] - j["start"] for j in finished)

    per_minute: List[Dict[str, Any]] = []
    minute0 = int(t_start // 60)
    for m in range(minute0, int(t_stop // 60) + 1):
        lo, hi = m * 60, m * 60 + 60
        per_minute.append(
            {
                "minute": dt.datetime.fromtimestamp(lo, dt.timezone.utc).strftime("%H:%M"),
                "started": sum(1 for j in jobs.values() if j["start"] and lo <= j["start"] < hi),
                "completed": sum(
                    1 for j in finished if j["status"] == "completed" and lo <= j["end"] < hi
                ),
                "failed": sum(
                    1 for j in finished if j["status"] == "failed" and lo <= j["end"] < hi
                ),
                "maxConcurrent": max_overlap(
                    [(max(a, lo), min(b, hi)) for a, b in intervals if a < hi and b > lo]
                ),
            }
        )

    settle = settled_minute(args)
    since = t_start + settle * 60
    rss_ref, rss_end = level_at(samples, "rssMB", since), tail_level(samples, "rssMB")
    thr_ref, thr_end = level_at(samples, "threads", since), tail_level(samples, "threads")
    fds_ref, fds_end = level_at(samples, "fds", since), tail_level(samples, "fds")
    growth = (rss_end - rss_ref) / rss_ref * 100 if rss_ref else 0.0
    backlog_ref = level_at(samples, "outboxPending", since) or 0
    backlog_end = tail_level(samples, "outboxPending") or 0
    checks = {
        "rssFlatUnder3pct": growth < RSS_FLAT_PCT,
        "outboxBacklogNotGrowing": backlog_end <= backlog_ref * 1.1 + 20,
        # A running backup has its own reader/uploader threads (and zstd's),
        # so the level must stay flat and the peaks bounded by the job limit.
        "threadsFlat": thr_end <= thr_ref + 2
        and max(s["threads"] for s in samples) <= thr_ref + THREADS_PER_JOB * args.max_jobs,
        "fdsFlat": fds_end <= fds_ref + 2,
        "concurrencyWithinLimit": overlap <= args.max_jobs,
        "journalWithinLimit": max(s["journalRunning"] for s in samples) <= args.max_jobs,
        "noFailedJobs": failed == 0,
        "everyFireAccountedFor": accounted == fires,
        "cleanExit": exit_code == 0,
    }
    return {
        "date": dt.date.today().isoformat(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "minutes": round((t_stop - t_start) / 60, 2),
        "schedules": args.schedules,
        "databases": args.databases,
        "maxConcurrentJobs": args.max_jobs,
        "heartbeatS": args.heartbeat,
        "fires": fires,
        "jobsStarted": started,
        "jobsCompleted": sum(1 for j in finished if j["status"] == "completed"),
        "jobsFailed": failed,
        "jobsUnfinishedAtStop": len(unfinished),
        "skippedStillRunning": notes["skipped"],
        "missed": notes["missed"],
        "notStartedAtShutdown": notes["notStartedAtShutdown"],
        "firesAccountedFor": accounted,
        "maxConcurrentObserved": overlap,
        "maxJournalRunningSampled": max(s["journalRunning"] for s in samples),
        "jobDurationS": {
            "p50": round(durations[len(durations) // 2], 3) if durations else None,
            "p95": round(durations[int(len(durations) * 0.95)], 3) if durations else None,
            "max": round(durations[-1], 3) if durations else None,
        },
        "settledMinute": settle,
        "loadavg": os.getloadavg(),
        "rssMB": {
            "settled": rss_ref,
            "end": rss_end,
            "max": max(s["rssMB"] for s in samples),
            "growthPct": round(growth, 2),
        },
        "threads": {"settled": thr_ref, "end": thr_end, "max": max(s["threads"] for s in samples)},
        "fds": {"settled": fds_ref, "end": fds_end, "max": max(s["fds"] for s in samples)},
        "childrenMax": max(s["children"] for s in samples),
        "outboxPendingMax": max((s["outboxPending"] or 0) for s in samples),
        "outboxPending": {"settled": backlog_ref, "end": backlog_end},
        "exitCode": exit_code,
        "perMinute": per_minute,
        "samples": samples,
        "checks": checks,
        "ok": all(checks.values()),
    }


def print_heap(rows: List[Dict[str, Any]]) -> None:
    """Minute 5 against the last minute, per kind of memory (--heap-stats)."""
    if len(rows) < 6:
        return
    first, last = rows[4], rows[-1]
    print(f"\nwhere the RSS is, minute {first['minute']} -> minute {last['minute']}:")
    for key in first:
        if key != "minute":
            delta = last[key] - first[key]
            print(f"  {key:18s} {first[key]:>12} -> {last[key]:>12}  ({delta:+.3f})")


def print_table(r: Dict[str, Any]) -> None:
    if r.get("heap"):
        print_heap(r["heap"])
    print()
    print(f"{'minute':>6}  {'started':>7}  {'completed':>9}  {'failed':>6}  {'max conc':>8}")
    for m in r["perMinute"]:
        print(f"{m['minute']:>6}  {m['started']:>7}  {m['completed']:>9}  {m['failed']:>6}  "
              f"{m['maxConcurrent']:>8}")  # fmt: skip
    print()
    dur, rss = r["jobDurationS"], r["rssMB"]
    rows = [
        ("duration", f"{r['minutes']} min, {r['schedules']} schedules"),
        ("maxConcurrentJobs", r["maxConcurrentJobs"]),
        ("fires", r["fires"]),
        (
            "jobs started / completed / failed",
            f"{r['jobsStarted']} / {r['jobsCompleted']} / {r['jobsFailed']}",
        ),
        (
            "skipped (still running) / missed / not started at stop",
            f"{r['skippedStillRunning']} / {r['missed']} / {r['notStartedAtShutdown']}",
        ),
        ("fires accounted for", r["firesAccountedFor"]),
        ("max concurrent (log intervals)", r["maxConcurrentObserved"]),
        ("max running (journal, sampled)", r["maxJournalRunningSampled"]),
        ("job duration p50 / p95 / max (s)", f"{dur['p50']} / {dur['p95']} / {dur['max']}"),
        (
            f"RSS minute {r['settledMinute']} / end / max (MB)",
            f"{rss['settled']} / {rss['end']} / {rss['max']}  ({rss['growthPct']:+} %)",
        ),
        (
            f"threads minute {r['settledMinute']} / end / max",
            "{settled} / {end} / {max}".format(**r["threads"]),
        ),
        (
            f"fds minute {r['settledMinute']} / end / max",
            "{settled} / {end} / {max}".format(**r["fds"]),
        ),
        ("child processes (max)", r["childrenMax"]),
        (
            f"outbox backlog minute {r['settledMinute']} / end (median) / max",
            "{settled} / {end} / ".format(**r["outboxPending"]) + str(r["outboxPendingMax"]),
        ),
        ("load average 1/5/15 min at the end", r["loadavg"]),
        ("control plane jobs by status", r.get("controlPlane")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print()
    for name, passed in r["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")


if __name__ == "__main__":
    sys.exit(main())
