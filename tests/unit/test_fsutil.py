"""fsutil.atomic_write: replacing a file keeps who owns it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backupagent.fsutil import atomic_write

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@needs_root
def test_a_replaced_file_keeps_its_owner_and_group(tmp_path: Path) -> None:
    """What `sudo backupagent register --force` does to the service user's api-key."""
    key = tmp_path / "api-key"
    key.write_text("old\n")
    os.chown(key, 4321, 4322)
    atomic_write(key, b"new\n", mode=0o600)
    st = os.stat(key)
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert key.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["api-key"]  # no temp file left


def test_a_new_file_belongs_to_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    atomic_write(path, b"x: 1\n", mode=0o640)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o640


@needs_root
def test_re_registering_as_root_leaves_the_key_to_the_service_user(tmp_path: Path) -> None:
    from backupagent.settings import load_settings, save_registration

    settings = load_settings(tmp_path / "etc", tmp_path / "state")
    save_registration(
        settings, server_url="https://cp.example", agent_id="a1", api_key="k1", hostname="h"
    )
    os.chown(settings.api_key_file, 4321, 4321)  # what install.sh does for the service user
    save_registration(
        settings, server_url="https://cp.example", agent_id="a2", api_key="k2", hostname="h"
    )
    st = os.stat(settings.api_key_file)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (4321, 0o600)
    assert settings.read_api_key() == "k2"
