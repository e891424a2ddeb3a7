"""configHash: canonical JSON of the raw document, independent of key order (protocol.md)."""

from __future__ import annotations

import hashlib
import json

from backupagent.config.hashing import EMPTY_HASH, canonical_json, config_hash

# Computed outside Python: printf '<canonical json>' | sha256sum
EMPTY_DOC_HASH = "7b89b34d66d9fdd9260bc7d2530b0d2b37bb869a6114550ff106dda0d56baf4f"
UNICODE_DOC_HASH = "9733801fddd917ca092529b79cd4d20c404e618787f49cafafdc7cb5fd591f41"


def test_known_vectors() -> None:
    assert config_hash({"schedules": [], "targets": [], "alertChannels": []}) == EMPTY_DOC_HASH
    doc = {"targets": [], "schedules": [{"id": "s1", "cron": "0 2 * * *"}], "a": "\u00e9"}
    assert canonical_json(doc) == (
        '{"a":"\u00e9","schedules":[{"cron":"0 2 * * *","id":"s1"}],"targets":[]}'
    ).encode("utf-8")
    assert config_hash(doc) == UNICODE_DOC_HASH


def test_key_order_and_whitespace_do_not_matter() -> None:
    a = json.loads('{"targets": [], "schedules": [{"id": "x", "cron": "* * * * *"}]}')
    b = json.loads('{"schedules":[{"cron":"* * * * *","id":"x"}],"targets":[]}')
    assert list(a) != list(b)
    assert config_hash(a) == config_hash(b)


def test_any_value_change_changes_the_hash() -> None:
    base = {"schedules": [{"id": "x", "cron": "0 2 * * *"}], "targets": [], "alertChannels": []}
    changed = {"schedules": [{"id": "x", "cron": "0 3 * * *"}], "targets": [], "alertChannels": []}
    assert config_hash(base) != config_hash(changed)
    # unknown fields count: the hash is of the raw document, not of our view of it
    extra = dict(base, futureField=1)
    assert config_hash(base) != config_hash(extra)


def test_format_and_empty_marker() -> None:
    h = config_hash({})
    assert len(h) == 64 and h == h.lower() and int(h, 16) >= 0
    assert h == hashlib.sha256(b"{}").hexdigest()
    assert EMPTY_HASH == ""


def test_lone_surrogate_does_not_crash() -> None:
    doc = json.loads('{"x": "\\ud800"}')
    assert len(config_hash(doc)) == 64


def test_matches_the_reference_control_plane() -> None:
    """Agent and server must agree, or every heartbeat says configChanged."""
    from backupagent.controlplane.confighash import config_hash as server_hash

    docs = [
        {"schedules": [], "targets": [], "alertChannels": []},
        {"schedules": [{"id": "s", "port": 5432, "f": 1.5, "ok": True, "n": None}], "z": "\u2603"},
    ]
    for doc in docs:
        assert config_hash(doc) == server_hash(doc)
