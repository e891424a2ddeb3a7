"""Byte streams of a backup: dump process -> zstd -> age -> target writer, and back.

Everything here streams in bounded chunks, so memory stays flat whatever the
size of the database. The job layer (``backupagent.jobs``) decides what a
result means (commit or abort); this package only moves and checks bytes.

- :mod:`.source`: the dump process (or a finished dump file) as a readable.
- :mod:`.stages`: write/close stages: zstd compressor and counting/hashing taps.
- :mod:`.run`: :func:`run_backup_pipeline`, the threaded backup stream.
- :mod:`.restore`: decrypt -> decompress -> native restore, SHA-256 checked.
- :mod:`.manifest`: the JSON manifest stored beside each backup.
"""

from __future__ import annotations

from backupagent.pipeline.errors import PipelineError

__all__ = ["PipelineError"]
