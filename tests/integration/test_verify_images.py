"""The locally built test images follow the official images' environment contract.

Verification code is written against ``postgres:<major>``, ``mariadb:<v>`` and
``redis:<major>`` from Docker Hub; these tests make sure the local stand-ins
behave the same way for what the agent relies on, so a pass here means
something on a real host.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator

import pytest

from backupagent.verify.container import LABEL, ManagedContainer, cleanup_leftovers
from backupagent.verify.errors import VerifyError

pytestmark = pytest.mark.integration


@pytest.fixture
def docker_client(docker_engine: Any) -> Iterator[Any]:
    client = docker_engine.client
    yield client
    left = client.containers.list(all=True, filters={"label": f"{LABEL}=true"})
    cleanup_leftovers(client)
    assert left == []


def _box(client: Any, image: str, env: Dict[str, str]) -> ManagedContainer:
    return ManagedContainer(client, image, environment=env, timeout=120)


def test_image_build_is_cached(postgres_image: str) -> None:
    from tests.images.build import build_image

    started = time.monotonic()
    messages: list = []
    assert build_image("postgres", log=messages.append) == postgres_image
    assert time.monotonic() - started < 10
    assert messages == [f"{postgres_image}: cached"]


def test_postgres_contract_user_db_and_password_auth(
    postgres_image: str, docker_client: Any
) -> None:
    env = {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "appdb"}
    with _box(docker_client, postgres_image, env) as box:
        box.wait_ready(["pg_isready", "-q", "-h", "127.0.0.1", "-U", "app"], 60, "postgres")
        tcp = ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "appdb", "-w", "-Atc"]
        # over TCP without the password: refused (scram-sha-256 by default)
        assert box.exec([*tcp, "SELECT 1"]).exit_code != 0
        ok = box.exec([*tcp, "SELECT current_user, current_database()"],
                      environment={"PGPASSWORD": "s3cret"})  # fmt: skip
        assert ok.exit_code == 0, ok.err_text
        assert ok.text.strip() == "app|appdb"
        res = box.exec(["sh", "-c", "echo $PGDATA; ls $PGDATA/PG_VERSION"])
        assert res.text.split()[0] == "/var/lib/postgresql/data"


def test_postgres_without_password_refuses_to_start(
    postgres_image: str, docker_client: Any
) -> None:
    with _box(docker_client, postgres_image, {}) as box:
        with pytest.raises(VerifyError) as info:
            box.wait_ready(["pg_isready", "-h", "127.0.0.1"], 30, "postgres")
        assert "superuser password is not specified" in str(info.value)


def test_mariadb_contract_root_password_and_database(
    mariadb_image: str, docker_client: Any
) -> None:
    env = {"MARIADB_ROOT_PASSWORD": "r00t'pw", "MARIADB_DATABASE": "shop"}
    with _box(docker_client, mariadb_image, env) as box:
        probe = ["mariadb-admin", "-uroot", "-h127.0.0.1", "--protocol=TCP", "ping"]
        box.wait_ready(probe, 90, "mariadb", expect="alive", environment={"MYSQL_PWD": "r00t'pw"})
        q = ["mariadb", "-uroot", "-h127.0.0.1", "--protocol=TCP", "-N", "-e", "SHOW DATABASES"]
        assert box.exec(q).exit_code != 0  # no password: refused
        res = box.exec(q, environment={"MYSQL_PWD": "r00t'pw"})
        assert res.exit_code == 0, res.err_text
        assert "shop" in res.text.split()


def test_redis_contract_data_dir_and_port(redis_image: str, docker_client: Any) -> None:
    with _box(docker_client, redis_image, {}) as box:
        box.wait_ready(["redis-cli", "-p", "6379", "ping"], 30, "redis", expect="PONG")
        res = box.exec(["redis-cli", "CONFIG", "GET", "dir"])
        assert res.text.split()[-1] == "/data"
        who = box.exec(["sh", "-c", "ps -o user= -p 1 2>/dev/null || stat -c %U /proc/1"])
        assert "redis" in who.text
