"""A target that is a directory on this host (``file:///abs/dir``).

Atomicity: an object is written as ``.<name>.partial-<random>`` in its final
directory, fsynced, renamed over the final name (rename within a directory is
atomic on POSIX) and the directory fsynced, so after a crash there is either
the whole object or only a dot-led partial file that ``list`` never shows and
``cleanup_partials`` removes.

Containment: paths are opened one directory at a time relative to the root's
file descriptor with ``O_NOFOLLOW``, so a symlink planted anywhere below the
root (``root/host -> /etc``) is refused instead of followed, and there is no
window between a check and the use. A ``realpath`` check backs it up.
Symlinks below the root are therefore not supported at all; the root itself
may be one (it is resolved once, when the target is created).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from backupagent.targets.base import (
    ObjectInfo,
    ObjectNotFound,
    Reader,
    TargetError,
    WriterBase,
    validate_key,
)

DIR_MODE = 0o750
FILE_MODE = 0o640
PARTIAL_MARK = ".partial-"
_WRITE_BUFFER = 1 << 20
# Data is pushed to disk every SYNC_EVERY bytes while the backup streams, so
# the fsync before the rename has little left to do (it sits on the job's
# critical path) and a large backup never piles gigabytes of dirty pages onto
# the host's page cache for one writeback storm at the end.
SYNC_EVERY = 32 << 20

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _is_partial(name: str) -> bool:
    return name.startswith(".") and PARTIAL_MARK in name


class LocalTarget:
    """Objects stored as files below ``root``; keys map to relative paths."""

    scheme = "file"

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        raw = os.fspath(path)
        if not raw or not os.path.isabs(os.path.expanduser(raw)):
            raise TargetError(
                f"local target path {raw!r} is not absolute: give a full path like /var/backups/db"
            )
        self.root = os.path.realpath(os.path.expanduser(raw))

    def __repr__(self) -> str:
        return f"LocalTarget({self.root!r})"

    # paths ---------------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self.root, *validate_key(key).split("/"))

    def url_for(self, key: str) -> str:
        return Path(self._path(key)).as_uri()

    def _open_root(self, create: bool) -> int:
        if create:
            self._makedirs_root()
        try:
            return os.open(self.root, _O_DIR | _O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TargetError(
                f"cannot open local target directory {self.root}: {exc.strerror}"
            ) from None

    def _makedirs_root(self) -> None:
        try:
            os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise TargetError(
                f"cannot create local target directory {self.root}: {exc.strerror} "
                "(check the path and the agent user's permissions)"
            ) from None

    def _open_dir(self, parts: List[str], create: bool) -> int:
        """A descriptor for root/parts..., never following a symlink on the way."""
        fd = self._open_root(create)
        try:
            for name in parts:
                if create:
                    try:
                        os.mkdir(name, DIR_MODE, dir_fd=fd)
                        os.chmod(name, DIR_MODE, dir_fd=fd)  # umask may have narrowed it
                        os.fsync(fd)  # persist the new directory entry
                    except FileExistsError:
                        pass
                try:
                    nfd = os.open(name, _O_DIR | _O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise TargetError(
                            f"refusing {os.path.join(self.root, *parts)}: '{name}' is a symlink "
                            "or not a directory, and could lead outside the target directory "
                            f"{self.root}; remove it"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            real = (
                os.path.realpath(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else None
            )
            if real is not None and real != self.root and not real.startswith(self.root + os.sep):
                raise TargetError(
                    f"refusing {real}: it is outside the target directory {self.root}"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _split(self, key: str) -> Tuple[List[str], str]:
        parts = validate_key(key).split("/")
        return parts[:-1], parts[-1]

    # writing -------------------------------------------------------------
    def open_writer(self, key: str) -> LocalWriter:
        dirs, name = self._split(key)
        try:
            dir_fd = self._open_dir(dirs, create=True)
        except TargetError:
            raise
        except OSError as exc:
            raise TargetError(
                f"cannot create directory for {self.url_for(key)}: {exc.strerror}"
            ) from None
        return LocalWriter(self, dir_fd, name, self.url_for(key))

    # reading -------------------------------------------------------------
    def open_reader(self, key: str) -> Reader:
        dirs, name = self._split(key)
        try:
            dir_fd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {self.url_for(key)}") from None
        except OSError as exc:
            raise TargetError(f"cannot read {self.url_for(key)}: {exc.strerror}") from None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | _O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {self.url_for(key)}") from None
        except OSError as exc:
            raise TargetError(f"cannot read {self.url_for(key)}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        return open(fd, "rb", buffering=_WRITE_BUFFER)

    def _stat(self, key: str) -> Optional[os.stat_result]:
        dirs, name = self._split(key)
        try:
            dir_fd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            return None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, key: str) -> bool:
        return self._stat(key) is not None

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error (as on S3)."""
        dirs, name = self._split(key)
        try:
            dir_fd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            return
        try:
            os.unlink(name, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TargetError(f"cannot delete {self.url_for(key)}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key (as S3 lists).

        Dot-led entries (partial files) and symlinks are skipped.
        """
        base_dirs = prefix.split("/")[:-1] if prefix else []
        start = os.path.realpath(os.path.join(self.root, *base_dirs))
        if start != self.root and not start.startswith(self.root + os.sep):
            return  # the prefix climbs out (``../``) or through a symlink
        if not os.path.isdir(start):
            return
        found: List[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, self.root)
            rel_parts = [] if rel == "." else rel.split(os.sep)
            for fname in filenames:
                if fname.startswith("."):
                    continue
                key = "/".join([*rel_parts, fname])
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, fname))
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.timezone.utc)
                found.append(ObjectInfo(key, st.st_size, modified))
        found.sort(key=lambda info: info.key)
        yield from found

    def cleanup_partials(self, older_than: Union[float, dt.timedelta] = 0) -> int:
        """Remove partial files left by a crash; returns how many were removed.

        ``older_than`` (seconds or a timedelta) spares files a running upload
        may still be writing. Call at start-up, when no job is running, with 0.
        """
        age = older_than.total_seconds() if isinstance(older_than, dt.timedelta) else older_than
        cutoff = time.time() - float(age)
        removed = 0
        if not os.path.isdir(self.root):
            return 0
        for dirpath, _dirnames, filenames in os.walk(self.root, followlinks=False):
            for fname in filenames:
                if not _is_partial(fname):
                    continue
                full = os.path.join(dirpath, fname)
                try:
                    if os.lstat(full).st_mtime <= cutoff:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


class LocalWriter(WriterBase):
    def __init__(self, target: LocalTarget, dir_fd: int, name: str, url: str) -> None:
        super().__init__(url)
        self._dir_fd = dir_fd
        self._name = name
        self._tmp = f".{name[:180]}{PARTIAL_MARK}{secrets.token_hex(6)}"
        try:
            fd = os.open(
                self._tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                FILE_MODE,
                dir_fd=dir_fd,
            )
            os.fchmod(fd, FILE_MODE)
        except OSError as exc:
            os.close(dir_fd)
            raise TargetError(f"cannot create a file for {url}: {exc.strerror}") from None
        self._fh = open(fd, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 - closed in commit/abort
        self._unsynced = 0
        self.syncs = 0

    def _write(self, data: memoryview) -> None:
        try:
            self._fh.write(data)
            self._unsynced += len(data)
            if self._unsynced >= SYNC_EVERY:
                self._fh.flush()
                os.fdatasync(self._fh.fileno())
                self._unsynced = 0
                self.syncs += 1
        except OSError as exc:
            raise TargetError(f"writing {self.url} failed: {exc.strerror}") from None

    def _commit(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.rename(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except OSError as exc:
            raise TargetError(f"committing {self.url} failed: {exc.strerror}") from None
        os.close(self._dir_fd)
        self._dir_fd = -1

    def _abort(self) -> None:
        try:
            if not self._fh.closed:
                self._fh.close()
        except OSError:
            pass  # a failed flush of data we are discarding anyway
        if self._dir_fd < 0:
            return
        try:
            os.unlink(self._tmp, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._dir_fd)
            self._dir_fd = -1
