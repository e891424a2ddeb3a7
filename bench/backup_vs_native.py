#!/usr/bin/env python3
"""Benchmark: the real ``backupagent backup`` CLI against the best native pipelines.

    python bench/backup_vs_native.py [--scale 1] [--reps 5] [--only local|s3|all]
                                     [--workdir DIR] [--keep] [--out result.json]

Issue 3, item 11. In one run, on this machine:

1. Generates a PostgreSQL database (a throwaway cluster on a free port, run as
   the ``postgres`` user like ``tests/servers/postgres.py``): four tables with
   mixed data (ints, text, timestamps, numeric, repeated strings and md5
   noise), about 1 GB of ``pg_dump -Fc -Z0`` output per ``--scale`` unit.
   With ``--workdir DIR --keep`` the cluster and database are kept and reused
   by the next run with the same DIR (generation of 5x takes a while).
2. Times, alternating the order every repetition (the machine is shared, so
   every variant sees the same noise), medians reported:

   - local: ``backupagent backup postgresql://... --to file:///dir -r age1...``
     (the CLI in a fresh process, the password from a 0600
     ``credentials.yaml`` in a temp ``BACKUPAGENT_CONFIG_DIR``) against
     ``pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY > file``.
   - s3 (a local SeaweedFS, ``tests/servers/s3.py``): ``backupagent backup ...
     --to s3://bucket/agent?endpoint=...`` (keys in the standard AWS env
     variables) against the same native pipeline writing a file followed by
     ``aws s3 cp FILE s3://...`` (awscli v1 from PyPI), and the streaming
     variant ``... | age -r KEY | aws s3 cp - s3://...``.
   - peak RSS: the agent process itself (psutil, sampled every 50 ms) and its
     whole process tree (agent + psql + pg_dump, summed per sample); the
     largest single process's exact peak from ``wait4``'s rusage.
3. Prints a table and writes every figure to ``--out`` (JSON), with the load
   average before each run (the machine is shared; it matters).

Not a test: numbers, not verdicts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1_000_000
PG_USER = "postgres"  # both the OS user running the cluster and the superuser

# Rows per scale unit, chosen so that one unit is ~1 GB of ``pg_dump -Fc -Z0``.
ROWS = {"customers": 1_000_000, "orders": 6_000_000, "events": 2_500_000, "products": 50_000}
BATCH = 500_000

SCHEMA_SQL = """
CREATE TABLE customers (id int, name text, email text, country text,
                        created timestamptz, balance numeric(12,2));
CREATE TABLE products (id int, sku text, title text, price numeric(10,2), stock int);
CREATE TABLE orders (id bigint, customer_id int, product_id int, status text,
                     quantity int, amount numeric(12,2), created timestamptz, note text);
CREATE TABLE events (id bigint, ts timestamptz, kind text, payload text);
"""

FILL_SQL = {
    "customers": """
INSERT INTO customers
SELECT g, 'Customer ' || g,
       'user' || g || '@' || (ARRAY['example.com','mail.test','corp.example'])[1 + g % 3],
       (ARRAY['DE','FR','US','GB','NL','ES','IT','PL','SE','JP'])[1 + g % 10],
       timestamptz '2020-01-01' + g * interval '17 seconds',
       ((g * 7919) % 1000000) / 100.0
FROM generate_series({start}::bigint, {stop}::bigint) g;""",
    "products": """
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 8, '0'),
       (ARRAY['Red','Blue','Green','Black','White'])[1 + g % 5] || ' ' ||
       (ARRAY['shirt','mug','lamp','chair','notebook','cable'])[1 + g % 6] || ' model ' || g,
       ((g * 31) % 50000) / 100.0 + 0.99, (g * 17) % 1000
FROM generate_series({start}::bigint, {stop}::bigint) g;""",
    "orders": """
INSERT INTO orders
SELECT g, 1 + (g * 7919) % {customers}, 1 + (g * 104729) % {products},
       (ARRAY['pending','paid','shipped','delivered','cancelled'])[1 + (g * 13) % 5],
       1 + g % 7, ((g * 37) % 100000) / 100.0,
       timestamptz '2022-01-01' + g * interval '3 seconds',
       CASE WHEN g % 4 = 0 THEN 'gift wrap, leave at the door'
            WHEN g % 4 = 1 THEN NULL
            ELSE 'ref ' || substr(md5(g::text), 1, 16) END
FROM generate_series({start}::bigint, {stop}::bigint) g;""",
    "events": """
INSERT INTO events
SELECT g, timestamptz '2024-01-01' + g * interval '250 milliseconds',
       (ARRAY['page_view','click','add_to_cart','checkout','login','logout',
              'search','review','refund','signup'])[1 + (g * 7) % 10],
       '{{"user": ' || (g % 50000) || ', "session": "' || substr(md5((g / 20)::text), 1, 12)
       || '", "path": "/products/' || (g % 5000) || '", "ua": "Mozilla/5.0 (X11; Linux x86_64)"}}'
FROM generate_series({start}::bigint, {stop}::bigint) g;""",
}

POST_SQL = """
ALTER TABLE customers ADD PRIMARY KEY (id);
ALTER TABLE products ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
CREATE INDEX orders_customer ON orders (customer_id);
VACUUM (FREEZE, ANALYZE);
"""


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """A running throwaway PostgreSQL cluster (password in the env, never argv)."""

    proc: subprocess.Popen
    port: int
    password: str
    bin_dir: str
    base: Path

    def env(self, db: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER=PG_USER,
            PGPASSWORD=self.password,
            PGDATABASE=db,
        )
        return env

    def psql(self, sql: str, db: str = "postgres", timeout: float = 7200) -> str:
        argv = [os.path.join(self.bin_dir, "psql"), "-X", "-q", "-A", "-t"]
        argv += ["-v", "ON_ERROR_STOP=1", "-d", db]
        res = subprocess.run(
            argv, input=sql, env=self.env(db), capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql on {db!r} failed ({res.returncode}): {res.stderr[-2000:]}")
        return res.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_cluster(base: Path) -> Cluster:
    """initdb (first time only) and start a cluster under ``base`` as ``postgres``.

    Same recipe as tests/servers/postgres.py (scram over TCP, fsync off), but
    the data directory survives with ``--keep`` so a 5 GB database is not
    generated twice; the password is kept beside it in a 0600 file.
    """
    import pwd

    from tests.servers import free_port, port_open, wait_for
    from tests.servers.postgres import _find_pg_binary

    initdb = _find_pg_binary("initdb")
    if initdb is None:
        sys.exit("initdb not found: apt-get install postgresql")
    bin_dir = os.path.dirname(os.path.realpath(initdb))
    run_as: Dict[str, Any] = {}
    if os.geteuid() == 0:
        run_as = {"user": PG_USER, "group": PG_USER, "extra_groups": []}
    pw = pwd.getpwnam(PG_USER) if run_as else None
    base.mkdir(parents=True, exist_ok=True)
    data_dir, sock_dir, pass_file = base / "data", base / "sock", base / "password"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    if not (data_dir / "PG_VERSION").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        password = "pg-" + secrets.token_hex(12)
        fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        sock_dir.mkdir(mode=0o755, exist_ok=True)
        if pw is not None:
            for p in (base, sock_dir, pass_file):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        argv = [initdb, "-D", str(data_dir), "-U", PG_USER, "--pwfile", str(pass_file)]
        argv += ["-E", "UTF8", "--no-locale", "--auth-local=trust"]
        argv += ["--auth-host=scram-sha-256", "--no-sync"]
        res = subprocess.run(argv, env=env, cwd=base, capture_output=True, text=True, **run_as)
        if res.returncode != 0:
            sys.exit(f"initdb failed: {res.stdout}\n{res.stderr}")
    password = pass_file.read_text().strip()
    port = free_port()
    log = open(base / "postgres.log", "ab")  # noqa: SIM115 - handed to the server
    argv = [os.path.join(bin_dir, "postgres"), "-D", str(data_dir), "-p", str(port)]
    argv += ["-k", str(sock_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    argv += ["-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
    argv += ["-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=30min"]
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=base,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **run_as,
    )
    log.close()
    cluster = Cluster(proc=proc, port=port, password=password, bin_dir=bin_dir, base=base)
    try:
        wait_for(lambda: port_open(port), 60, "PostgreSQL port")
        wait_for(lambda: cluster.psql("SELECT 1").strip() == "1", 60, "PostgreSQL queries")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def generate(cluster: Cluster, db: str, scale: float) -> float:
    """Create and fill ``db`` (two loaders in parallel: the machine has 2 cores)."""
    t0 = time.perf_counter()
    cluster.psql(f'DROP DATABASE IF EXISTS "{db}"')
    cluster.psql(f'CREATE DATABASE "{db}"')
    cluster.psql(SCHEMA_SQL, db)
    rows = {k: max(1, int(v * scale)) for k, v in ROWS.items()}
    jobs = []
    for table in ("products", "customers", "orders", "events"):
        for start in range(1, rows[table] + 1, BATCH):
            stop = min(rows[table], start + BATCH - 1)
            jobs.append(FILL_SQL[table].format(start=start, stop=stop, **rows))
    done = [0]

    def load(sql: str) -> None:
        cluster.psql(sql, db)
        done[0] += 1
        if done[0] % 10 == 0:
            print(f"  loaded {done[0]}/{len(jobs)} batches", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for fut in [pool.submit(load, sql) for sql in jobs]:
            fut.result()
    cluster.psql(POST_SQL, db)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- measuring


class Sampler:
    """Peak memory of a process and of its whole tree, sampled every ``interval`` s.

    ``self_peak``: the process's own high-water mark (``VmHWM`` in
    /proc/PID/status, kept by the kernel since its exec, so exact up to the
    last sample). ``tree_peak``: the largest sum of RSS over the process and
    all its descendants seen in one sample (they peak at different moments,
    so this is what the host really had to hold at once). ``largest_child``:
    the highest VmHWM of any descendant (pg_dump, psql, zstd, age, aws).
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval
        self.self_peak = 0
        self.tree_peak = 0
        self.largest_child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _hwm(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self._proc.memory_info().rss
                hwm = self._hwm(self._proc.pid)
                tree = rss
                for child in self._proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        tree += child.memory_info().rss
                        self.largest_child = max(self.largest_child, self._hwm(child.pid))
            except psutil.Error:
                break
            self.self_peak = max(self.self_peak, rss, hwm)
            self.tree_peak = max(self.tree_peak, tree)
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(argv: List[str], env: Dict[str, str], stdout: Any = None, stderr: Any = None) -> dict:
    """Run ``argv``: wall time, CPU of the whole tree, peak memory (see Sampler)."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    sampler = Sampler(proc.pid)
    # wait4: the CPU time covers the child and every descendant it waited for.
    # (Its ru_maxrss is not used: a child forked from this big process inherits
    # this process's RSS into its high-water mark before it execs.)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rc": proc.returncode,
        "self_rss_mb": sampler.self_peak / MB,
        "tree_rss_mb": sampler.tree_peak / MB,
        "max_proc_rss_mb": max(sampler.self_peak, sampler.largest_child) / MB,
        "load1": load,
    }


def check(r: dict, what: str, err_file: Optional[Path] = None) -> dict:
    if r["rc"] != 0:
        tail = err_file.read_text(errors="replace")[-3000:] if err_file else ""
        raise RuntimeError(f"{what} exited {r['rc']}\n{tail}")
    return r


@dataclass
class Setup:
    cluster: Cluster
    db: str
    dump_argv: List[str]
    recipient: str
    work: Path
    agent_env: Dict[str, str]
    db_url: str
    s3: Any = None
    bucket: str = ""


NATIVE = '"$@" | zstd -3 -T0 -q | age -r "$BENCH_RECIPIENT" > "$BENCH_OUT"'
NATIVE_STREAM = (
    '"$@" | zstd -3 -T0 -q | age -r "$BENCH_RECIPIENT" | '
    'aws s3 cp --only-show-errors --endpoint-url "$BENCH_ENDPOINT" - "$BENCH_URL"'
)


def run_native(s: Setup, out: Path) -> dict:
    env = dict(s.cluster.env(s.db), BENCH_RECIPIENT=s.recipient, BENCH_OUT=str(out))
    r = check(timed(["sh", "-c", NATIVE, "sh", *s.dump_argv], env), "native pipeline")
    r["stored_size"] = out.stat().st_size
    return r


def agent_argv(s: Setup, target_url: str) -> List[str]:
    return [sys.executable, "-m", "backupagent", "backup", s.db_url, "--to", target_url]


def run_agent(s: Setup, target_url: str, env: Dict[str, str], tag: str) -> dict:
    argv = [*agent_argv(s, target_url), "-r", s.recipient, "--json"]
    out_f, err_f = s.work / f"agent-{tag}.out", s.work / f"agent-{tag}.err"
    with open(out_f, "wb") as out, open(err_f, "wb") as err:
        r = check(timed(argv, env, stdout=out, stderr=err), "backupagent backup", err_f)
    res = json.loads(out_f.read_text())
    if res.get("status") != "completed":
        raise RuntimeError(f"agent backup did not complete: {res}")
    r.update(
        dump_size=res["dumpSize"],
        stored_size=res["storedSize"],
        agent_duration_ms=res["durationMs"],
        object_key=res["objectKey"],
    )
    return r


def agent_stages(manifest: Dict[str, Any]) -> Dict[str, int]:
    return dict(manifest.get("timings", {}).get("stagesMs", {}))


def run_local_agent(s: Setup, outdir: Path) -> dict:
    r = run_agent(s, outdir.as_uri(), s.agent_env, "local")
    man = json.loads((outdir / (r["object_key"] + ".manifest.json")).read_text())
    r["stages_ms"] = agent_stages(man)
    return r


def s3_env(s: Setup) -> Dict[str, str]:
    env = {k: v for k, v in s.agent_env.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=s.s3.access_key,
        AWS_SECRET_ACCESS_KEY=s.s3.secret_key,
        AWS_DEFAULT_REGION=s.s3.region,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def run_s3_agent(s: Setup, rep: int) -> dict:
    url = f"s3://{s.bucket}/agent-{rep}?endpoint={s.s3.endpoint_url}"
    r = run_agent(s, url, s3_env(s), "s3")
    client = s.s3.client()
    key = f"agent-{rep}/{r['object_key']}"
    head = client.head_object(Bucket=s.bucket, Key=key)
    assert head["ContentLength"] == r["stored_size"], (head["ContentLength"], r)
    man = client.get_object(Bucket=s.bucket, Key=key + ".manifest.json")["Body"].read()
    r["stages_ms"] = agent_stages(json.loads(man))
    _empty_bucket(s)
    return r


def aws_cli() -> List[str]:
    found = shutil.which("aws")
    if found is None:
        sys.exit("the AWS CLI is needed for the S3 comparison: pip install awscli")
    return [found]


def run_s3_native_file(s: Setup, rep: int) -> dict:
    out = s.work / "native-s3.age"
    first = run_native(s, out)
    env = s3_env(s)
    url = f"s3://{s.bucket}/native-{rep}/backup.dump.zst.age"
    argv = [*aws_cli(), "s3", "cp", "--only-show-errors", "--endpoint-url", s.s3.endpoint_url]
    up = check(timed([*argv, str(out), url], env), "aws s3 cp")
    size = s.s3.client().head_object(Bucket=s.bucket, Key=url.split("/", 3)[3])["ContentLength"]
    assert size == first["stored_size"], (size, first)
    out.unlink()
    _empty_bucket(s)
    return {
        "wall_s": first["wall_s"] + up["wall_s"],
        "pipeline_s": first["wall_s"],
        "upload_s": up["wall_s"],
        "cpu_s": first["cpu_s"] + up["cpu_s"],
        "tree_rss_mb": max(first["tree_rss_mb"], up["tree_rss_mb"]),
        "max_proc_rss_mb": max(first["max_proc_rss_mb"], up["max_proc_rss_mb"]),
        "stored_size": size,
        "load1": first["load1"],
    }


def run_s3_native_stream(s: Setup, rep: int) -> dict:
    url = f"s3://{s.bucket}/stream-{rep}/backup.dump.zst.age"
    env = dict(
        s3_env(s),
        **{k: v for k, v in s.cluster.env(s.db).items() if k.startswith("PG")},
        BENCH_RECIPIENT=s.recipient,
        BENCH_ENDPOINT=s.s3.endpoint_url,
        BENCH_URL=url,
    )
    r = check(timed(["sh", "-c", NATIVE_STREAM, "sh", *s.dump_argv], env), "native stream")
    head = s.s3.client().head_object(Bucket=s.bucket, Key=url.split("/", 3)[3])
    r["stored_size"] = head["ContentLength"]
    _empty_bucket(s)
    return r


def _empty_bucket(s: Setup) -> None:
    client = s.s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s.bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=s.bucket, Key=obj["Key"])


def measure_dump_size(s: Setup) -> dict:
    """``pg_dump -Fc -Z0 | wc -c``: the database's size as the benchmark means it.

    Also warms the page cache, so the first timed repetition is not penalized.
    """
    env = s.cluster.env(s.db)
    t0 = time.perf_counter()
    proc = subprocess.Popen(s.dump_argv, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    n = 0
    while True:
        chunk = proc.stdout.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
    if proc.wait() != 0:
        raise RuntimeError("pg_dump failed")
    return {"dump_bytes": n, "dump_alone_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- reporting


def med(rs: List[dict], k: str) -> float:
    return statistics.median(r[k] for r in rs)


def summarize(results: Dict[str, List[dict]]) -> Dict[str, Any]:
    summ: Dict[str, Any] = {}
    for name, rs in results.items():
        if not rs:
            continue
        summ[name] = {
            "median_wall_s": med(rs, "wall_s"),
            "min_wall_s": min(r["wall_s"] for r in rs),
            "median_cpu_s": med(rs, "cpu_s"),
            "max_tree_rss_mb": max(r.get("tree_rss_mb", 0) for r in rs),
            "max_proc_rss_mb": max(r.get("max_proc_rss_mb", 0) for r in rs),
        }
        if name.startswith("agent"):
            summ[name]["max_agent_rss_mb"] = max(r["self_rss_mb"] for r in rs)
            summ[name]["median_stages_ms"] = {
                k: statistics.median(r["stages_ms"].get(k, 0) for r in rs)
                for k in rs[0]["stages_ms"]
            }
            summ[name]["median_agent_duration_ms"] = med(rs, "agent_duration_ms")
            # where the agent's time goes outside the stream: before pg_dump
            # starts (versions, snapshot, exact counts, schema) and after it
            # (commit, manifest), and the interpreter's start-up and exit
            summ[name]["median_job_outside_pipeline_ms"] = statistics.median(
                r["agent_duration_ms"] - r["stages_ms"].get("total", 0) for r in rs
            )
            summ[name]["median_process_overhead_ms"] = statistics.median(
                r["wall_s"] * 1000 - r["agent_duration_ms"] for r in rs
            )
    pairs = [
        ("local", "agent_local", "native_local"),
        ("s3_vs_file_upload", "agent_s3", "native_s3_file"),
        ("s3_vs_stream", "agent_s3", "native_s3_stream"),
    ]
    ratios = {}
    for label, a, n in pairs:
        if a in summ and n in summ:
            # Paired: each repetition's agent run over its native run. The two
            # run within seconds of each other, so a noisy neighbour that slows
            # a whole repetition cancels out; on a shared machine this is the
            # steadier figure (the ratio of medians mixes different moments).
            paired = [ra["wall_s"] / rn["wall_s"] for ra, rn in zip(results[a], results[n])]
            ratios[label] = {
                "paired_median": statistics.median(paired),
                "paired_min": min(paired),
                "paired_max": max(paired),
                "wins": sum(1 for x in paired if x <= 1.0),
                "median": summ[a]["median_wall_s"] / summ[n]["median_wall_s"],
                "best": summ[a]["min_wall_s"] / summ[n]["min_wall_s"],
                "cpu": summ[a]["median_cpu_s"] / summ[n]["median_cpu_s"],
            }
    summ["ratios"] = ratios
    return summ


def print_table(summ: Dict[str, Any], meta: Dict[str, Any]) -> None:
    print()
    print(
        f"database: {meta['dump_bytes'] / 1e9:.2f} GB pg_dump -Fc -Z0 (scale {meta['scale']}), "
        f"{meta['reps']} alternating reps, load average {meta['load_min']:.1f}-"
        f"{meta['load_max']:.1f} (1 min)"
    )
    head = f"{'variant':26s} {'median':>8s} {'best':>8s} {'CPU':>8s} {'agent RSS':>10s} "
    print(head + f"{'tree RSS':>9s} {'max proc':>9s}")
    for name, s in summ.items():
        if name == "ratios":
            continue
        agent_rss = f"{s['max_agent_rss_mb']:.0f} MB" if "max_agent_rss_mb" in s else "-"
        print(
            f"{name:26s} {s['median_wall_s']:7.2f}s {s['min_wall_s']:7.2f}s "
            f"{s['median_cpu_s']:7.2f}s {agent_rss:>10s} {s['max_tree_rss_mb']:6.0f} MB "
            f"{s['max_proc_rss_mb']:6.0f} MB"
        )
    for name, s in summ.items():
        if name.startswith("agent"):
            print(f"  {name} stages (median ms): {s['median_stages_ms']}, "
                  f"job {s['median_agent_duration_ms']:.0f} ms, of which outside the stream "
                  f"{s['median_job_outside_pipeline_ms']:.0f} ms; process start/exit "
                  f"{s['median_process_overhead_ms']:.0f} ms")  # fmt: skip
    for label, r in summ["ratios"].items():
        print(
            f"ratio agent/native {label:18s}: paired median {r['paired_median']:.3f} "
            f"({r['paired_min']:.3f}-{r['paired_max']:.3f}, agent <= native in "
            f"{r['wins']}/{meta['reps']}), ratio of medians {r['median']:.3f}, best-of "
            f"{r['best']:.3f}, CPU {r['cpu']:.3f}"
        )


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1, help="database size in ~1 GB units")
    ap.add_argument(
        "--reps",
        type=int,
        default=5,
        help="alternating repetitions (runs here vary +-10-20 %%: a paired median of 5 "
        "is steadier than of 3)",
    )
    ap.add_argument("--only", choices=["local", "s3", "all"], default="all")
    ap.add_argument("--workdir", default=None, help="where data goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster in --workdir")
    ap.add_argument("--out", default=None, help="write the results here (JSON)")
    args = ap.parse_args()
    for tool in ("zstd", "age", "age-keygen"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install zstd age")
    if args.keep and not args.workdir:
        sys.exit("--keep needs --workdir")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ba-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # the postgres user must traverse it to reach its cluster
    cleanup: List[Callable[[], None]] = []
    try:
        cluster = start_cluster(work / "pg")
        cleanup.append(cluster.stop)
        db = "bench_s" + f"{args.scale:g}".replace(".", "_")
        marker = work / "pg" / f"{db}.ready"
        gen_s: Optional[float] = None
        if marker.exists():
            print(f"reusing database {db} from {work}", flush=True)
            gen_s = json.loads(marker.read_text()).get("generate_s")
            reused = True
        else:
            print(f"generating database {db} (scale {args.scale}) ...", flush=True)
            gen_s = generate(cluster, db, args.scale)
            marker.write_text(json.dumps({"generate_s": gen_s}))
            print(f"generated in {gen_s:.0f}s", flush=True)
            reused = False

        key = work / "key.txt"
        key.unlink(missing_ok=True)
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = subprocess.run(
            ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
        ).stdout.strip()
        # The agent's config: only credentials.yaml (0600), and its own state dir.
        config_dir = work / "agent-config"
        shutil.rmtree(config_dir, ignore_errors=True)
        config_dir.mkdir(mode=0o700)
        creds = config_dir / "credentials.yaml"
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(  # JSON is YAML: no quoting surprises in the password
                {
                    "databases": {
                        f"postgresql://127.0.0.1:{cluster.port}/*": {
                            "user": PG_USER,
                            "password": cluster.password,
                        }
                    }
                },
                f,
            )
        state_dir = work / "agent-state"
        shutil.rmtree(state_dir, ignore_errors=True)
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_"))}
        agent_env.update(
            BACKUPAGENT_CONFIG_DIR=str(config_dir),
            BACKUPAGENT_STATE_DIR=str(state_dir),
            BACKUPAGENT_LOG_FORMAT="json",
            PYTHONPATH=str(ROOT),
        )
        # The agent as installed: pip writes bytecode at install time, so the
        # agent must not pay for compiling its sources on every run (this
        # machine sets PYTHONDONTWRITEBYTECODE=1, which made each run compile
        # ~50 modules, ~45 ms, before the dump started).
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "backupagent")],
            check=True,
            capture_output=True,
        )
        pg_dump = os.path.join(cluster.bin_dir, "pg_dump")
        s = Setup(
            cluster=cluster,
            db=db,
            dump_argv=[pg_dump, "-Fc", "-Z0", "--no-password", f"--dbname={db}"],
            recipient=recipient,
            work=work,
            agent_env=agent_env,
            db_url=f"postgresql://{PG_USER}@127.0.0.1:{cluster.port}/{db}",
        )
        size = measure_dump_size(s)
        print(
            f"pg_dump -Fc -Z0: {size['dump_bytes'] / 1e9:.3f} GB in {size['dump_alone_s']:.1f}s "
            "(alone, to a counter)",
            flush=True,
        )

        if args.only in ("s3", "all"):
            from tests.servers.s3 import start_s3_server, stop_s3_server

            s3_root = work / "s3"
            shutil.rmtree(s3_root, ignore_errors=True)
            s3_root.mkdir()
            s.s3 = start_s3_server(s3_root)
            cleanup.append(lambda: stop_s3_server(s.s3))
            s.bucket = s.s3.make_bucket("bench")

        variants: Dict[str, Callable[[int], dict]] = {}
        outdir = work / "out"

        def fresh_outdir() -> Path:
            shutil.rmtree(outdir, ignore_errors=True)
            outdir.mkdir()
            return outdir

        if args.only in ("local", "all"):
            variants["native_local"] = lambda rep: run_native(s, fresh_outdir() / "b.age")
            variants["agent_local"] = lambda rep: run_local_agent(s, fresh_outdir())
        if args.only in ("s3", "all"):
            variants["native_s3_file"] = lambda rep: run_s3_native_file(s, rep)
            variants["agent_s3"] = lambda rep: run_s3_agent(s, rep)
            variants["native_s3_stream"] = lambda rep: run_s3_native_stream(s, rep)

        results: Dict[str, List[dict]] = {name: [] for name in variants}
        names = list(variants)
        for rep in range(args.reps):
            k = rep % len(names)
            order = names[k:] + names[:k] if rep % 2 == 0 else list(reversed(names[k:] + names[:k]))
            for name in order:
                r = variants[name](rep)
                results[name].append(r)
                extra = ""
                if "stages_ms" in r:
                    extra = f", agent RSS {r['self_rss_mb']:.0f} MB, stages {r['stages_ms']}"
                print(
                    f"rep {rep + 1} {name:17s}: {r['wall_s']:6.2f}s wall, {r['cpu_s']:6.2f}s CPU, "
                    f"tree RSS {r.get('tree_rss_mb', 0):.0f} MB, load {r['load1']:.1f}{extra}",
                    flush=True,
                )
            shutil.rmtree(outdir, ignore_errors=True)

        loads = [r["load1"] for rs in results.values() for r in rs]
        meta = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python "
            f"{platform.python_version()}",
            "scale": args.scale,
            "reps": args.reps,
            "database": db,
            "generate_s": gen_s,
            "generated_this_run": not reused,
            "rows": {k: max(1, int(v * args.scale)) for k, v in ROWS.items()},
            "load_min": min(loads),
            "load_max": max(loads),
            "load_median": statistics.median(loads),
            "load_end": os.getloadavg()[0],
            "aws_cli": subprocess.run(
                ["aws", "--version"], capture_output=True, text=True
            ).stdout.strip()
            if args.only != "local"
            else None,
            **size,
        }
        summ = summarize(results)
        print_table(summ, meta)
        if args.out:
            Path(args.out).write_text(
                json.dumps({"meta": meta, "summary": summ, "runs": results}, indent=1)
            )
            print(f"results written to {args.out}")
    finally:
        for fn in reversed(cleanup):
            with contextlib.suppress(Exception):
                fn()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for sub in ("out", "s3", "agent-state", "agent-config"):
                shutil.rmtree(work / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
