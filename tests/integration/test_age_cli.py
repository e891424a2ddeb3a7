"""Interoperability with the reference ``age`` CLI (apt-get install age).

What the agent writes must open with ``age -d -i key`` when the agent is not
there, and the agent must read what ``age`` writes: X25519, passphrase
(scrypt, driven through a pseudo-terminal because age reads passphrases from
/dev/tty only) and ASCII armor, small and streamed large.
"""

from __future__ import annotations

import hashlib
import io
import os
import pty
import random
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from backupagent.crypto import age
from tests.servers import require_binary

pytestmark = pytest.mark.integration

K = age.CHUNK_SIZE
SIZES = [0, 1, K - 1, K, K + 1, 2 * K, 1024 * 1024 + 3]
BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def age_bin() -> str:
    return require_binary("age", "apt-get install age")


@pytest.fixture(scope="module")
def keygen_bin() -> str:
    return require_binary("age-keygen", "apt-get install age")


@pytest.fixture(scope="module")
def cli_key(keygen_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, str]:
    """An identity file made by age-keygen, and its recipient."""
    path = tmp_path_factory.mktemp("agekey") / "key.txt"
    subprocess.run([keygen_bin, "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        [keygen_bin, "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, recipient


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed * 1000003 + n).randbytes(n)


def _run(argv: List[str], stdin: bytes = b"") -> bytes:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _run_with_tty(argv: List[str], passphrase: bytes, timeout: float = 60) -> Tuple[int, bytes]:
    """Run ``argv`` on a pseudo-terminal, typing ``passphrase`` at each prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # child: never returns
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - argv list, no shell
        finally:
            os._exit(127)
    out = b""
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            while sent < out.lower().count(b"passphrase"):
                os.write(fd, passphrase + b"\n")
                sent += 1
    finally:
        os.close(fd)
    for _ in range(int(timeout * 10)):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), out
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"{argv[0]} did not finish; terminal output: {out!r}")


@pytest.mark.parametrize("n", SIZES)
def test_our_encryption_decrypts_with_age(age_bin: str, cli_key: Tuple[Path, str], n: int) -> None:
    key, recipient = cli_key
    data = _data(n)
    out = io.BytesIO()
    age.encrypt_stream(io.BytesIO(data), out, [recipient])
    assert _run([age_bin, "-d", "-i", str(key)], out.getvalue()) == data


@pytest.mark.parametrize("n", SIZES)
def test_age_encryption_decrypts_with_us(age_bin: str, cli_key: Tuple[Path, str], n: int) -> None:
    key, recipient = cli_key
    data = _data(n, seed=2)
    ct = _run([age_bin, "-r", recipient], data)
    assert age.Decryptor(io.BytesIO(ct), age.load_identities(key)).read() == data


def test_multiple_recipients_with_age(
    age_bin: str, cli_key: Tuple[Path, str], tmp_path: Path
) -> None:
    key, recipient = cli_key
    ours = age.generate_identity()
    data = _data(3 * K + 11)
    out = io.BytesIO()
    age.encrypt_stream(io.BytesIO(data), out, [ours.recipient, recipient])
    assert _run([age_bin, "-d", "-i", str(key)], out.getvalue()) == data
    ct = _run([age_bin, "-r", recipient, "-r", ours.recipient], data)
    assert age.Decryptor(io.BytesIO(ct), [ours]).read() == data


def test_wrong_key_fails_on_both_sides(
    age_bin: str, cli_key: Tuple[Path, str], keygen_bin: str, tmp_path: Path
) -> None:
    key, recipient = cli_key
    stranger = age.generate_identity()
    ct = _run([age_bin, "-r", recipient], b"dump")
    with pytest.raises(age.AgeNoIdentityMatchError):
        age.Decryptor(io.BytesIO(ct), [stranger])
    out = io.BytesIO()
    age.encrypt_stream(io.BytesIO(b"dump"), out, [stranger.recipient])
    proc = subprocess.run(
        [age_bin, "-d", "-i", str(key)], input=out.getvalue(), capture_output=True, timeout=60
    )
    assert proc.returncode != 0
    assert b"no identity matched" in proc.stderr


def test_our_identity_file_works_with_age(age_bin: str, keygen_bin: str, tmp_path: Path) -> None:
    ident = age.generate_identity()
    path = tmp_path / "agent.key"
    age.write_identity_file(path, ident)
    derived = _run([keygen_bin, "-y", str(path)]).decode().strip()
    assert derived == ident.recipient
    ct = _run([age_bin, "-r", ident.recipient], b"hello")
    assert _run([age_bin, "-d", "-i", str(path)], ct) == b"hello"


@pytest.mark.parametrize("n", [0, 47, 48, 1000, K + 1])
def test_armor_both_ways(age_bin: str, cli_key: Tuple[Path, str], n: int) -> None:
    key, recipient = cli_key
    data = _data(n, seed=3)
    armored = _run([age_bin, "-a", "-r", recipient], data)
    assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    dec = age.Decryptor(io.BytesIO(armored), age.load_identities(key))
    assert dec.armored and dec.read() == data
    out = io.BytesIO()
    age.encrypt_stream(io.BytesIO(data), out, [recipient], armor=True)
    assert _run([age_bin, "-d", "-i", str(key)], out.getvalue()) == data


def test_passphrase_from_age_decrypts_with_us(age_bin: str, tmp_path: Path) -> None:
    data = _data(K + 5, seed=4)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    enc = tmp_path / "p.age"
    code, screen = _run_with_tty([age_bin, "-p", "-o", str(enc), str(plain)], b"tr0ub4dor&3")
    assert code == 0, screen
    assert b"-> scrypt " in enc.read_bytes()
    assert age.Decryptor(io.BytesIO(enc.read_bytes()), [], passphrase="tr0ub4dor&3").read() == data
    with pytest.raises(age.AgeNoIdentityMatchError):
        age.Decryptor(io.BytesIO(enc.read_bytes()), [], passphrase="wrong")


def test_our_passphrase_encryption_decrypts_with_age(age_bin: str, tmp_path: Path) -> None:
    data = _data(2 * K, seed=5)
    enc = tmp_path / "p.age"
    with enc.open("wb") as fh:
        age.encrypt_stream(io.BytesIO(data), fh, [age.ScryptRecipient("s3cret pass", 16)])
    out = tmp_path / "p.out"
    code, screen = _run_with_tty([age_bin, "-d", "-o", str(out), str(enc)], b"s3cret pass")
    assert code == 0, screen
    assert out.read_bytes() == data


class _BlockSource:
    """Deterministic pseudo-random blocks, hashed as produced."""

    def __init__(self, total: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.left = total
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, 1 << 20 if n < 0 else n)
        block = self.rng.randbytes(n)
        self.left -= n
        self.sha.update(block)
        return block


class _HashSink:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, b: Any) -> None:
        self.sha.update(b)
        self.n += len(b)

    def close(self) -> None:
        pass


def _pump(src: Any, dst: Any, errors: List[BaseException]) -> None:
    try:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            dst.write(block)
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)
    finally:
        dst.close()


def test_large_stream_ours_to_age(age_bin: str, cli_key: Tuple[Path, str]) -> None:
    key, recipient = cli_key
    proc = subprocess.Popen(
        [age_bin, "-d", "-i", str(key)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    sink = _HashSink()
    errors: List[BaseException] = []
    reader = threading.Thread(target=_pump, args=(proc.stdout, sink, errors))
    reader.start()
    src = _BlockSource(BIG, seed=6)
    try:
        age.encrypt_stream(src, proc.stdin, [recipient])
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        reader.join(timeout=120)
        assert proc.wait(timeout=120) == 0
    assert not errors
    assert sink.n == BIG
    assert sink.sha.hexdigest() == src.sha.hexdigest()


def test_large_stream_age_to_ours(age_bin: str, cli_key: Tuple[Path, str]) -> None:
    key, recipient = cli_key
    proc = subprocess.Popen(
        [age_bin, "-r", recipient], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    src = _BlockSource(BIG, seed=7)
    errors: List[BaseException] = []
    writer = threading.Thread(target=_pump, args=(src, proc.stdin, errors))
    writer.start()
    sink = _HashSink()
    try:
        n = age.decrypt_stream(proc.stdout, sink, age.load_identities(key))
    finally:
        writer.join(timeout=120)
        assert proc.wait(timeout=120) == 0
    assert not errors
    assert n == BIG == sink.n
    assert sink.sha.hexdigest() == src.sha.hexdigest()


def test_truncated_age_output_is_rejected(age_bin: str, cli_key: Tuple[Path, str]) -> None:
    key, recipient = cli_key
    ct = _run([age_bin, "-r", recipient], _data(3 * K))
    for cut in (len(ct) - 1, len(ct) - (K + 16), len(ct) - 100_000):
        with pytest.raises(age.AgePayloadError):
            age.decrypt_stream(io.BytesIO(ct[:cut]), _HashSink(), age.load_identities(key))
