"""Property tests: no input makes parse_config fail other than by ConfigInvalid,
and nothing it accepts carries a path escape or a control character.

These guard issue 6's hostile-input rules: config values end up in file paths,
object keys, argv lists and log lines, so a value that passes validation must
be safe for all of them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import unicodedata
from typing import Any, Iterator, List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupagent.config import AgentConfig, parse_config
from backupagent.config.hashing import config_hash
from backupagent.config.load import json_problems
from backupagent.errors import ConfigInvalid
from tests.unit.test_config_parse import full_doc

KNOWN_KEYS = [
    "schedules", "targets", "alertChannels", "id", "databaseId", "targetId", "cron",
    "timezone", "enabled", "database", "dbType", "host", "port", "databaseName",
    "retention", "keepLast", "compression", "algorithm", "level", "verification",
    "checks", "checkType", "query", "tolerancePct", "type", "path", "bucket", "prefix",
    "encryption", "recipients", "credentials", "secretAccessKey", "events", "url",
    "webhookUrl", "to", "smtp",
]  # fmt: skip
HOSTILE_STRINGS = [
    "..", "../..", "../../etc/passwd", "/etc/passwd", "a/../b", "a\x00b", "a\nb", "a\rb",
    "\u2028", "\u202e", "\ud800", "x" * 5000, "; rm -rf / #", "$(reboot)", "`id`", "",
    " ", "\\..\\", "C:\\x", "//host/share", "~root", "-rf", "--help", "0", "UTC",
    "age1", "s3://x", "file:///", "%2e%2e", "\t", "ñ", "😀",
]  # fmt: skip
# Names and paths: no '..' segment. Secrets and URLs are checked for control chars only;
# a query may hold newlines and tabs (multi-line SQL) but nothing else.
NOT_PATHS = {"secret_access_key", "session_token", "password", "url", "webhook_url", "query"}
MULTILINE = {"query"}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(HOSTILE_STRINGS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


def leaf_paths(value: Any, prefix: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from leaf_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from leaf_paths(v, (*prefix, i))


FIELD_PATHS = sorted(set(leaf_paths(full_doc())), key=repr)


def set_path(doc: Any, path: Tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def strings_of(obj: Any, name: str = "") -> Iterator[Tuple[str, str]]:
    """(attribute name, value) for every string inside a parsed config."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from strings_of(getattr(obj, f.name), f.name)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from strings_of(item, name)
    elif isinstance(obj, str):
        yield name, obj


def assert_safe(config: AgentConfig) -> None:
    for name, value in strings_of(config):
        checked = value
        if name in MULTILINE:
            checked = value.replace("\n", "").replace("\t", "").replace("\r", "")
        bad = [c for c in checked if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
        assert not bad, (name, value)
        if name == "warnings" or name in NOT_PATHS:
            continue
        assert ".." not in value.replace("\\", "/").split("/"), (name, value)
        assert len(value) <= 1024, name
    for t in config.targets:
        if t.local is not None:
            assert t.local.path.startswith("/") and t.local.path != "/"
        if t.s3 is not None:
            assert not t.s3.prefix.startswith("/")
            assert all(seg not in ("", ".", "..") for seg in t.s3.prefix.split("/")) or (
                t.s3.prefix == ""
            )
    for s in config.schedules:
        assert s.database.port == "" or 1 <= int(s.database.port) <= 65535
        assert 1 <= s.compression.level <= 22
        assert config.target(s.target_id)
    json.dumps(repr(config))


def assert_good_rejection(exc: ConfigInvalid) -> None:
    assert exc.problems
    for problem in exc.problems:
        assert re.match(r"^(document|file|schedules|targets|alertChannels)\b", problem), problem
        assert "\n" not in problem and "\x00" not in problem
        assert "please report" not in problem, problem  # never the internal-error fallback
        assert len(problem) < 1500


def check(doc: Any) -> None:
    try:
        config = parse_config(doc)
    except ConfigInvalid as exc:
        assert_good_rejection(exc)
    else:
        assert_safe(config)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_only_ever_raises_config_invalid(doc: Any) -> None:
    check(doc)
    check({"schedules": [doc], "targets": [doc], "alertChannels": [doc]})
    json_problems(doc)  # never raises either


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(FIELD_PATHS), json_scalars | json_values),
        min_size=1,
        max_size=4,
    )
)
def test_hostile_values_in_a_valid_document(edits: List[Tuple[Tuple[Any, ...], Any]]) -> None:
    doc = full_doc()
    for path, value in edits:
        # an earlier edit may have replaced a container: then this edit is moot
        with contextlib.suppress(KeyError, IndexError, TypeError):
            set_path(doc, path, copy.deepcopy(value))
    check(doc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELD_PATHS), st.sampled_from(HOSTILE_STRINGS))
def test_each_hostile_string_in_each_field(path: Tuple[Any, ...], value: str) -> None:
    doc = full_doc()
    set_path(doc, path, value)
    check(doc)


def test_path_escapes_rejected_with_the_field_named() -> None:
    cases = [
        (("targets", 0, "path"), "/var/backups/../../etc"),
        (("targets", 1, "prefix"), "../other-tenant"),
        (("targets", 1, "prefix"), "/abs/prefix"),
        (("schedules", 0, "database", "databaseName"), "../../x"),
        (("schedules", 0, "name"), "a\x00b"),
        (("schedules", 0, "id"), "a\nb"),
        (("schedules", 0, "database", "host"), "h\r\nX-Injected: 1"),
        (("schedules", 0, "verification", "checks", 0, "checkName"), "users\u202egnp.exe"),
        (("schedules", 0, "retention", "keepLast"), 10**400),
        (("schedules", 0, "compression", "level"), 2**64),
    ]
    for path, value in cases:
        doc = full_doc()
        set_path(doc, path, value)
        try:
            parse_config(doc)
        except ConfigInvalid as exc:
            assert len(exc.problems) == 1, exc.problems
            named = ".".join(str(p) for p in path if not isinstance(p, int))
            assert named.split(".")[-1] in exc.problems[0] and exc.problems[0].startswith(path[0])
        else:
            raise AssertionError(f"accepted {value!r} at {path}")


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_config_hash_total_on_json_documents(doc: Any) -> None:
    try:
        json.dumps(doc)
    except (TypeError, ValueError):
        return
    try:
        h = config_hash(doc)
    except TypeError:
        return  # mixed-type keys cannot be sorted; JSON from the wire never has them
    assert len(h) == 64
