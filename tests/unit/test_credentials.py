"""credentials.yaml: permission checks, key matching, precedence, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupagent.engines.base import ConnectionSpec
from backupagent.engines.credentials import (
    CredentialsError,
    load_credentials,
    lookup_keys,
    normalize_key,
    resolve_connection,
)

FILE = """
databases:
  "3f2a9c1e-0000-4000-8000-000000000001":
    user: by_id
    password: "id-secret"
  "postgres://DB.example/app":
    user: backup
    password: "url-secret"
  "mysql://127.0.0.1:3306/*":
    user: any_my
    password: "wild-secret"
    socket: /run/mysqld/mysqld.sock
    options: {ssl-ca: /etc/ssl/ca.pem}
  "redis:6380":
    password: "redis-secret"
  "sqlite:///var/lib/app.db":
    user: ignored
"""


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return write(tmp_path / "credentials.yaml", FILE)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_loose_permissions_are_refused_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "credentials.yaml", FILE, mode)
    with pytest.raises(CredentialsError) as info:
        load_credentials(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert "secret" not in message.replace("secrets", "")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "credentials.yaml", FILE, mode)
    assert len(load_credentials(path)) == 5


def test_missing_file_means_no_stored_credentials(tmp_path: Path) -> None:
    assert load_credentials(tmp_path / "nope.yaml") == {}
    spec = resolve_connection("postgresql://h/app", tmp_path / "nope.yaml")
    assert spec.user is None and spec.password is None


def test_lookup_by_database_id_wins(creds: Path) -> None:
    ref = {
        "id": "3f2a9c1e-0000-4000-8000-000000000001",
        "dbType": "postgresql",
        "host": "db.example",
        "port": "5432",
        "databaseName": "app",
    }
    spec = resolve_connection(ref, creds)
    assert (spec.user, spec.password) == ("by_id", "id-secret")


def test_lookup_by_normalized_url(creds: Path) -> None:
    spec = resolve_connection(
        {"dbType": "postgresql", "host": "db.example", "port": 5432, "databaseName": "app"}, creds
    )
    assert (spec.user, spec.password) == ("backup", "url-secret")
    assert spec.port == "5432"
    other = resolve_connection("postgresql://db.example:5432/other", creds)
    assert other.password is None


def test_wildcard_database_socket_and_options(creds: Path) -> None:
    spec = resolve_connection("mysql://127.0.0.1/shop", creds)
    assert spec.user == "any_my" and spec.password == "wild-secret"
    assert spec.socket == "/run/mysqld/mysqld.sock"
    assert spec.options == {"ssl-ca": "/etc/ssl/ca.pem"}


def test_type_and_port_key(creds: Path) -> None:
    assert resolve_connection("redis://10.0.0.5:6380/0", creds).password == "redis-secret"
    assert resolve_connection("redis://10.0.0.5:6379/0", creds).password is None


def test_url_credentials_win_and_other_users_password_is_not_used(creds: Path) -> None:
    spec = resolve_connection("postgresql://backup:from-url@db.example/app", creds)
    assert spec.password == "from-url"
    stranger = resolve_connection("postgresql://someone@db.example/app", creds)
    assert stranger.user == "someone" and stranger.password is None


def test_object_reference_with_attributes(creds: Path) -> None:
    class Db:
        id = "3f2a9c1e-0000-4000-8000-000000000001"
        db_type = "postgresql"
        host = "x"
        port = 5432
        database_name = "y"

    spec = resolve_connection(Db(), creds)
    assert spec.user == "by_id" and spec.host == "x" and spec.port == "5432"


def test_password_file_must_be_private(tmp_path: Path) -> None:
    pw = write(tmp_path / "app.pass", "from-file\n", 0o644)
    path = write(
        tmp_path / "credentials.yaml",
        'databases:\n  "postgresql://h:5432/app": {user: u, passwordFile: app.pass}\n',
    )
    with pytest.raises(CredentialsError) as info:
        load_credentials(path)
    assert f"chmod 600 {pw}" in str(info.value)
    os.chmod(pw, 0o600)
    assert resolve_connection("postgresql://h/app", path).password == "from-file"


def test_every_bad_entry_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path / "credentials.yaml",
        "databases:\n"
        '  "a": "not a mapping"\n'
        '  "b": {user: u, pasword: typo}\n'
        '  "c": {password: x, passwordFile: /nope}\n'
        '  "d": {options: [1, 2]}\n',
    )
    with pytest.raises(CredentialsError) as info:
        load_credentials(path)
    message = str(info.value)
    for needle in ("databases['a']", "pasword", "databases['c']", "databases['d'].options"):
        assert needle in message
    assert "typo" not in message


def test_invalid_yaml_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="not valid YAML at line"):
        load_credentials(write(tmp_path / "a.yaml", "databases: [\n  x"))
    with pytest.raises(CredentialsError, match="top-level 'databases:'"):
        load_credentials(write(tmp_path / "b.yaml", "- a\n- b\n"))


def test_normalize_key_and_lookup_order() -> None:
    assert normalize_key("Postgres://DB:5432/app") == "postgresql://db:5432/app"
    assert normalize_key("mysql://u@h/x") == "mysql://h:3306/x"
    assert normalize_key("redis://[::1]/0") == "redis://::1:6379/0"
    assert normalize_key("postgres") == "postgresql"
    assert normalize_key("Postgres:5433") == "postgresql:5433"
    spec = ConnectionSpec("postgresql", "H", "5432", "app")
    assert lookup_keys(spec, "id-1") == [
        "id-1",
        "postgresql://h:5432/app",
        "postgresql://h:5432/*",
        "postgresql:5432",
        "postgresql",
    ]
