"""parse_config: a valid document round-trips, and each rule rejects with a named path."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any, Dict, List

import pytest

from backupagent.config import parse_config
from backupagent.config.cron import cron_problem, cron_trigger
from backupagent.config.model import AgentConfig, Target
from backupagent.errors import ConfigInvalid

RECIPIENT = "age1ldegmk0wx2x69fksj5kgsx0f808ucgztjszcve674pdlhztx990qnln5qq"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
SMTP_PASSWORD = "smtp-pa55word-xyz"
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXSLACKTOKEN"


def full_doc() -> Dict[str, Any]:
    return {
        "schedules": [
            {
                "id": "sched-1",
                "name": "nightly app",
                "databaseId": "db-1",
                "targetId": "local-1",
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "enabled": True,
                "database": {
                    "id": "db-1",
                    "dbType": "postgresql",
                    "host": "127.0.0.1",
                    "port": "5432",
                    "databaseName": "app",
                },
                "retention": {"keepLast": 3, "keepDaily": 7, "keepWeekly": 4, "keepMonthly": 6},
                "compression": {"algorithm": "zstd", "level": 9},
                "verification": {
                    "enabled": True,
                    "image": "postgres:16",
                    "checks": [
                        {"checkType": "row_count", "checkName": "users", "tolerancePct": 0},
                        {"checkType": "schema_match"},
                        {
                            "checkType": "custom_query",
                            "checkName": "paid orders",
                            "query": "SELECT count(*)\nFROM orders\nWHERE paid",
                            "expectedValue": 42,
                            "tolerancePct": 2.5,
                        },
                    ],
                },
            },
            {
                "id": "sched-2",
                "databaseId": "db-2",
                "targetId": "s3-1",
                "cron": "0 */6 * * 1-5",
                "enabled": False,
                "database": {"dbType": "redis", "port": 6380},
            },
        ],
        "targets": [
            {
                "id": "local-1",
                "type": "local",
                "path": "/var/backups/db",
                "encryption": {"recipients": [RECIPIENT]},
            },
            {
                "id": "s3-1",
                "type": "s3",
                "bucket": "my-backups.prod",
                "prefix": "hosts/db1/",
                "region": "eu-central-1",
                "endpointUrl": "https://s3.example.com:9000",
                "storageClass": "STANDARD_IA",
                "serverSideEncryption": "AES256",
                "credentials": {
                    "accessKeyId": "AKIDEXAMPLE",
                    "secretAccessKey": S3_SECRET,
                    "sessionToken": SESSION_TOKEN,
                },
            },
        ],
        "alertChannels": [
            {"id": "hook", "type": "webhook", "url": "https://example.com/hook", "events": []},
            {"id": "slack", "type": "slack", "webhookUrl": SLACK_URL, "events": ["job_failed"]},
            {
                "id": "mail",
                "type": "email",
                "events": ["anomaly", "verification_failed"],
                "to": ["ops@example.com", "dba@example.com"],
                "smtp": {
                    "host": "smtp.example.com",
                    "port": 465,
                    "username": "agent",
                    "password": SMTP_PASSWORD,
                    "starttls": False,
                    "from": "backups@example.com",
                },
            },
        ],
    }


def problems(doc: Any) -> List[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    assert info.value.code == "CONFIG_INVALID"
    return info.value.problems


def only_problem(doc: Any) -> str:
    found = problems(doc)
    assert len(found) == 1, found
    return found[0]


# ----------------------------------------------------------------- accepted


def test_full_document_round_trip() -> None:
    config = parse_config(full_doc())
    assert isinstance(config, AgentConfig)
    s1, s2 = config.schedules
    assert (s1.id, s1.database_id, s1.target_id, s1.cron) == (
        "sched-1",
        "db-1",
        "local-1",
        "30 2 * * *",
    )
    assert (s1.timezone, s1.enabled, s1.name) == ("Europe/Berlin", True, "nightly app")
    db = s1.database
    assert (db.id, db.db_type, db.host, db.port, db.database_name) == (
        "db-1",
        "postgresql",
        "127.0.0.1",
        "5432",
        "app",
    )
    r = s1.retention
    assert (r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly) == (3, 7, 4, 6)
    assert (s1.compression.algorithm, s1.compression.level) == ("zstd", 9)
    v = s1.verification
    assert v.enabled and v.image == "postgres:16"
    assert [c.check_type for c in v.checks] == ["row_count", "schema_match", "custom_query"]
    custom = v.checks[2]
    assert custom.query == "SELECT count(*)\nFROM orders\nWHERE paid"
    assert custom.expected_value == "42" and custom.tolerance_pct == 2.5
    assert v.checks[0].tolerance_pct == 0.0

    # defaults: timezone UTC, redis port as str and db "0", no retention, zstd 3
    assert s2.timezone == "UTC" and s2.enabled is False
    assert s2.database.port == "6380" and s2.database.host == "localhost"
    assert s2.database.database_name == "0" and s2.database.id == "db-2"
    assert s2.retention.keeps_everything
    assert (s2.compression.algorithm, s2.compression.level) == ("zstd", 3)
    assert s2.verification.enabled is False and s2.verification.checks == ()

    local, s3t = config.targets
    assert local.type == "local" and local.local is not None and local.s3 is None
    assert local.local.path == "/var/backups/db" and local.url == "file:///var/backups/db"
    assert local.encryption.recipients == (RECIPIENT,) and local.encrypted
    assert s3t.s3 is not None and s3t.local is None and not s3t.encrypted
    s3 = s3t.s3
    assert (s3.bucket, s3.prefix, s3.region) == ("my-backups.prod", "hosts/db1", "eu-central-1")
    assert s3.endpoint_url == "https://s3.example.com:9000" and s3.force_path_style is True
    assert (s3.storage_class, s3.server_side_encryption) == ("STANDARD_IA", "AES256")
    assert s3.credentials is not None and s3.credentials.secret_access_key == S3_SECRET
    assert s3.credentials.session_token == SESSION_TOKEN
    assert s3t.url == "s3://my-backups.prod/hosts/db1"

    hook, slack, mail = config.alert_channels
    assert hook.url == "https://example.com/hook" and hook.events == ()
    assert slack.webhook_url == SLACK_URL and slack.events == ("job_failed",)
    assert mail.to == ("ops@example.com", "dba@example.com")
    assert mail.events == ("anomaly", "verification_failed")
    assert mail.smtp is not None
    assert (mail.smtp.host, mail.smtp.port, mail.smtp.username) == (
        "smtp.example.com",
        465,
        "agent",
    )
    assert mail.smtp.password == SMTP_PASSWORD and mail.smtp.starttls is False
    assert mail.smtp.from_addr == "backups@example.com"

    assert config.target("s3-1") is s3t
    assert config.schedule("sched-2") is s2
    assert [s.id for s in config.enabled_schedules()] == ["sched-1"]
    assert config.channels_for("anomaly") == (mail,)
    with pytest.raises(KeyError, match="nope"):
        config.target("nope")
    # the s3 target has no recipients: accepted, with a warning
    assert any("targets[1]" in w and "unencrypted" in w for w in config.warnings)


def test_objects_are_frozen_and_hashable() -> None:
    config = parse_config(full_doc())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.schedules[0].cron = "* * * * *"  # type: ignore[misc]
    assert isinstance(config.schedules, tuple) and isinstance(config.targets, tuple)
    hash(config)
    assert parse_config(full_doc()) == config


def test_parse_does_not_mutate_input() -> None:
    doc = full_doc()
    before = copy.deepcopy(doc)
    parse_config(doc)
    assert doc == before


def test_empty_and_missing_sections() -> None:
    assert parse_config({}) == AgentConfig()
    assert parse_config({"schedules": None, "targets": [], "alertChannels": None}) == AgentConfig()


def test_unknown_fields_ignored() -> None:
    doc = full_doc()
    doc["futureTopLevel"] = {"x": 1}
    doc["schedules"][0]["priority"] = "high\nweird"
    doc["schedules"][0]["database"]["sslMode"] = ["anything"]
    doc["targets"][1]["tags"] = {"a": None}
    doc["alertChannels"][0]["color"] = 3
    doc["schedules"][0]["verification"]["checks"][0]["extra"] = object()
    assert parse_config(doc) == parse_config(full_doc())


def test_empty_optional_strings_read_as_unset() -> None:
    doc = full_doc()
    s3 = doc["targets"][1]
    s3.update(region="", storageClass="", endpointUrl="", prefix="")
    doc["schedules"][0]["name"] = ""
    config = parse_config(doc)
    assert config.targets[1].s3.region is None and config.targets[1].s3.endpoint_url is None
    assert config.targets[1].s3.prefix == "" and config.targets[1].s3.force_path_style is False
    assert config.schedules[0].name is None


def test_port_accepts_int_and_numeric_string() -> None:
    for given, stored in ((5433, "5433"), ("5433", "5433"), ("05433", "5433")):
        doc = full_doc()
        doc["schedules"][0]["database"]["port"] = given
        assert parse_config(doc).schedules[0].database.port == stored


def test_database_id_from_database_object() -> None:
    doc = full_doc()
    del doc["schedules"][0]["databaseId"]
    assert parse_config(doc).schedules[0].database_id == "db-1"


def test_sqlite_database_is_an_absolute_path() -> None:
    doc = full_doc()
    doc["schedules"][0]["database"] = {
        "id": "db-1",
        "dbType": "sqlite",
        "databaseName": "/srv/a.db",
    }
    db = parse_config(doc).schedules[0].database
    assert (db.db_type, db.database_name, db.host, db.port) == ("sqlite", "/srv/a.db", "", "")
    doc["schedules"][0]["database"]["databaseName"] = "a.db"
    assert "schedules[0].database.databaseName" in only_problem(doc)


def test_flat_smtp_fields_and_url_aliases() -> None:
    doc = full_doc()
    doc["alertChannels"] = [
        {"id": "m", "type": "email", "to": ["a@b.c"], "smtpHost": "mx.b.c", "smtpPort": "2525"},
        {"id": "s", "type": "slack", "url": SLACK_URL},
    ]
    mail, slack = parse_config(doc).alert_channels
    assert mail.smtp.host == "mx.b.c" and mail.smtp.port == 2525 and mail.smtp.starttls
    assert mail.events == ("job_failed", "verification_failed", "anomaly")
    assert slack.webhook_url == SLACK_URL


# ----------------------------------------------------------------- rejected


def test_document_must_be_a_mapping() -> None:
    for doc in (None, [], "schedules", 3):
        assert only_problem(doc).startswith("document: expected a mapping")
    assert only_problem({"schedules": {"id": "x"}}).startswith("schedules: expected a list")
    assert only_problem({"targets": ["x"]}) == "targets[0]: expected a mapping, got a string"


def test_cron_rule() -> None:
    doc = full_doc()
    doc["schedules"][1]["cron"] = "61 * * * *"
    assert only_problem(doc) == (
        'schedules[1].cron: "61 * * * *" is not a valid cron expression (minute must be 0-59)'
    )
    for bad in ("@daily", "* * * * * *", "0 0 L * *", "*/0 * * * *", "0 0 * * 8", "1-"):
        doc["schedules"][1]["cron"] = bad
        assert only_problem(doc).startswith("schedules[1].cron: "), bad
    doc["schedules"][1]["cron"] = 5
    assert (
        only_problem(doc)
        == 'schedules[1].cron: expected a cron expression "m h dom mon dow", got a number 5'
    )


@pytest.mark.parametrize(
    ("expr", "weekday"),
    [
        ("0 3 * * 0", "Sunday"),
        ("0 3 * * 7", "Sunday"),
        ("0 3 * * 1", "Monday"),
        ("0 3 * * sat", "Saturday"),
    ],
)
def test_cron_weekdays_mean_what_cron_means(expr: str, weekday: str) -> None:
    assert cron_problem(expr) is None
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)  # a Monday
    fire = cron_trigger(expr, "UTC").get_next_fire_time(None, start + dt.timedelta(hours=4))
    assert fire.strftime("%A") == weekday


def test_cron_day_of_month_or_day_of_week() -> None:
    trigger = cron_trigger("0 3 13 * 5", "Europe/Berlin")
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    fires = []
    for _ in range(4):
        now = trigger.get_next_fire_time(now, now)
        fires.append(now.strftime("%a %d"))
        now += dt.timedelta(seconds=1)
    assert fires == ["Fri 05", "Fri 12", "Sat 13", "Fri 19"]
    assert str(trigger.timezone) == "Europe/Berlin"


def test_timezone_rule() -> None:
    doc = full_doc()
    for bad in ("Mars/Olympus", "utc", "../../etc/passwd", "/etc/localtime"):
        doc["schedules"][0]["timezone"] = bad
        assert only_problem(doc).startswith("schedules[0].timezone: "), bad


def test_ids_required_unique_and_safe() -> None:
    doc = full_doc()
    doc["targets"][1]["id"] = "local-1"
    found = problems(doc)
    assert 'targets[1].id: "local-1" is already used by targets[0]; ids must be unique' in found
    doc = full_doc()
    doc["schedules"][0]["id"] = ""
    assert only_problem(doc).startswith("schedules[0].id: must not be empty")
    for bad in ("../x", "a/b", "has space", ".hidden", "x" * 200):
        doc["schedules"][0]["id"] = bad
        assert only_problem(doc).startswith("schedules[0].id: "), bad
    del doc["schedules"][0]["id"]
    assert only_problem(doc).startswith("schedules[0].id: is required")


def test_target_reference_and_database_id_mismatch() -> None:
    doc = full_doc()
    doc["schedules"][0]["targetId"] = "gone"
    assert only_problem(doc) == (
        'schedules[0].targetId: "gone" does not match any target id (known: local-1, s3-1)'
    )
    doc = full_doc()
    doc["schedules"][0]["database"]["id"] = "db-9"
    assert only_problem(doc) == 'schedules[0].database.id: "db-9" does not match databaseId "db-1"'
    doc = full_doc()
    del doc["schedules"][1]["databaseId"]
    assert only_problem(doc).startswith("schedules[1].databaseId: is required")


def test_db_type_rule() -> None:
    doc = full_doc()
    doc["schedules"][0]["database"]["dbType"] = "mongodb"
    assert "not supported yet" in only_problem(doc)
    doc["schedules"][0]["database"]["dbType"] = "oracle"
    assert only_problem(doc) == (
        'schedules[0].database.dbType: "oracle" is not one of: '
        "postgresql, mysql, mariadb, redis, sqlite"
    )
    doc["schedules"][0]["database"] = "postgresql://x"
    assert only_problem(doc) == "schedules[0].database: expected a mapping, got a string"


def test_port_rule() -> None:
    doc = full_doc()
    for bad in (0, 65536, "http", "-1", True, 1.5, "1" * 50, 10**100):
        doc["schedules"][0]["database"]["port"] = bad
        assert only_problem(doc).startswith("schedules[0].database.port: "), bad


def test_compression_rule() -> None:
    doc = full_doc()
    doc["schedules"][0]["compression"] = {"algorithm": "gzip", "level": 23}
    assert problems(doc) == [
        'schedules[0].compression.algorithm: "gzip" is not one of: zstd',
        "schedules[0].compression.level: 23 is out of range; expected 1 to 22",
    ]
    doc["schedules"][0]["compression"] = {"level": 0}
    assert only_problem(doc).startswith("schedules[0].compression.level: 0 is out of range")


def test_retention_rule() -> None:
    doc = full_doc()
    doc["schedules"][0]["retention"] = {
        "keepLast": -1,
        "keepDaily": "7",
        "keepWeekly": 2.0,
        "keepMonthly": 10**30,
    }
    found = problems(doc)
    assert [p.split(":")[0] for p in found] == [
        "schedules[0].retention.keepLast",
        "schedules[0].retention.keepDaily",
        "schedules[0].retention.keepWeekly",
        "schedules[0].retention.keepMonthly",
    ]
    doc["schedules"][0]["retention"] = {"keepLast": 0}
    assert parse_config(doc).schedules[0].retention.keep_last == 0


def test_verification_rules() -> None:
    doc = full_doc()
    doc["schedules"][0]["verification"] = {
        "enabled": "true",
        "image": "postgres 16; rm -rf /",
        "checks": [
            {"checkType": "row_cnt"},
            {"checkType": "custom_query"},
            {"checkType": "row_count", "tolerancePct": 101},
            {"checkType": "row_count", "tolerancePct": float("nan")},
            "row_count",
        ],
    }
    assert [p.split(":")[0] for p in problems(doc)] == [
        "schedules[0].verification.enabled",
        "schedules[0].verification.image",
        "schedules[0].verification.checks[0].checkType",
        "schedules[0].verification.checks[1].query",
        "schedules[0].verification.checks[2].tolerancePct",
        "schedules[0].verification.checks[3].tolerancePct",
        "schedules[0].verification.checks[4]",
    ]


def test_booleans_must_be_real_booleans() -> None:
    for bad in ("yes", "true", 1, 0, "on"):
        doc = full_doc()
        doc["schedules"][0]["enabled"] = bad
        assert only_problem(doc).startswith("schedules[0].enabled: "), bad
        assert "expected true or false" in only_problem(doc)


def test_target_type_rule() -> None:
    doc = full_doc()
    doc["targets"][0]["type"] = "ftp"
    assert only_problem(doc) == 'targets[0].type: "ftp" is not one of: local, s3'
    del doc["targets"][0]["type"]
    assert only_problem(doc).startswith("targets[0].type: is required")


def test_recipient_rule() -> None:
    doc = full_doc()
    typo = RECIPIENT[:-1] + ("q" if RECIPIENT[-1] != "q" else "p")
    for bad in ("age1", typo, "ssh-ed25519 AAAA", RECIPIENT.upper(), "AGE-SECRET-KEY-1XYZ"):
        doc["targets"][0]["encryption"]["recipients"] = [bad]
        assert only_problem(doc).startswith("targets[0].encryption.recipients[0]: "), bad
    doc["targets"][0]["encryption"]["recipients"] = [RECIPIENT, RECIPIENT]
    assert parse_config(doc).targets[0].encryption.recipients == (RECIPIENT,)


def test_s3_bucket_and_prefix_rules() -> None:
    doc = full_doc()
    for bad in ("ab", "My-Bucket", "a" * 64, "bucket_", "-bucket", "a..b", "192.168.1.1", "a.-b"):
        doc["targets"][1]["bucket"] = bad
        assert only_problem(doc).startswith("targets[1].bucket: "), bad
    doc = full_doc()
    for bad in ("/abs", "a/../b", "..", "a//b", "./a", "a\x00b"):
        doc["targets"][1]["prefix"] = bad
        assert only_problem(doc).startswith("targets[1].prefix: "), bad
    del doc["targets"][1]["bucket"]
    doc["targets"][1]["prefix"] = "ok"
    assert only_problem(doc).startswith("targets[1].bucket: is required")


def test_s3_other_fields() -> None:
    doc = full_doc()
    s3 = doc["targets"][1]
    s3.update(
        region="EU West",
        endpointUrl="ftp://s3.example.com",
        storageClass="COLD",
        serverSideEncryption="rot13",
        forcePathStyle="yes",
    )
    s3["credentials"] = {"accessKeyId": "AK"}
    assert [p.split(":")[0] for p in problems(doc)] == [
        "targets[1].region",
        "targets[1].endpointUrl",
        "targets[1].storageClass",
        "targets[1].serverSideEncryption",
        "targets[1].forcePathStyle",
        "targets[1].credentials.secretAccessKey",
    ]


def test_local_path_rule() -> None:
    doc = full_doc()
    for bad in ("relative/dir", "/var/../etc", "/var/backups/", "/", "//srv", "/a/./b", "/a\nb"):
        doc["targets"][0]["path"] = bad
        assert only_problem(doc).startswith("targets[0].path: "), bad


def test_alert_channel_rules() -> None:
    doc = full_doc()
    doc["alertChannels"] = [
        {"id": "a", "type": "pager"},
        {"id": "b", "type": "webhook", "url": "javascript:alert(1)"},
        {"id": "c", "type": "slack"},
        {"id": "d", "type": "webhook", "url": "https://x.example/", "events": ["job_failed", "x"]},
        {"id": "e", "type": "email", "to": ["not-an-address"], "smtp": {"port": 25}},
        {"id": "f", "type": "email", "to": [], "smtp": {"host": "mx"}},
    ]
    assert problems(doc) == [
        'alertChannels[0].type: "pager" is not one of: webhook, slack, email',
        # webhook URLs embed tokens: only scheme and host are shown
        'alertChannels[1].url: the URL (scheme "javascript", host "") is not an http(s) URL; '
        "expected https://host/path",
        "alertChannels[2].webhookUrl: is required; expected an http(s) URL",
        'alertChannels[3].events[1]: "x" is not one of: job_failed, verification_failed, anomaly',
        'alertChannels[4].to[0]: "not-an-address" is not an email address; '
        "expected name@example.com",
        "alertChannels[4].smtp.host: is required; expected an SMTP host",
        "alertChannels[5].to: is empty; expected at least one email address",
    ]


def test_all_problems_reported_at_once_in_document_order() -> None:
    doc = full_doc()
    doc["schedules"][1]["cron"] = "61 * * * *"
    doc["schedules"][0]["compression"]["level"] = 99
    doc["targets"][0]["type"] = "ftp"
    doc["alertChannels"][0]["events"] = ["nope"]
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc, source="control plane")
    found = info.value.problems
    assert [p.split(":")[0] for p in found] == [
        "schedules[0].compression.level",
        "schedules[1].cron",
        "targets[0].type",
        "alertChannels[0].events[0]",
    ]
    text = str(info.value)
    assert text.startswith("control plane is invalid (4 problems):")
    assert all(p in text for p in found)


def test_hostile_strings_named_and_escaped() -> None:
    doc = full_doc()
    doc["schedules"][0]["name"] = "x\nERROR forged log line"
    doc["schedules"][0]["database"]["databaseName"] = "../../etc/passwd"
    doc["schedules"][0]["database"]["host"] = "db;rm -rf /"
    doc["schedules"][0]["verification"]["checks"][0]["checkName"] = "x" * 5000
    found = problems(doc)
    assert [p.split(":")[0] for p in found] == [
        "schedules[0].name",
        "schedules[0].database.host",
        "schedules[0].database.databaseName",
        "schedules[0].verification.checks[0].checkName",
    ]
    assert all("\n" not in p for p in found)
    assert "\\n" in found[0]  # shown JSON-escaped, never raw
    assert len(found[3]) < 300  # the long value is cut, not echoed whole


def test_secrets_not_in_repr() -> None:
    config = parse_config(full_doc())
    text = repr(config) + str(config)
    for secret in (S3_SECRET, SESSION_TOKEN, SMTP_PASSWORD, SLACK_URL):
        assert secret not in text
    assert "AKIDEXAMPLE" in text  # the key id is not secret: it helps debugging


def test_secrets_not_in_error_messages() -> None:
    doc = full_doc()
    creds = doc["targets"][1]["credentials"]
    creds["secretAccessKey"] = S3_SECRET + "\n"
    creds["sessionToken"] = SESSION_TOKEN + "\x00" + "y" * 9000
    doc["alertChannels"][2]["smtp"]["password"] = ["list", SMTP_PASSWORD]
    doc["alertChannels"][1]["webhookUrl"] = SLACK_URL.replace("https", "gopher")
    doc["alertChannels"][0]["url"] = "https://user:" + SMTP_PASSWORD + "@example.com/"
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    assert len(info.value.problems) == 5, info.value.problems
    text = str(info.value)
    for secret in (S3_SECRET, SESSION_TOKEN, SMTP_PASSWORD, "XXXXSLACKTOKEN"):
        assert secret not in text


def test_accepted_secrets_are_redacted_from_logs() -> None:
    from backupagent.logs import redact

    parse_config(full_doc())
    assert S3_SECRET not in redact(f"boto said: bad key {S3_SECRET}")
    assert SMTP_PASSWORD not in redact(f"login failed for {SMTP_PASSWORD}")


def test_target_url_requires_settings() -> None:
    with pytest.raises(ValueError):
        _ = Target(id="t", type="s3").url
