"""release_freed_memory: a fragmented heap's free pages go back to the kernel.

This is the mechanism behind the soak's flat RSS (docs/performance.md,
"Soak"): without the trim, glibc keeps pages freed in the middle of an arena.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import threading
from typing import Any, List

import pytest

from backupagent.daemon.memtrim import release_freed_memory

glibc_only = pytest.mark.skipif(
    not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc only"
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@glibc_only
def test_a_fragmented_arena_is_given_back() -> None:
    keep: List[bytearray] = []

    def churn() -> None:
        # In a thread of its own (its own arena, as a pipeline thread): 60 MB
        # of 2 KB blocks (malloc, not pymalloc), every 16th kept so the freed
        # space lies in the middle of the heap, not at its top.
        blocks = [bytearray(2048) for _ in range(30_000)]
        keep.extend(blocks[::16])
        del blocks

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = _rss_mb()
    assert release_freed_memory() is True
    after = _rss_mb()
    assert before - after > 20, (before, after)
    assert len(keep) == 1875


def test_never_raises_and_is_idempotent() -> None:
    release_freed_memory()
    assert release_freed_memory() in (True, False)


_ARENAS_PROBE = """
import ctypes, sys, threading
from backupagent.daemon.memtrim import limit_arenas
if sys.argv[1] == "cap":
    assert limit_arenas(2)
start, done = threading.Barrier(9), threading.Event()
def work():
    keep = [bytearray(3000) for _ in range(50)]  # malloc in this thread's arena
    start.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
start.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fh = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, fh)
libc.fclose(fh)
done.set()
"""


@glibc_only
@pytest.mark.parametrize(("mode", "most"), [("cap", 2), ("default", 16)])
def test_the_daemon_caps_malloc_arenas(tmp_path: Any, mode: str, most: int) -> None:
    out = tmp_path / "malloc.xml"
    subprocess.run([sys.executable, "-c", _ARENAS_PROBE, mode, str(out)], check=True, timeout=60)
    arenas = out.read_text().count("<heap nr=")
    if mode == "cap":
        assert arenas <= most
    else:  # eight threads allocating at once get arenas of their own
        assert arenas > 2
