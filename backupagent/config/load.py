"""Config from disk: standalone YAML files, and the cache of the last good config.

A standalone user edits YAML by hand, so errors name the line and column, and
YAML's surprises (duplicate keys silently overriding, dates, non-string keys,
aliases that expand a small file into a huge document) are refused with a
message instead of being passed on. The cache lets a restarted daemon keep its
schedules while the control plane is unreachable; a damaged cache is a lost
convenience, never a reason for the daemon not to start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

import yaml

from backupagent.config.hashing import config_hash
from backupagent.config.model import AgentConfig
from backupagent.config.parse import SECTIONS, parse_config
from backupagent.errors import ConfigInvalid
from backupagent.fsutil import atomic_write
from backupagent.logs import utc_timestamp

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
MAX_FILE_BYTES = 4 * 1024 * 1024
# A config of thousands of schedules has well under this many values; YAML
# aliases can make a 1 kB file expand to billions, so the walk stops here.
MAX_NODES = 500_000
MAX_DEPTH = 32
CACHE_FILE = "config-cache.json"
CACHE_VERSION = 1


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys in a mapping (YAML keeps only the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *base" then overriding a key is the point of merges
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found a key that is not a plain value",
                key_node.start_mark,
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {json.dumps(str(key))}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config_file(path: PathLike) -> Tuple[dict, AgentConfig]:
    """Read and validate a standalone config file: ``(raw document, parsed config)``.

    Raises ConfigInvalid (source = the path) for an unreadable file, bad
    YAML (with line and column), a document that is not a mapping, or any
    validation problem.
    """
    source = str(path)
    data = _read(Path(path), source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigInvalid(
            [f"file: is not UTF-8 text (bad byte at offset {exc.start})"], source=source
        ) from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigInvalid([_yaml_problem(exc)], source=source) from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # one line: a problem is one log line
        raise ConfigInvalid([f"file: is not valid YAML ({reason})"], source=source) from None
    except RecursionError:
        raise ConfigInvalid(["file: YAML is nested too deeply"], source=source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a 5000-digit integer
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ConfigInvalid(
            [f"file: holds a value YAML cannot convert ({reason})"], source=source
        ) from None
    if doc is None:
        raise ConfigInvalid(
            [f"file: is empty; expected a mapping with keys {', '.join(SECTIONS)}"], source=source
        )
    problems = json_problems(doc)
    if problems:
        raise ConfigInvalid(problems, source=source)
    return doc, parse_config(doc, source=source)


def _read(path: Path, source: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigInvalid(["file: does not exist"], source=source) from None
    except IsADirectoryError:
        raise ConfigInvalid(["file: is a directory; expected a YAML file"], source=source) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigInvalid([f"file: cannot be read ({reason})"], source=source) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigInvalid(
            [f"file: is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB"], source=source
        )
    return data


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "file"
    what = exc.problem or exc.context or "invalid YAML"
    hint = ""
    if "alias" in f"{exc.context} {what}":
        hint = '; a value starting with "*" must be quoted, e.g. cron: "*/15 * * * *"'
    return f"{where}: {what}{hint}"


def json_problems(doc: Any) -> List[str]:
    """Why ``doc`` is not a plain JSON document (the shape ``GET /config`` returns).

    The raw document is hashed and cached as JSON, so YAML-only values (dates,
    binary, sets, non-string keys, NaN) are refused here with their path.
    The walk is bounded, so aliases cannot make it run away.
    """
    problems: List[str] = []
    budget = MAX_NODES
    stack: List[Tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return [f"document: has more than {MAX_NODES} values (YAML aliases?)"]
        where = path or "document"
        if depth > MAX_DEPTH:
            problems.append(f"{where}: is nested more than {MAX_DEPTH} levels deep")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(f"{where}: has a key that is not a string ({_short(key)})")
                    continue
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {value!r} is not a finite number")
        elif value is not None and not isinstance(value, (str, bool, int, float)):
            problems.append(
                f"{where}: is a YAML {type(value).__name__}, which JSON cannot hold; quote it"
            )
        if len(problems) >= 50:
            break
    return sorted(problems)


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return "a very large number"
    return f"{value!r:.40}"


class LastGoodConfigCache:
    """The last config the daemon applied, kept in the state dir as JSON (mode 0600).

    It holds the raw document (with any S3 or SMTP secrets the control plane
    sent), hence the mode. ``load`` re-validates it with the running agent's
    rules, so a cache written by an older version cannot bring in a config the
    current one would refuse.
    """

    def __init__(self, state_dir: PathLike) -> None:
        self.path = Path(state_dir) / CACHE_FILE

    def save(self, raw: Any) -> bool:
        """Write ``raw`` atomically. Returns False (and logs) when the disk refuses."""
        try:
            body = {
                "version": CACHE_VERSION,
                "savedAt": utc_timestamp(),
                "configHash": config_hash(raw),
                "config": raw,
            }
            data = json.dumps(body, sort_keys=True, indent=1).encode("ascii")
            atomic_write(self.path, data, mode=0o600)
        except (OSError, TypeError, ValueError) as exc:
            log.error("could not save the last good config to %s: %s", self.path, exc)
            return False
        return True

    def load(self) -> Optional[Tuple[dict, AgentConfig]]:
        """The cached ``(raw, config)``, or None when absent, unreadable, corrupt or now invalid."""
        try:
            return self._load()
        except Exception as exc:  # a cache must never stop the daemon from starting
            log.warning("ignoring the cached config %s: %s", self.path, type(exc).__name__)
            return None

    def _load(self) -> Optional[Tuple[dict, AgentConfig]]:
        try:
            with self.path.open("rb") as fh:
                data = fh.read(MAX_FILE_BYTES * 4 + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring the cached config %s: %s", self.path, exc.strerror or exc)
            return None
        try:
            body = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            log.warning("ignoring the cached config %s: not valid JSON", self.path)
            return None
        if not isinstance(body, dict) or body.get("version") != CACHE_VERSION:
            log.warning("ignoring the cached config %s: unknown format", self.path)
            return None
        raw = body.get("config")
        if not isinstance(raw, dict) or body.get("configHash") != config_hash(raw):
            log.warning("ignoring the cached config %s: its hash does not match", self.path)
            return None
        try:
            config = parse_config(raw, source=f"cached config {self.path}")
        except ConfigInvalid as exc:
            log.warning("ignoring the cached config: %s", exc)
            return None
        return raw, config

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
