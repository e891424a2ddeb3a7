"""A one-line progress display on a terminal (stage, bytes, rate); silent otherwise,
so logs and pipes are never cluttered with carriage returns."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

from backupagent.cli.common import human_size


class ProgressLine:
    def __init__(self, stream: Optional[TextIO] = None, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self._width = 0
        self._started = time.monotonic()

    def show(self, stage: str, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        text = (
            f"{self.label}{stage:<11} {human_size(done):>10}  "
            f"{human_size(done / elapsed)}/s  {elapsed:5.0f}s {extra}"
        ).rstrip()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def __call__(self, p: Any) -> None:
        """Pipeline progress callback (backupagent.pipeline.run.Progress)."""
        extra = f"-> {human_size(p.stored_bytes)} stored" if p.stored_bytes else ""
        self.show(p.stage, p.dump_bytes, extra)

    def restore(self, stage: str, stored: int, fed: int, total: Optional[int]) -> None:
        """Restore progress callback (backupagent.jobs.restore.restore_backup):
        the dump fed to the restore tool, and how much of the stored object
        was read, as a percentage when its size is known."""
        if stage == "checking":
            extra = "row counts against the manifest"
        else:
            extra = f"{human_size(stored)} read"
            if total:
                extra += f" of {human_size(total)} ({min(100, stored * 100 // total)} %)"
        self.show(stage, fed, extra)

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
