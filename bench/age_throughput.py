"""Micro benchmark: our age encrypt/decrypt vs the ``age`` CLI on the same data.

Not a test: run by hand, e.g. ``python bench/age_throughput.py --size-mb 1024``.
Each operation runs in its own process so its peak RSS (from wait4) is its
own; the data is incompressible (like zstd output, which is what the agent
encrypts). Reports wall time including process start, MB/s, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = 1 << 20


def _child(op: str, src: str, dst: str, key: str) -> None:
    sys.path.insert(0, str(ROOT))
    from backupagent.crypto import age

    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        if op == "encrypt":
            ident = age.load_identities(key)[0]
            age.encrypt_stream(fin, fout, [ident.recipient])
        else:
            age.decrypt_stream(fin, fout, age.load_identities(key))
    print(json.dumps({"inner_seconds": time.perf_counter() - t0}))


def _run(argv: List[str]) -> Tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes (sampled every 20 ms), stdout.

    Sampled rather than wait4's ru_maxrss: that one counts the forked copy of
    this Python process before exec and so reports ~30 MB for any child.
    """
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        proc.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {err.read().decode(errors='replace')}")
        return wall, peak, out.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument(
        "--dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="scratch directory (default /dev/shm, so disk speed does not blur the figures)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--child", choices=["encrypt", "decrypt"], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.src, args.dst, args.key)
        return

    age_bin = shutil.which("age")
    keygen = shutil.which("age-keygen")
    if not age_bin or not keygen:
        raise SystemExit("the age CLI is needed for the comparison: apt-get install age")
    sys.path.insert(0, str(ROOT))
    from backupagent.crypto import age

    work = Path(tempfile.mkdtemp(prefix="agebench-", dir=args.dir))
    try:
        size = args.size_mb * 1024 * 1024
        plain = work / "plain.bin"
        with plain.open("wb") as fh:
            block = os.urandom(_BLOCK)
            for i in range(size // _BLOCK):
                fh.write(block[i % 251 :] + block[: i % 251])
        key = work / "key.txt"
        ident = age.generate_identity()
        age.write_identity_file(key, ident)
        me = [sys.executable, str(Path(__file__).resolve()), "--key", str(key)]
        ours, cli = str(work / "ours.age"), str(work / "cli.age")
        ops: Dict[str, List[str]] = {
            "ours encrypt": [*me, "--child", "encrypt", "--src", str(plain), "--dst", ours],
            "age  encrypt": [age_bin, "-r", ident.recipient, "-o", cli, str(plain)],
            "ours decrypt": [*me, "--child", "decrypt", "--src", cli, "--dst", os.devnull],
            "age  decrypt": [age_bin, "-d", "-i", str(key), "-o", os.devnull, ours],
        }
        print(
            f"data: {args.size_mb} MiB incompressible, best of {args.repeat}, {os.cpu_count()} CPUs"
        )
        base = _run(
            [sys.executable, "-c", "import time; import backupagent.crypto.age; time.sleep(0.3)"]
        )
        print(f"python + backupagent.crypto.age imported, idle: {base[1] / 1e6:.1f} MB RSS")
        print(f"{'operation':<14} {'wall s':>8} {'MB/s':>8} {'inner MB/s':>11} {'peak RSS MB':>12}")
        for name, argv in ops.items():
            best = None
            for _ in range(args.repeat):
                wall, rss, out = _run(argv)
                inner = json.loads(out)["inner_seconds"] if out.strip() else None
                if best is None or wall < best[0]:
                    best = (wall, rss, inner)
            assert best is not None
            wall, rss, inner = best
            inner_rate = f"{size / inner / 1e6:11.0f}" if inner else f"{'-':>11}"
            print(f"{name:<14} {wall:8.3f} {size / wall / 1e6:8.0f} {inner_rate} {rss / 1e6:12.1f}")
        # Each side decrypted the other's output above; equal layout means equal size.
        a, b = (work / "ours.age").stat().st_size, (work / "cli.age").stat().st_size
        print(f"ciphertext sizes: ours {a} bytes, age {b} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
