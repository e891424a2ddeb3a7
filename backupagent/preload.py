"""Load modules in one thread before several threads would import them lazily.

Why: the agent keeps boto3, docker and cryptography out of memory until a
job needs them, so the first imports happen in worker threads (a job's, or
doctor's parallel checks). CPython's import can fail with ``KeyError:
'<package>'`` when threads import submodules of packages none has finished
loading (gh-83065 / bpo-38884); a doctor check crashed that way in a CI run.
Callers name what their threads will import and call :func:`preload` first;
afterwards each of those imports is a lookup in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Iterable

log = logging.getLogger(__name__)

_LOCK = threading.Lock()


def preload(names: Iterable[str]) -> None:
    """Import ``names`` in turn, one caller at a time.

    An import error is only logged: the code that needs the module imports
    it again and reports the error where it matters.
    """
    with _LOCK:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:
                log.debug("preloading %s failed: %s", name, exc)
