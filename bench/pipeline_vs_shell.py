#!/usr/bin/env python3
"""Benchmark: the agent's backup pipeline against the best shell pipeline.

    python bench/pipeline_vs_shell.py [--size-mb 1000] [--reps 3] [--source pg|file]

Side by side in one run, alternating order each repetition (the machine may
be shared, so both see the same noise):

- shell: ``pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY > file``
- agent: ``run_backup_pipeline(ProcessSource(pg_dump ...), LocalTarget writer)``
  in a fresh Python process (so its peak RSS is its own), committed.

``--source pg`` (default) starts a throwaway PostgreSQL cluster and fills it
with ~``--size-mb`` of dump data; ``--source file`` streams a generated file
through ``cat`` instead (faster to set up, same pipeline). Reports wall times
(median, min), the ratio agent/shell, CPU seconds, and peak RSS of the agent
process versus the largest shell process. Not a test: numbers, not verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILL_SQL = """
CREATE TABLE IF NOT EXISTS bench (id bigint, customer text, amount numeric(12,2),
                                  created timestamptz, note text);
INSERT INTO bench
SELECT g, 'customer ' || (g % 100000), (g % 100000) / 7.0,
       timestamptz '2024-01-01' + g * interval '1 second',
       md5(g::text) || ' ' || CASE WHEN g % 3 = 0 THEN 'shipped' ELSE 'pending' END
FROM generate_series({start}, {stop}) g;
"""
ROW_BYTES = 110  # dump bytes per row of FILL_SQL, measured


def _children_usage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_CHILDREN)


def agent_main(argv: List[str]) -> None:
    """Child mode: run one agent backup, print a JSON line with its figures."""
    from backupagent.pipeline.run import run_backup_pipeline
    from backupagent.pipeline.source import ProcessSource
    from backupagent.targets.local import LocalTarget

    spec = json.loads(argv[0])
    target = LocalTarget(spec["dir"])
    t0 = time.perf_counter()
    with target.open_writer(spec["key"]) as writer:
        res = run_backup_pipeline(
            ProcessSource(spec["argv"], spec["env"]),
            writer,
            level=3,
            recipients=[spec["recipient"]],
        )
        writer.commit()
    elapsed = time.perf_counter() - t0
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(
        json.dumps(
            {
                "pipeline_s": elapsed,
                "agent_rss_mb": self_rss,
                "dump_tool_rss_mb": child_rss,
                "dump_size": res.dump_size,
                "stored_size": res.stored_size,
                "durations_ms": res.durations_ms,
            }
        )
    )


def start_postgres(base: str):
    """A throwaway cluster via the test fixtures' helper (same recipe as the tests)."""
    import pytest  # noqa: F401  (the helper raises pytest's skip on a missing binary)

    from tests.servers import port_open, wait_for
    from tests.servers.postgres import _start_postgres

    proc, server = _start_postgres(base)
    wait_for(lambda: port_open(server.port), 60, "PostgreSQL")
    wait_for(lambda: server.psql("SELECT 1").strip() == "1", 60, "PostgreSQL queries")
    return proc, server


def fill(server, db: str, size_mb: int) -> int:
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    step = 1_000_000
    for start in range(1, rows + 1, step):
        server.psql(
            FILL_SQL.format(start=start, stop=min(rows, start + step - 1)), db, timeout=3600
        )
    server.psql("VACUUM ANALYZE bench", db, timeout=3600)
    return rows


def run_shell(dump_argv: List[str], env: Dict[str, str], recipient: str, out: Path) -> dict:
    script = '"$@" | zstd -3 -T0 -q | age -r "$BENCH_RECIPIENT" > "$BENCH_OUT"'
    env = dict(env, BENCH_RECIPIENT=recipient, BENCH_OUT=str(out))
    before = _children_usage()
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script, "sh", *dump_argv], env=env, check=True)
    wall = time.perf_counter() - t0
    after = _children_usage()
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "size": out.stat().st_size,
    }


def run_agent(dump_argv: List[str], env: Dict[str, str], recipient: str, outdir: Path) -> dict:
    spec = {
        "argv": dump_argv,
        "env": env,
        "recipient": recipient,
        "dir": str(outdir),
        "key": "bench/agent.dump.zst.age",
    }
    before = _children_usage()
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, __file__, "--agent-child", json.dumps(spec)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = _children_usage()
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["wall_s"] = wall
    info["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return info


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--agent-child":
        agent_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000, help="approximate dump size")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--source", choices=["pg", "file"], default="pg")
    ap.add_argument("--workdir", default=None, help="where to put data (default: a temp dir)")
    args = ap.parse_args()
    for tool in ("zstd", "age", "age-keygen"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install zstd age")

    base = Path(args.workdir or tempfile.mkdtemp(prefix="ba-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    key = base / "key.txt"
    if not key.exists():
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()

    pg_proc = None
    pg_base = None
    try:
        if args.source == "pg":
            pg_base = tempfile.mkdtemp(prefix="ba-bench-pg-")
            pg_proc, server = start_postgres(pg_base)
            db = server.create_database("bench")
            t = time.perf_counter()
            rows = fill(server, db, args.size_mb)
            print(f"filled {rows} rows in {time.perf_counter() - t:.0f}s", flush=True)
            from tests.servers.postgres import _find_pg_binary

            pg_dump = _find_pg_binary("pg_dump") or "pg_dump"
            dump_argv = [pg_dump, "-Fc", "-Z0", "--no-password", f"--dbname={db}"]
            env = server.env(db)
        else:
            data = base / "data.txt"
            if not data.exists() or data.stat().st_size < args.size_mb * 1024 * 1024:
                gen = (
                    "import os, sys, random\n"
                    "r = random.Random(1); w = sys.stdout.buffer.write; n = 0\n"
                    f"while n < {args.size_mb} * 1048576:\n"
                    "    b = b''.join(b'%d\\tcustomer %d\\t%s\\t%.2f\\n' % (i, i % 977,"
                    " os.urandom(8).hex().encode(), r.random() * 1000)"
                    " for i in range(n, n + 5000))\n"
                    "    w(b); n += len(b)\n"
                )
                with open(data, "wb") as f:
                    subprocess.run([sys.executable, "-c", gen], stdout=f, check=True)
            dump_argv = ["cat", str(data)]
            env = dict(os.environ)

        results: Dict[str, List[dict]] = {"shell": [], "agent": []}
        for rep in range(args.reps):
            order = ["shell", "agent"] if rep % 2 == 0 else ["agent", "shell"]
            for which in order:
                outdir = base / f"out-{which}"
                shutil.rmtree(outdir, ignore_errors=True)
                outdir.mkdir()
                if which == "shell":
                    r = run_shell(dump_argv, env, recipient, outdir / "shell.dump.zst.age")
                else:
                    r = run_agent(dump_argv, env, recipient, outdir)
                results[which].append(r)
                extra = (
                    f" agent RSS {r['agent_rss_mb']} MB, stages {r['durations_ms']}"
                    if which == "agent"
                    else ""
                )
                print(
                    f"rep {rep + 1} {which:5s}: {r['wall_s']:.2f}s wall, {r['cpu_s']:.2f}s CPU"
                    + extra,
                    flush=True,
                )
                shutil.rmtree(outdir, ignore_errors=True)

        def med(which: str, k: str) -> float:
            return statistics.median(r[k] for r in results[which])

        def low(which: str, k: str) -> float:
            return min(r[k] for r in results[which])

        dump_size = results["agent"][-1]["dump_size"]
        print()
        print(f"dump size {dump_size / 1e9:.2f} GB, {args.reps} repetitions, source={args.source}")
        for which in ("shell", "agent"):
            print(
                f"  {which:5s}: median {med(which, 'wall_s'):.2f}s, "
                f"min {low(which, 'wall_s'):.2f}s, CPU median {med(which, 'cpu_s'):.2f}s"
            )
        print(
            f"  ratio agent/shell: median {med('agent', 'wall_s') / med('shell', 'wall_s'):.3f}, "
            f"best-of {low('agent', 'wall_s') / low('shell', 'wall_s'):.3f}"
        )
        print(
            f"  peak RSS: agent process {max(r['agent_rss_mb'] for r in results['agent'])} MB "
            f"(dump tool {max(r['dump_tool_rss_mb'] for r in results['agent'])} MB)"
        )
    finally:
        if pg_proc is not None:
            pg_proc.send_signal(signal.SIGINT)
            pg_proc.wait(timeout=60)
        if pg_base is not None:
            shutil.rmtree(pg_base, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
