"""LocalTarget-only promises on a real filesystem: containment, temp files, modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backupagent.targets.base import TargetError
from backupagent.targets.local import DIR_MODE, FILE_MODE, LocalTarget

pytestmark = pytest.mark.integration


def test_symlinked_directory_escape_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "host").symlink_to(outside)
    target = LocalTarget(str(root))
    with pytest.raises(TargetError, match="symlink"):
        target.open_writer("host/pg/db/x.dump")
    with pytest.raises(TargetError, match="symlink"):
        target.open_reader("host/x.dump")
    assert list(outside.iterdir()) == []
    assert list(target.list("host/")) == []


def test_symlinked_final_name_is_replaced_not_followed(tmp_path: Path) -> None:
    root, victim = tmp_path / "root", tmp_path / "victim"
    (root / "a").mkdir(parents=True)
    victim.write_bytes(b"precious")
    (root / "a" / "x.dump").symlink_to(victim)
    target = LocalTarget(str(root))
    with pytest.raises(TargetError):
        target.open_reader("a/x.dump")  # never read through a link
    assert not target.exists("a/x.dump")
    with target.open_writer("a/x.dump") as w:
        w.write(b"backup")
        w.commit()
    assert victim.read_bytes() == b"precious"
    assert not (root / "a" / "x.dump").is_symlink()
    assert (root / "a" / "x.dump").read_bytes() == b"backup"


def test_partial_file_invisible_until_commit(tmp_path: Path) -> None:
    target = LocalTarget(str(tmp_path))
    writer = target.open_writer("h/d/x.dump")
    writer.write(b"half")
    on_disk = os.listdir(tmp_path / "h" / "d")
    assert len(on_disk) == 1 and on_disk[0].startswith(".x.dump.partial-")
    assert list(target.list()) == []
    assert not target.exists("h/d/x.dump")
    writer.commit()
    assert os.listdir(tmp_path / "h" / "d") == ["x.dump"]
    assert [i.key for i in target.list()] == ["h/d/x.dump"]


def test_a_long_stream_is_pushed_to_disk_as_it_goes(tmp_path: Path) -> None:
    """Dirty pages are flushed every SYNC_EVERY bytes, not all at the commit;
    the partial file stays invisible and the content is exact."""
    from backupagent.targets.local import SYNC_EVERY

    target = LocalTarget(str(tmp_path))
    writer = target.open_writer("h/d/big.dump")
    piece = os.urandom(1 << 20)
    total = 2 * SYNC_EVERY + (3 << 20)
    for _ in range(total // len(piece)):
        writer.write(piece)
    assert writer.syncs == 2
    assert not target.exists("h/d/big.dump")
    writer.commit()
    data = (tmp_path / "h" / "d" / "big.dump").read_bytes()
    assert len(data) == total and data == piece * (total // len(piece))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_do_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        target = LocalTarget(str(tmp_path / "root"))
        with target.open_writer("h/d/x.dump") as w:
            w.write(b"x")
            w.commit()
    finally:
        os.umask(old)
    for d in ("h", "h/d"):
        assert stat.S_IMODE(os.stat(tmp_path / "root" / d).st_mode) == DIR_MODE
    assert stat.S_IMODE(os.stat(tmp_path / "root" / "h/d/x.dump").st_mode) == FILE_MODE


def test_cleanup_partials(tmp_path: Path) -> None:
    target = LocalTarget(str(tmp_path))
    crashed = target.open_writer("h/d/x.dump")
    crashed.write(b"left by a crash")
    crashed._fh.flush()
    with target.open_writer("h/d/y.dump") as w:
        w.write(b"good")
        w.commit()
    assert target.cleanup_partials(older_than=3600) == 0
    assert target.cleanup_partials() == 1
    assert sorted(os.listdir(tmp_path / "h" / "d")) == ["y.dump"]
    crashed.abort()  # its temp file is gone already: still fine


def test_relative_root_refused() -> None:
    with pytest.raises(TargetError, match="absolute"):
        LocalTarget("relative/dir")


def test_url_is_a_file_uri(tmp_path: Path) -> None:
    target = LocalTarget(str(tmp_path / "with space"))
    url = target.url_for("h/x.dump")
    assert url.startswith("file:///") and "with%20space" in url
    with target.open_writer("h/x.dump") as w:
        w.write(b"1")
        assert w.commit() == url


def test_list_prefix_cannot_climb_out(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x")
    target = LocalTarget(str(tmp_path / "root"))
    with target.open_writer("a/b") as w:
        w.write(b"1")
        w.commit()
    assert list(target.list("../")) == []
    assert [i.key for i in target.list("a")] == ["a/b"]
