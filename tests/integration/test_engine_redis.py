"""Redis engine against real servers: RDB dump, restore by loading it in a fresh server."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from backupagent.engines import get_engine, parse_database_url
from backupagent.engines.base import EngineError
from backupagent.engines.process import stream_dump
from backupagent.engines.redis import install_rdb, server_argv
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.integration


def cli(port: int, *args: str, password: str = "", db: int = 0) -> str:
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if password:
        env["REDISCLI_AUTH"] = password
    argv = ["redis-cli", "--no-auth-warning", "-p", str(port), "-n", str(db), *args]
    res = subprocess.run(argv, env=env, capture_output=True, timeout=30, check=True)
    return res.stdout.decode("utf-8", errors="replace")


def digest(port: int, db: int, password: str = "") -> Dict[str, str]:
    """Per key: type + logical value (order-normalized) hashed; content, not just counts.

    Not ``DUMP``: a loaded set may pick another internal encoding.
    """
    keys = sorted(k for k in cli(port, "--scan", password=password, db=db).splitlines() if k)
    readers = {
        "string": ("GET",),
        "hash": ("HGETALL",),
        "list": ("LRANGE", "{k}", "0", "-1"),
        "set": ("SMEMBERS",),
        "zset": ("ZRANGE", "{k}", "0", "-1", "WITHSCORES"),
    }
    out = {}
    for key in keys:
        kind = cli(port, "TYPE", key, password=password, db=db).strip()
        reader = readers[kind]
        args = [a.replace("{k}", key) for a in reader] if len(reader) > 1 else [reader[0], key]
        value = cli(port, *args, password=password, db=db).splitlines()
        if kind in ("set", "hash"):
            value = sorted(value) if kind == "set" else sorted(zip(value[::2], value[1::2]))
        out[key] = kind + ":" + hashlib.sha256(repr(value).encode()).hexdigest()
    return out


def populate(port: int, password: str = "") -> None:
    def c(*a: str, db: int = 0) -> None:
        cli(port, *a, password=password, db=db)

    c("FLUSHALL")
    for i in range(50):
        c("SET", f"str:{i}", f"value {i}")
    c("HSET", "hash:1", "a", "1", "b", "two")
    c("RPUSH", "list:1", "x", "y", "z")
    c("SADD", "set:1", "m1", "m2")
    c("ZADD", "zset:1", "1", "one", "2", "two")
    c("SET", "bin:1", "\x01\xff binary\ttab")
    c("SET", "ttl:1", "soon", "EX", "3600")
    for i in range(7):
        c("SET", f"other:{i}", str(i), db=3)


def test_rdb_round_trip_into_a_fresh_server(redis_server, tmp_path: Path) -> None:
    populate(redis_server.port)
    engine = get_engine("redis")
    spec = parse_database_url(redis_server.url)
    assert engine.server_version(spec) == redis_server.version
    assert "redis-cli" in engine.tool_version()
    assert engine.schema_snapshot(spec) == {"tables": []}
    assert not engine.is_empty(spec)

    with engine.prepare_dump(spec, tmp_path) as plan, open(tmp_path / "backup.rdb", "wb") as f:
        size = stream_dump(engine, spec, plan, f.write)
    assert size > 0 and (tmp_path / "backup.rdb").read_bytes()[:5] == b"REDIS"
    assert plan.row_counts == {"db0": 56, "db3": 7}
    assert plan.row_counts_exact is False

    with pytest.raises(EngineError) as info:
        engine.restore_argv(spec)
    assert info.value.code == "UNSUPPORTED"

    data_dir = tmp_path / "restored"
    install_rdb(tmp_path / "backup.rdb", data_dir)
    port = free_port()
    proc = subprocess.Popen(
        server_argv(data_dir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: cli(port, "PING").strip() == "PONG", 30, f"restored redis on {port}")
        restored = parse_database_url(f"redis://127.0.0.1:{port}/0")
        assert engine.list_tables_with_counts(restored) == plan.row_counts
        for db in (0, 3):
            assert digest(port, db) == digest(redis_server.port, db)
        assert int(cli(port, "TTL", "ttl:1").strip()) > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_password_via_env_and_wrong_password(redis_server_auth, tmp_path: Path) -> None:
    engine = get_engine("redis")
    spec = parse_database_url(redis_server_auth.url)
    cli(redis_server_auth.port, "SET", "k", "v", password=redis_server_auth.password)
    with engine.prepare_dump(spec, tmp_path) as plan:
        assert redis_server_auth.password not in " ".join(plan.argv)
        assert plan.env["REDISCLI_AUTH"] == redis_server_auth.password
        chunks = []
        stream_dump(engine, spec, plan, chunks.append)
    assert b"".join(chunks)[:5] == b"REDIS"

    wrong = "wrong-" + secrets.token_hex(6)
    bad = parse_database_url(f"redis://:{wrong}@127.0.0.1:{redis_server_auth.port}/0")
    with pytest.raises(EngineError) as info:
        engine.prepare_dump(bad, tmp_path)
    assert info.value.code == "AUTH_FAIL" and wrong not in str(info.value)
    nopw = parse_database_url(f"redis://127.0.0.1:{redis_server_auth.port}/0")
    with pytest.raises(EngineError) as info:
        engine.list_tables_with_counts(nopw)
    assert info.value.code == "AUTH_FAIL"


def test_unreachable_redis(tmp_path: Path) -> None:
    engine = get_engine("redis")
    spec = parse_database_url(f"redis://:pw-secret-1@127.0.0.1:{free_port()}/0")
    with pytest.raises(EngineError) as info:
        engine.prepare_dump(spec, tmp_path)
    assert info.value.code == "DB_UNREACHABLE" and "pw-secret-1" not in str(info.value)
