"""Where the restored bytes come from: the stored object, or the local spool.

The point of verification is to prove the *stored* backup restores, key
included, so the default path reads the object back from the target,
decrypts it with the host's age identity, decompresses it and streams the
plaintext into the container (``pipeline.restore`` checks the SHA-256,
every age chunk and every zstd frame on the way, and raises before the
restore tool sees the end of its input if anything is off).

A host that only *encrypts* (its identity lives elsewhere, as it should on a
database host) cannot decrypt. Then the plaintext dump the job kept in its
spool is restored instead, and the stored object is still read end to end
and its SHA-256 compared with the manifest, concurrently with the restore.
The outcome says which path was taken.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from backupagent.verify.errors import VERIFY_NO_SOURCE, VerifyError

log = logging.getLogger(__name__)

PATH_STORED = "stored-object"
PATH_SPOOL = "local-spool"
READ_SIZE = 1024 * 1024


def _is_encrypted(manifest: Any) -> Optional[bool]:
    fmt = ((manifest or {}).get("encryption") or {}).get("format")
    if fmt is None:
        return None
    return fmt == "age-v1"


def _is_compressed(manifest: Any) -> Optional[bool]:
    algo = ((manifest or {}).get("compression") or {}).get("algorithm")
    if algo is None:
        return None
    return algo == "zstd"


class RestoreSource:
    """The plaintext dump as chunks, plus what was proven about the stored object."""

    def __init__(self, path_taken: str, expected_sha256: Optional[str]) -> None:
        self.path_taken = path_taken
        self.expected_sha256 = expected_sha256
        self.stored_sha256: Optional[str] = None
        self.stored_bytes = 0
        self.dump_bytes = 0
        self.encrypted: Optional[bool] = None
        self._stream: Any = None
        self._file: Any = None
        self._hasher: Optional[threading.Thread] = None
        self._hash_error: Optional[BaseException] = None

    def chunks(self) -> Iterator[bytes]:
        """Plaintext chunks; the last read runs the end-of-stream checks (may raise)."""
        while True:
            data = self._stream.read(READ_SIZE)
            if not data:
                break
            self.dump_bytes += len(data)
            yield data
        if self.path_taken == PATH_STORED:
            self.stored_sha256 = self._stream.sha256
            self.stored_bytes = self._stream.stored_size

    def finish(self) -> None:
        """Wait for the spool path's stored-object digest and compare it."""
        if self._hasher is not None:
            self._hasher.join()
            self._hasher = None
            if self._hash_error is not None:
                raise self._hash_error
            self._compare()

    def _compare(self) -> None:
        from backupagent.pipeline.errors import CHECKSUM_MISMATCH

        if self.expected_sha256 and self.stored_sha256 != self.expected_sha256.lower():
            raise VerifyError(
                f"SHA-256 of the stored backup is {self.stored_sha256}, but its manifest says "
                f"{self.expected_sha256}: the object is corrupt or was replaced; do not trust it",
                code=CHECKSUM_MISMATCH,
            )

    def close(self) -> None:
        for obj in (self._stream, self._file):
            close = getattr(obj, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # closing after a failure: the failure matters
                    log.debug("closing the restore source: %s", exc)
        if self._hasher is not None:
            self._hasher.join(5)


def _hash_object(target: Any, key: str, source: RestoreSource) -> None:
    try:
        reader = target.open_reader(key)
        h = hashlib.sha256()
        try:
            while True:
                data = reader.read(READ_SIZE)
                if not data:
                    break
                h.update(data)
                source.stored_bytes += len(data)
        finally:
            reader.close()
        source.stored_sha256 = h.hexdigest()
    except BaseException as exc:  # reported by finish() on the caller's thread
        source._hash_error = exc


def open_source(
    target: Any,
    object_key: str,
    manifest: Any,
    *,
    identities: Sequence[Any] = (),
    spool_path: Optional[Path] = None,
) -> RestoreSource:
    """Open the restore stream, choosing the stored object when this host can decrypt it."""
    from backupagent.crypto.errors import AgeNoIdentityMatchError
    from backupagent.pipeline.restore import open_restore_stream
    from backupagent.pipeline.zstd_framing import looks_zstd

    expected = (manifest or {}).get("sha256")
    encrypted = _is_encrypted(manifest)
    compressed = _is_compressed(manifest)
    why_not_stored = ""
    if encrypted is False or identities:
        source = RestoreSource(PATH_STORED, expected)
        reader = target.open_reader(object_key)
        try:
            source._stream = open_restore_stream(
                reader,
                list(identities),
                encrypted=encrypted,
                compressed=compressed,
                expected_sha256=expected,
            )
            source.encrypted = source._stream.encrypted
            return source
        except AgeNoIdentityMatchError as exc:
            reader.close()
            why_not_stored = str(exc)
        except BaseException:
            reader.close()
            raise
    else:
        why_not_stored = "this host holds no age identity"
    if spool_path is None or not Path(spool_path).is_file():
        raise VerifyError(
            f"cannot restore {object_key}: {why_not_stored}, and no local plaintext spool of "
            "the dump is available; give the host the identity file "
            "(settings verification.identityFile) or keep the job's spool for verification",
            code=VERIFY_NO_SOURCE,
        )
    source = RestoreSource(PATH_SPOOL, expected)
    source.encrypted = encrypted
    source._file = open(spool_path, "rb")  # noqa: SIM115 - closed by RestoreSource.close
    head = source._file.read(4)
    source._file.seek(0)
    source._stream = open_restore_stream(
        source._file, (), encrypted=False, compressed=looks_zstd(head)
    )
    source._hasher = threading.Thread(
        target=_hash_object, args=(target, object_key, source), name="verify-sha", daemon=True
    )
    source._hasher.start()
    return source
