"""Database URL parsing: every supported scheme, percent-decoding, masking."""

from __future__ import annotations

import pytest

from backupagent.engines.base import (
    ConnectionSpec,
    EngineError,
    mask_url,
    parse_database_url,
    redact,
    stderr_tail,
)

SECRET = "p@ss:w/rd#?%"
QUOTED = "p%40ss%3Aw%2Frd%23%3F%25"


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "postgresql://alice@db.example:6543/app",
            ConnectionSpec("postgresql", "db.example", "6543", "app", "alice"),
        ),
        ("postgres://h/app", ConnectionSpec("postgresql", "h", "5432", "app")),
        ("mysql://bob@127.0.0.1/shop", ConnectionSpec("mysql", "127.0.0.1", "3306", "shop", "bob")),
        ("mariadb://h:3307/shop", ConnectionSpec("mariadb", "h", "3307", "shop")),
        ("redis://localhost:6380/2", ConnectionSpec("redis", "localhost", "6380", "2")),
        ("redis://localhost", ConnectionSpec("redis", "localhost", "6379", "0")),
        (
            "sqlite:///var/lib/app/data.db",
            ConnectionSpec("sqlite", database_name="/var/lib/app/data.db"),
        ),
        (
            "sqlite:////var/lib/app/data.db",
            ConnectionSpec("sqlite", database_name="/var/lib/app/data.db"),
        ),
        ("postgresql://u@h/my%20db", ConnectionSpec("postgresql", "h", "5432", "my db", "u")),
        ("postgresql://u@[::1]:5432/db", ConnectionSpec("postgresql", "::1", "5432", "db", "u")),
    ],
)
def test_parse_valid_urls(url: str, expected: ConnectionSpec) -> None:
    assert parse_database_url(url) == expected


def test_password_is_percent_decoded_and_hidden() -> None:
    spec = parse_database_url(f"postgresql://al%20ice:{QUOTED}@h:5432/db")
    assert spec.user == "al ice"
    assert spec.password == SECRET
    assert SECRET not in repr(spec)
    assert "password" not in repr(spec)
    assert spec.redacted_url() == "postgresql://al%20ice:***@h:5432/db"


def test_redis_password_only_url() -> None:
    spec = parse_database_url("redis://:s3cr3t@127.0.0.1:6379/0")
    assert spec.password == "s3cr3t" and spec.user is None
    assert spec.redacted_url() == "redis://:***@127.0.0.1:6379/0"


def test_socket_and_options_from_query() -> None:
    spec = parse_database_url("postgresql://u@/db?host=/var/run/postgresql&sslmode=require")
    assert spec.socket == "/var/run/postgresql"
    assert spec.host == ""
    assert spec.options == {"sslmode": "require"}
    my = parse_database_url("mysql://u@localhost/db?socket=/run/mysqld/mysqld.sock")
    assert my.socket == "/run/mysqld/mysqld.sock"
    assert "socket=%2Frun%2Fmysqld%2Fmysqld.sock" in my.redacted_url()


@pytest.mark.parametrize(
    "url, needle",
    [
        ("ftp://u:topsecret@h/db", "unsupported scheme"),
        ("postgresql://u:topsecret@h:5432", "names no database"),
        ("postgresql://u:topsecret@h:99999/db", "cannot be parsed"),
        ("postgresql://u:topsecret@h:0/db", "port 0"),
        ("redis://:topsecret@h:6379/abc", "not a number"),
        ("sqlite://relative.db", "no host"),
        ("sqlite:///", "directory"),
        ("u:topsecret@h/db", "not a URL"),
        ("mysql://u:topsecret@h/a/b", "contains '/'"),
    ],
)
def test_invalid_urls_name_the_problem_and_mask_the_password(url: str, needle: str) -> None:
    with pytest.raises(EngineError) as info:
        parse_database_url(url)
    message = str(info.value)
    assert needle in message
    assert "topsecret" not in message
    assert info.value.code == "CONFIG_INVALID"


def test_mask_url_handles_unparseable_input() -> None:
    assert mask_url("postgresql://u:pa:ss@h:99999/x") == "postgresql://u:***@h:99999/x"
    assert mask_url("redis://:pw@h/0") == "redis://:***@h/0"
    assert mask_url("postgresql://u@h/x") == "postgresql://u@h/x"


def test_redact_and_stderr_tail_remove_raw_and_quoted_secrets() -> None:
    text = f"FATAL: bad {SECRET} and {QUOTED}"
    assert SECRET not in redact(text, SECRET)
    assert QUOTED not in redact(text, SECRET)
    tail = stderr_tail(("x" * 5000 + SECRET).encode(), SECRET)
    assert tail.startswith("...") and len(tail) <= 2003 and SECRET not in tail


def test_with_credentials_keeps_what_the_spec_has() -> None:
    spec = ConnectionSpec("postgresql", "h", "5432", "db", user="u")
    filled = spec.with_credentials(user="other", password="pw", socket="/s", options={"a": "1"})
    assert filled.user == "u" and filled.password == "pw" and filled.socket == "/s"
    assert filled.options == {"a": "1"}
