"""fsutil.atomic_write: replacing a file keeps who owns it."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from backupagent.fsutil import atomic_write
from tests.servers import os_user_exists, require

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


def _user_with_own_group() -> Any:
    """A non-root account whose primary group bears its name (install.sh's
    `useradd --user-group backupagent` shape), or None."""
    import grp
    import pwd

    for user in pwd.getpwall():
        with contextlib.suppress(KeyError):
            if user.pw_uid != 0 and grp.getgrgid(user.pw_gid).gr_name == user.pw_name:
                return user
    return None


@needs_root
def test_a_first_registration_by_root_gives_the_key_to_the_service_user(tmp_path: Path) -> None:
    """`sudo backupagent register` by hand, in the directory install.sh made
    (root:<service group> 0750): the daemon, running as that user, must be able
    to read its key, and nobody else."""
    from backupagent.settings import load_settings, save_registration

    user = _user_with_own_group()
    require(user is not None, "an account whose primary group has its name (useradd -U)")
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o750)
    os.chown(etc, 0, user.pw_gid)
    settings = load_settings(etc, tmp_path / "state")
    save_registration(
        settings, server_url="https://cp.example", agent_id="a1", api_key="k1", hostname="h"
    )
    key, yml = os.stat(settings.api_key_file), os.stat(settings.settings_file)
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (user.pw_uid, user.pw_gid, 0o600)
    assert (yml.st_uid, yml.st_gid, stat.S_IMODE(yml.st_mode)) == (0, user.pw_gid, 0o640)
    # Re-registering keeps that (atomic_write keeps owners of replaced files).
    save_registration(
        settings, server_url="https://cp.example", agent_id="a2", api_key="k2", hostname="h"
    )
    assert os.stat(settings.api_key_file).st_uid == user.pw_uid
    assert settings.read_api_key() == "k2"


@needs_root
def test_a_registration_in_a_root_group_directory_stays_roots(tmp_path: Path) -> None:
    import grp

    from backupagent.settings import load_settings, save_registration

    etc = tmp_path / "etc"
    etc.mkdir(mode=0o750)
    groups = grp.getgrall()
    lonely = next((g for g in groups if g.gr_gid and not os_user_exists(g.gr_name)), None)
    require(lonely is not None, "a group with no same-named user")
    os.chown(etc, 0, lonely.gr_gid)  # a group that names no user: nothing to guess
    settings = load_settings(etc, tmp_path / "state")
    save_registration(
        settings, server_url="https://cp.example", agent_id="a1", api_key="k1", hostname="h"
    )
    assert os.stat(settings.api_key_file).st_uid == 0
    assert os.stat(settings.settings_file).st_uid == 0
