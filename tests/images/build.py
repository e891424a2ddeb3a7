"""Build the database images the verification tests run, locally.

No registry is reachable on test machines, so the official ``postgres``,
``mariadb`` and ``redis`` images cannot be pulled. Instead a minimal Debian
root (``debootstrap --variant=minbase``) with the distribution's server
package is imported as an image whose entrypoint follows the official image's
environment contract; the agent then treats it exactly as it would treat
``postgres:15`` from Docker Hub.

A tag that already exists is reused (``docker image inspect``), so only the
first run on a machine pays for the build. Downloaded packages are kept in a
debootstrap cache directory so a rebuild does not fetch them again.

CLI: ``python -m tests.images.build postgres|mariadb|redis|all [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path(
    os.environ.get("BACKUPAGENT_DEBOOTSTRAP_CACHE", "/var/cache/backupagent-test-debs")
)

# What a minimal server image does not need; removed before import.
_PRUNE = (
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/cache/debconf/templates.dat-old",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/zoneinfo/right",
    "usr/share/zoneinfo/posix",
)


@dataclass(frozen=True)
class ImageSpec:
    """One test image: its tag, Debian packages and docker-import changes."""

    kind: str
    tag: str
    packages: Tuple[str, ...]
    entrypoint: str
    changes: Tuple[str, ...]
    extra_files: Tuple[Tuple[str, str], ...] = ()
    drop: Tuple[str, ...] = ()


_MARIADB_CNF = """\
# The official image listens on every interface and runs as mysql.
[mariadbd]
bind-address = 0.0.0.0
port = 3306
user = mysql
skip-name-resolve
"""

SPECS: Dict[str, ImageSpec] = {
    "postgres": ImageSpec(
        kind="postgres",
        tag="backupagent-test/postgres:15",
        packages=("postgresql-15",),
        entrypoint="postgres-entrypoint.sh",
        changes=(
            "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:"
            "/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV LANG=C.UTF-8",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["postgres"]',
            "EXPOSE 5432",
        ),
        # postgresql-common's postinst creates a "main" cluster we never use; the
        # JIT provider (LLVM, z3: 130 MB) is optional and loaded only if present.
        drop=(
            "var/lib/postgresql/15",
            "etc/postgresql/15",
            "usr/lib/postgresql/15/lib/llvmjit.so",
            "usr/lib/postgresql/15/lib/llvmjit_types.bc",
            "usr/lib/postgresql/15/lib/bitcode",
            "usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
            "usr/lib/x86_64-linux-gnu/libz3.so.4",
            "usr/share/i18n",
        ),
    ),
    "mariadb": ImageSpec(
        kind="mariadb",
        tag="backupagent-test/mariadb:10.11",
        packages=("mariadb-server", "mariadb-client"),
        entrypoint="mariadb-entrypoint.sh",
        changes=(
            "ENV LANG=C.UTF-8",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["mariadbd"]',
            "EXPOSE 3306",
        ),
        extra_files=(("etc/mysql/mariadb.conf.d/99-container.cnf", _MARIADB_CNF),),
        # the package's postinst initialises a data dir; the entrypoint makes its own
        drop=("var/lib/mysql",),
    ),
    "redis": ImageSpec(
        kind="redis",
        tag="backupagent-test/redis:7",
        packages=("redis-server",),
        entrypoint="redis-entrypoint.sh",
        changes=(
            "ENV LANG=C.UTF-8",
            "WORKDIR /data",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["redis-server"]',
            "EXPOSE 6379",
        ),
    ),
}


class BuildError(RuntimeError):
    """An image could not be built; the message names the step and its output tail."""


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (so a local proxy/mirror keeps working).

    ``BACKUPAGENT_DEBIAN_MIRROR`` overrides it.
    """
    env = os.environ.get("BACKUPAGENT_DEBIAN_MIRROR")
    if env:
        return env
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        # deb822: a stanza with URIs and a Suites line naming the release
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        # one-line format
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and SUITE in parts[2:]:
                uri = next((p for p in parts[1:] if "://" in p), None)
                if uri and parts[parts.index(uri) + 1] == SUITE:
                    return uri
    return DEFAULT_MIRROR


RECIPE_LABEL = "io.backupagent.test-recipe"


def recipe_hash(spec: ImageSpec) -> str:
    """Digest of everything that defines an image, so a changed recipe rebuilds it."""
    h = hashlib.sha256(repr(spec).encode("utf-8"))
    h.update((HERE / spec.entrypoint).read_bytes())
    return h.hexdigest()[:16]


def image_exists(tag: str, recipe: Optional[str] = None) -> bool:
    """True if ``tag`` exists (and, given ``recipe``, was built from that recipe)."""
    proc = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        return False
    if recipe is None:
        return True
    labels = json.loads(proc.stdout or b"null") or {}
    return labels.get(RECIPE_LABEL) == recipe


def _run(argv: List[str], what: str) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = proc.stdout.decode("utf-8", "replace")[-3000:]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")


def _prune(root: Path, spec: ImageSpec) -> None:
    for rel in _PRUNE + spec.drop:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            if rel in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
                (path / "partial").mkdir(parents=True, exist_ok=True)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _import(root: Path, spec: ImageSpec) -> None:
    argv = ["docker", "import", "-c", f"LABEL {RECIPE_LABEL}={recipe_hash(spec)}"]
    for change in spec.changes:
        argv += ["-c", change]
    argv += ["-", spec.tag]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    try:
        imp = subprocess.run(
            argv, stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
        )
    finally:
        tar.stdout.close()
        tar_rc = tar.wait()
    if tar_rc != 0 or imp.returncode != 0:
        raise BuildError(
            f"importing {spec.tag} failed (tar exit {tar_rc}, docker import exit "
            f"{imp.returncode}): {imp.stdout.decode('utf-8', 'replace')[-2000:]}"
        )


def build_image(
    kind: str,
    *,
    force: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> str:
    """Build (or reuse) the test image for ``kind``; return its tag."""
    spec = SPECS[kind]
    say = log or (lambda _msg: None)
    if not force and image_exists(spec.tag, recipe_hash(spec)):
        say(f"{spec.tag}: cached")
        return spec.tag
    for tool in ("debootstrap", "docker", "tar"):
        if shutil.which(tool) is None:
            raise BuildError(f"`{tool}` is not installed (apt-get install debootstrap docker.io)")
    started = time.monotonic()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"backupagent-img-{kind}-", dir="/var/tmp"))
    root = workdir / "root"
    try:
        mirror = debian_mirror()
        say(f"{spec.tag}: debootstrap {SUITE} from {mirror} with {','.join(spec.packages)}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(spec.packages)}",
                f"--cache-dir={CACHE_DIR}",
                SUITE,
                str(root),
                mirror,
            ],
            f"debootstrap for {spec.tag}",
        )
        _prune(root, spec)
        entry = root / "usr/local/bin/docker-entrypoint.sh"
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / spec.entrypoint, entry)
        entry.chmod(0o755)
        for rel, content in spec.extra_files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        say(f"{spec.tag}: importing")
        _import(root, spec)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"{spec.tag}: built in {time.monotonic() - started:.1f}s")
    return spec.tag


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.images.build", description=__doc__)
    parser.add_argument("kind", choices=[*sorted(SPECS), "all"])
    parser.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    args = parser.parse_args(argv)
    kinds = sorted(SPECS) if args.kind == "all" else [args.kind]
    try:
        for kind in kinds:
            tag = build_image(kind, force=args.force, log=lambda m: print(m, flush=True))
            print(tag, flush=True)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
