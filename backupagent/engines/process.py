"""Running the engines' native tools: short queries and whole dumps.

Kept apart from the engines so every engine runs its tools the same way: argv
lists only, a timeout on every short call, stderr captured (bounded) so a
failure can be classified, and a missing binary reported with what to install.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

from backupagent.engines.base import TOOL_MISSING, EngineError

if TYPE_CHECKING:
    from backupagent.engines.base import ConnectionSpec, DumpPlan, Engine

CHUNK_SIZE = 1 << 20


def find_tool(names: Sequence[str], install_hint: str) -> str:
    """The first of ``names`` on PATH, else an error saying what to install."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise EngineError(
        f"none of {', '.join(names)} found on PATH; install {install_hint}", code=TOOL_MISSING
    )


def run_tool(
    argv: List[str],
    env: Dict[str, str],
    *,
    input_data: Optional[bytes] = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess:
    """Run a short-lived tool to completion, capturing stdout and stderr.

    The caller decides what a non-zero exit means; a timeout is turned into a
    non-zero result with an explanatory stderr so classification still works.
    """
    try:
        return subprocess.run(
            argv,
            input=input_data,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=None if input_data is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise EngineError(f"{argv[0]} not found; install it", code=TOOL_MISSING) from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(
            argv, 124, b"", f"timeout expired after {timeout:.0f}s running {argv[0]}".encode()
        )


def tool_version_line(argv: List[str], env: Optional[Dict[str, str]] = None) -> str:
    """First line of ``tool --version`` (what the manifest records)."""
    import os

    res = run_tool(argv, env if env is not None else dict(os.environ), timeout=30)
    out = (res.stdout or res.stderr).decode("utf-8", errors="replace").strip()
    if res.returncode != 0 or not out:
        raise EngineError(f"`{' '.join(argv)}` failed: {out[:300]}", code=TOOL_MISSING)
    return out.splitlines()[0].strip()


class _StderrCollector(threading.Thread):
    """Drains a pipe so the child never blocks on a full stderr; keeps the tail."""

    def __init__(self, pipe, limit: int = 64 * 1024) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.limit = limit
        self.data = bytearray()

    def run(self) -> None:
        while True:
            chunk = self.pipe.read(8192)
            if not chunk:
                break
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]

    def text(self) -> bytes:
        self.join(timeout=5)
        return bytes(self.data)


def stream_dump(
    engine: Engine,
    conn: ConnectionSpec,
    plan: DumpPlan,
    write: Callable[[bytes], object],
    *,
    chunk_size: int = CHUNK_SIZE,
    on_start: Optional[Callable[[subprocess.Popen], None]] = None,
) -> int:
    """Feed a plan's dump to ``write`` in chunks; return the byte count.

    Raises :class:`EngineError` (classified by the engine) when the dump tool
    exits non-zero or is killed, *after* the last byte was written: the caller
    must treat everything written as garbage in that case. This is the
    reference way to run a plan; the streaming pipeline follows the same rule.
    """
    total = 0
    if plan.source_file is not None:
        with open(plan.source_file, "rb") as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    return total
                write(chunk)
                total += len(chunk)
    try:
        proc = subprocess.Popen(
            plan.argv,
            env=plan.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise EngineError(f"{plan.argv[0]} not found; install it", code=TOOL_MISSING) from None
    errs = _StderrCollector(proc.stderr)
    errs.start()
    try:
        if on_start is not None:
            on_start(proc)
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read(chunk_size)
            if not chunk:
                break
            write(chunk)
            total += len(chunk)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    rc = proc.wait()
    stderr = errs.text()
    if rc != 0:
        raise engine.classify_failure(conn, rc, stderr, action="dump")
    return total


def restore_from_file(
    engine: Engine, conn: ConnectionSpec, dump_file: Path, workdir: Path, *, timeout: float = 3600
) -> None:
    """Feed a dump file to the engine's native restore on stdin; raise on failure."""
    with engine.prepare_restore(conn, workdir) as plan:
        with open(dump_file, "rb") as f:
            try:
                res = subprocess.run(
                    plan.argv,
                    env=plan.env,
                    stdin=f,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except FileNotFoundError:
                raise EngineError(
                    f"{plan.argv[0]} not found; install it", code=TOOL_MISSING
                ) from None
        if res.returncode != 0:
            raise engine.classify_failure(conn, res.returncode, res.stderr, action="restore")
