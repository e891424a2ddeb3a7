"""Measure S3Target upload throughput and memory against a local SeaweedFS.

    python bench/s3_upload.py [--size-mb 500] [--inflight 0 1 2] [--chunk-kb 256] [--reps 1]

Starts its own SeaweedFS (the test fixture's code); each measurement runs in
a fresh Python process (so the client's own cost is counted, as in the
agent), which creates an ``S3Target``, streams pseudo-random data through
``open_writer`` in fixed chunks (as the pipeline does) and reports:

- ``client``: RSS growth from creating the target (botocore import, models);
- ``peak``: the process's peak RSS (``VmHWM``) over the whole run, and its
  growth during the stream alone (part buffers, HTTP);
- throughput, and the part buffers the writer allocated.

``max_inflight`` 0 uploads in the writing thread. Not a test: numbers depend
on the machine (SeaweedFS shares its CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> None:
    """One measurement, in its own process; prints one JSON line."""
    inflight = args.inflight[0]
    import backupagent.targets.registry  # noqa: F401  (what the agent has loaded anyway)

    rss0 = _status_mb("VmRSS")
    from backupagent.targets.s3 import S3Target

    target = S3Target(
        args.bucket,
        "bench",
        endpoint_url=os.environ["BENCH_S3_ENDPOINT"],
        credentials={
            "access_key_id": os.environ["BENCH_S3_KEY"],
            "secret_access_key": os.environ["BENCH_S3_SECRET"],
        },
        region=os.environ.get("BENCH_S3_REGION"),
        max_inflight=inflight,
    )
    rss_client = _status_mb("VmRSS")
    hwm_client = _status_mb("VmHWM")
    size = args.size_mb << 20
    chunk = os.urandom(args.chunk_kb << 10)  # incompressible; reused to keep generation cheap
    key = f"obj-{inflight}-{os.getpid()}.bin"
    t0 = time.perf_counter()
    with target.open_writer(key) as w:
        sent = 0
        while sent < size:
            w.write(chunk)
            sent += len(chunk)
        w.commit()
    wall = time.perf_counter() - t0
    hwm = _status_mb("VmHWM")
    target.delete(key)
    print(
        json.dumps(
            {
                "inflight": inflight,
                "mb_s": sent / wall / 1e6,
                "wall_s": wall,
                "rss_start_mb": rss0,
                "client_mb": rss_client - rss0,
                "peak_mb": hwm,
                "stream_growth_mb": hwm - max(rss_client, hwm_client),
                "part_buffers": getattr(getattr(w, "_pool", None), "allocated", -1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--chunk-kb", type=int, default=256)
    ap.add_argument("--inflight", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bucket", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from tests.servers.s3 import start_s3_server, stop_s3_server

    root = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = start_s3_server(root)
    try:
        bucket = server.make_bucket()
        env = dict(
            os.environ,
            BENCH_S3_ENDPOINT=server.endpoint_url,
            BENCH_S3_KEY=server.access_key,
            BENCH_S3_SECRET=server.secret_key,
            BENCH_S3_REGION=server.region,
            PYTHONPATH=str(ROOT),
        )
        print(
            f"{args.size_mb} MB in {args.chunk_kb} KiB writes, {args.reps} rep(s), "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        results: Dict[int, List[dict]] = {n: [] for n in args.inflight}
        for _ in range(args.reps):
            for inflight in args.inflight:
                argv = [sys.executable, __file__, "--child", "--bucket", bucket]
                argv += ["--size-mb", str(args.size_mb), "--chunk-kb", str(args.chunk_kb)]
                argv += ["--inflight", str(inflight)]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"measurement failed:\n{out.stderr[-2000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[inflight].append(r)
                print(
                    f"  max_inflight={inflight}: {r['mb_s']:6.1f} MB/s ({r['wall_s']:.1f} s), "
                    f"client +{r['client_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB "
                    f"(stream +{r['stream_growth_mb']:.0f}), {r['part_buffers']} part buffers"
                )
        print("medians:")
        for inflight, rs in results.items():

            def med(k: str, rs: List[dict] = rs) -> float:
                return statistics.median(r[k] for r in rs)

            print(
                f"  max_inflight={inflight}: {med('mb_s'):6.1f} MB/s, "
                f"start {med('rss_start_mb'):.0f} MB, client +{med('client_mb'):.0f} MB, "
                f"peak {med('peak_mb'):.0f} MB (stream +{med('stream_growth_mb'):.0f} MB)"
            )
    finally:
        stop_s3_server(server)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
