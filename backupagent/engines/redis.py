"""Redis: an RDB snapshot streamed by ``redis-cli --rdb -``.

The password travels in ``REDISCLI_AUTH`` (never ``-a``, which shows in
``ps``). An RDB file holds the whole instance (every logical db), whatever db
number the URL names, so the "row counts" are the key counts of every db in
``INFO keyspace``, taken just before the transfer: approximate, since writes
keep landing until the server forks for the snapshot.

There is no stdin restore for RDB: a server loads ``dump.rdb`` from its data
directory at start-up. :func:`install_rdb` and :func:`server_argv` do that
for a fresh server (see docs/engines.md).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

from backupagent.engines.base import (
    AUTH_FAIL,
    DB_UNREACHABLE,
    DUMP_FAIL,
    PERMISSION_DENIED,
    RESTORE_FAIL,
    UNSUPPORTED,
    ConnectionSpec,
    DumpPlan,
    EngineError,
    stderr_tail,
)
from backupagent.engines.process import find_tool, run_tool, tool_version_line

_ERROR_PREFIXES = ("NOAUTH", "WRONGPASS", "NOPERM", "ERR", "LOADING", "MISCONF", "-")

RESTORE_HELP = (
    "Redis backups are RDB files and cannot be restored through stdin: stop the target "
    "server, place the decrypted, decompressed file as dump.rdb in its data directory "
    "(`dir`/`dbfilename`), turn off appendonly for that start, and start it; see "
    "docs/engines.md (Redis restore)"
)


def classify(conn: ConnectionSpec, returncode: int, stderr: Any, action: str) -> EngineError:
    text = stderr_tail(stderr, conn.password)
    low = text.lower()
    where = conn.redacted_url()
    if returncode < 0:
        return EngineError(
            f"redis-cli {action} of {where} was killed by signal {-returncode}: {text}",
            code=DUMP_FAIL if action == "dump" else RESTORE_FAIL,
        )
    if any(s in low for s in ("wrongpass", "noauth", "auth failed", "invalid password")):
        return EngineError(
            f"redis-cli could not log in to {where}: {text} (set the password in "
            "credentials.yaml or the URL)",
            code=AUTH_FAIL,
        )
    if "noperm" in low:
        return EngineError(
            f"redis-cli {action} of {where}: {text} (the ACL user needs +sync/+psync, +info, "
            "+dbsize)",
            code=PERMISSION_DENIED,
        )
    if any(s in low for s in ("could not connect", "connection refused", "connection reset")):
        return EngineError(f"redis-cli cannot reach {where}: {text}", code=DB_UNREACHABLE)
    return EngineError(
        f"redis-cli {action} of {where} failed (exit {returncode}): {text}",
        code=DUMP_FAIL if action in ("dump", "query") else RESTORE_FAIL,
    )


def parse_keyspace(info: str) -> Dict[str, int]:
    """``db0:keys=3,expires=0,...`` lines -> ``{"db0": 3}`` (sorted by db number)."""
    counts: Dict[str, int] = {}
    for line in info.splitlines():
        m = re.match(r"^(db\d+):keys=(\d+)", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0][2:])))


def install_rdb(rdb_file: Path, data_dir: Path, dbfilename: str = "dump.rdb") -> Path:
    """Copy an RDB backup into a (stopped) server's data directory, mode 0600."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / dbfilename
    tmp = data_dir / f".{dbfilename}.restore-{os.getpid()}"
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(rdb_file, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.replace(str(tmp), str(target))
    return target


def server_argv(data_dir: Path, port: int, dbfilename: str = "dump.rdb") -> List[str]:
    """argv for a loopback redis-server that loads ``data_dir/dbfilename`` at start."""
    return [
        find_tool(["redis-server"], "redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--dbfilename", dbfilename,
        "--appendonly", "no",
        "--save", "",
    ]  # fmt: skip


class RedisEngine:
    db_type = "redis"
    dump_format = "rdb"
    file_extension = "rdb"

    def cli(self) -> str:
        return find_tool(["redis-cli"], "redis-tools (redis-cli)")

    def base_argv(self, conn: ConnectionSpec) -> List[str]:
        argv = [self.cli()]
        if conn.socket:
            argv += ["-s", conn.socket]
        else:
            argv += ["-h", conn.host or "127.0.0.1", "-p", conn.port or "6379"]
        if conn.user:
            argv += ["--user", conn.user]
        if conn.options.get("tls", "").lower() in ("1", "true", "yes"):
            argv.append("--tls")
        argv.append("--no-auth-warning")
        return argv

    def env(self, conn: ConnectionSpec) -> Dict[str, str]:
        env = dict(os.environ)
        if conn.password:
            env["REDISCLI_AUTH"] = conn.password
        return env

    def command(self, conn: ConnectionSpec, *args: str, timeout: float = 60) -> str:
        """One redis-cli command; error replies (printed with exit 0) become errors."""
        res = run_tool([*self.base_argv(conn), *args], self.env(conn), timeout=timeout)
        out = res.stdout.decode("utf-8", errors="replace")
        first = out.strip().splitlines()[0] if out.strip() else ""
        if res.returncode != 0 or first.startswith(_ERROR_PREFIXES):
            stderr = res.stderr.decode("utf-8", errors="replace") + "\n" + first
            raise classify(conn, res.returncode or 1, stderr, "query")
        return out

    def server_version(self, conn: ConnectionSpec) -> str:
        info = self.command(conn, "INFO", "server")
        m = re.search(r"^redis_version:(\S+)", info, re.M)
        if not m:
            raise EngineError(
                f"INFO server from {conn.redacted_url()} has no redis_version", code=DUMP_FAIL
            )
        return m.group(1)

    def tool_version(self) -> str:
        return tool_version_line([self.cli(), "--version"])

    def list_tables_with_counts(self, conn: ConnectionSpec) -> Dict[str, int]:
        return parse_keyspace(self.command(conn, "INFO", "keyspace"))

    def schema_snapshot(self, conn: ConnectionSpec) -> Dict[str, Any]:
        return {"tables": []}  # key-value: no schema to snapshot

    def is_empty(self, conn: ConnectionSpec) -> bool:
        return sum(self.list_tables_with_counts(conn).values()) == 0

    def prepare_dump(self, conn: ConnectionSpec, workdir: Path, cancel: Any = None) -> DumpPlan:
        version = self.server_version(conn)
        counts = self.list_tables_with_counts(conn)
        return DumpPlan(
            argv=[*self.base_argv(conn), "--rdb", "-"],
            env=self.env(conn),
            row_counts=counts,
            row_counts_exact=False,
            extra={
                "serverVersion": version,
                "toolVersion": self.tool_version(),
                "rowCountsSource": "INFO keyspace just before the snapshot (approximate)",
                "rowCountsCaveat": "key counts per logical db; the RDB holds every db of the "
                "instance, and writes until the server forks are included",
            },
        )

    def restore_argv(self, conn: ConnectionSpec) -> Tuple[List[str], Dict[str, str]]:
        raise EngineError(RESTORE_HELP, code=UNSUPPORTED)

    def prepare_restore(self, conn: ConnectionSpec, workdir: Path) -> DumpPlan:
        raise EngineError(RESTORE_HELP, code=UNSUPPORTED)

    def classify_failure(
        self, conn: ConnectionSpec, returncode: int, stderr: Any, *, action: str = "dump"
    ) -> EngineError:
        return classify(conn, returncode, stderr, action)
