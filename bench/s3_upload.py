"""Measure S3Target upload throughput and peak RSS against a local SeaweedFS.

    python bench/s3_upload.py [--size-mb 500] [--inflight 0 1 2] [--chunk-kb 256]

Starts its own SeaweedFS (the test fixture's code), streams pseudo-random
data through ``S3Target.open_writer`` in fixed chunks (as the pipeline
does), and reports MB/s and the process's peak RSS growth for each
``max_inflight`` setting (0 = upload in the writing thread).
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from backupagent.targets.s3 import S3Target
from tests.servers.s3 import start_s3_server, stop_s3_server


class PeakRSS:
    """Samples this process's RSS every 20 ms (ru_maxrss never goes back down)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--chunk-kb", type=int, default=256)
    ap.add_argument("--inflight", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    size = args.size_mb << 20
    chunk = os.urandom(args.chunk_kb << 10)  # incompressible; reused to keep generation cheap
    root = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = start_s3_server(root)
    try:
        bucket = server.make_bucket()
        creds = {"access_key_id": server.access_key, "secret_access_key": server.secret_key}
        base_rss = psutil.Process().memory_info().rss
        print(
            f"baseline RSS {base_rss / 2**20:.0f} MiB; "
            f"{args.size_mb} MB in {args.chunk_kb} KiB writes"
        )
        for inflight in args.inflight:
            target = S3Target(
                bucket,
                "bench",
                endpoint_url=server.endpoint_url,
                credentials=creds,
                region=server.region,
                max_inflight=inflight,
            )
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                with target.open_writer(f"obj-{inflight}.bin") as w:
                    sent = 0
                    while sent < size:
                        w.write(chunk)
                        sent += len(chunk)
                    w.commit()
                dt = time.perf_counter() - t0
            print(
                f"S3Target max_inflight={inflight}: {sent / dt / 1e6:7.1f} MB/s "
                f"({dt:.1f} s), peak RSS {rss.peak / 2**20:.0f} MiB "
                f"(+{(rss.peak - base_rss) / 2**20:.0f} over baseline)"
            )
            target.delete(f"obj-{inflight}.bin")
        print(
            f"process ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    finally:
        stop_s3_server(server)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
