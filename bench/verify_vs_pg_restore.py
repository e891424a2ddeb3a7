"""Verification time vs a bare ``pg_restore`` of the same dump into the same image.

    python bench/verify_vs_pg_restore.py [--size-mb 200] [--image backupagent-test/postgres:15]

Starts a throwaway PostgreSQL cluster (the test fixture's code), fills it
with about ``--size-mb`` of table data, backs it up with the real job
(pg_dump -> zstd -> age -> local target), then measures:

- baseline: container start + readiness + ``docker exec -i pg_restore`` of the
  already decrypted, uncompressed dump (what an operator would run by hand);
- verification: ``verify_backup`` end to end (image check, container start,
  readiness, read+decrypt+decompress+restore of the stored object, row
  counts, schema snapshot), and the restore phase alone;

and the agent's peak RSS during verification (sampled every 20 ms).
Targets: verification <= 1.5x baseline, peak RSS <= 200 MB. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from backupagent.crypto.keys import generate_identity
from backupagent.engines.base import parse_database_url
from backupagent.jobs.backup import BackupSpec, run_backup
from backupagent.pipeline.restore import open_restore_stream
from backupagent.report.local import LocalReporter
from backupagent.targets.local import LocalTarget
from backupagent.verify.container import ManagedContainer, docker_client
from backupagent.verify.dialects import PostgresDialect
from backupagent.verify.run import verify_backup


class PeakRSS:
    """Samples this process's RSS every 20 ms (ru_maxrss never goes back down)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


FILL_SQL = """
CREATE TABLE events (id bigint PRIMARY KEY, account int NOT NULL, kind text NOT NULL,
                     payload text, created timestamptz NOT NULL);
INSERT INTO events
SELECT g, g % 5000, 'kind-' || (g % 17), md5(g::text) || md5((g * 7)::text),
       timestamptz '2024-01-01' + g * interval '1 second'
FROM generate_series(1, {rows}) g;
CREATE INDEX events_account ON events (account);
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO accounts SELECT g, 'account ' || g FROM generate_series(0, 4999) g;
"""


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def main() -> None:
    from tests.servers.postgres import _start_postgres, _stop_process

    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--image", default="backupagent-test/postgres:15")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()

    base = tempfile.mkdtemp(prefix="ba-bench-pg-")
    work = Path(tempfile.mkdtemp(prefix="ba-bench-verify-"))
    proc, server = _start_postgres(base)
    client = docker_client()
    try:
        for _ in range(200):
            try:
                server.psql("SELECT 1")
                break
            except Exception:
                time.sleep(0.1)
        server.create_database("bench")
        rows = int(args.size_mb * 1e6 / 130)  # ~130 bytes per events row on disk
        t = time.monotonic()
        server.psql(FILL_SQL.format(rows=rows), "bench", timeout=3600)
        size = int(server.psql("SELECT pg_database_size('bench')", "bench"))
        print(f"database: {rows} rows, {mb(size)} on disk, filled in {time.monotonic() - t:.1f}s")

        ident = generate_identity()
        target = LocalTarget(work / "target")
        t = time.monotonic()
        result = run_backup(
            BackupSpec(
                conn=parse_database_url(server.dsn("bench")),
                target=target,
                database_id="bench",
                target_id="local",
                hostname="bench",
                recipients=[ident.recipient],
            ),
            LocalReporter(work / "state"),
        )
        assert result.ok, result.error_message
        d = result.details
        print(
            f"backup: dump {mb(d['dumpSize'])}, stored {mb(d['storedSize'])} "
            f"in {time.monotonic() - t:.1f}s"
        )
        key, manifest = d["objectKey"], d["manifest"]

        plain = work / "plain.dump"
        reader = target.open_reader(key)
        with open(plain, "wb") as f:
            stream = open_restore_stream(reader, [ident], expected_sha256=manifest["sha256"])
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
        reader.close()

        for run in range(args.runs):
            # -- baseline: same image, same limits, pg_restore from the plain dump --
            dialect = PostgresDialect("bench")
            t0 = time.monotonic()
            with ManagedContainer(
                client, args.image, environment=dialect.environment(), timeout=3600
            ) as box:
                dialect.wait_ready(box)
                t1 = time.monotonic()
                with open(plain, "rb") as f:
                    res = subprocess.run(
                        [
                            "docker", "exec", "-i", box.id, "pg_restore", "--no-owner",
                            "--no-privileges", "--exit-on-error", "-h", "/var/run/postgresql",
                            "-U", "postgres", "-d", "bench",
                        ],
                        stdin=f, capture_output=True, check=False,
                    )  # fmt: skip
                t2 = time.monotonic()
                assert res.returncode == 0, res.stderr[-2000:]
            base_total, base_restore = t2 - t0, t2 - t1
            print(
                f"[{run}] baseline: pg_restore {base_restore:.1f}s, "
                f"with container start+ready {base_total:.1f}s"
            )

            # -- verification ---------------------------------------------------
            t0 = time.monotonic()
            with PeakRSS() as rss:
                out = verify_backup(
                    target,
                    key,
                    manifest,
                    image=args.image,
                    identities=[ident],
                    timeout=3600,
                    client=client,
                )
            total = time.monotonic() - t0
            assert out.status == "passed", (out.details, out.report)
            tm = out.details["timingsMs"]
            print(
                f"[{run}] verification: total {total:.1f}s (ready {tm['ready'] / 1000:.1f}s, "
                f"restore {tm['restore'] / 1000:.1f}s, checks {tm['checks'] / 1000:.1f}s); "
                f"{len(out.report.checks)} checks passed"
            )
            print(
                f"[{run}] ratio total/baseline-total {total / base_total:.2f}x, "
                f"restore/pg_restore {tm['restore'] / 1000 / base_restore:.2f}x; "
                f"peak RSS {rss.peak / 2**20:.0f} MiB "
                f"(+{(rss.peak - rss.start) / 2**20:.0f} MiB during verification)"
            )
    finally:
        client.close()
        _stop_process(proc, 2, timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
