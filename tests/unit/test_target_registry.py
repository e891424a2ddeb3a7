"""Target URLs and config targets resolve to the right backend, with no network I/O."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backupagent.config.model import (
    LocalSettings,
    S3Credentials,
    S3Settings,
)
from backupagent.config.model import Target as TargetConfig
from backupagent.targets.base import TargetError
from backupagent.targets.local import LocalTarget
from backupagent.targets.registry import open_target_url, target_from_config
from backupagent.targets.s3 import S3Target


def test_file_url(tmp_path) -> None:
    target = open_target_url(f"file://{tmp_path}/a%20b", part_size=123)
    assert isinstance(target, LocalTarget)
    assert target.root == os.path.realpath(f"{tmp_path}/a b")
    assert open_target_url(f"file://localhost{tmp_path}").root == os.path.realpath(tmp_path)


@pytest.mark.parametrize("url", ["file://host/dir", "file:relative", "ftp://x/y", "/plain/path"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(TargetError):
        open_target_url(url)


def test_s3_url_options() -> None:
    target = open_target_url(
        "s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9&region=eu-west-1"
        "&storage_class=STANDARD_IA&sse=AES256&path_style=true"
    )
    assert isinstance(target, S3Target)
    assert (target.bucket, target.prefix, target.region) == ("my-bucket", "a/b", "eu-west-1")
    assert target.endpoint_url == "http://127.0.0.1:9"
    assert (target.storage_class, target.sse, target.path_style) == ("STANDARD_IA", "AES256", True)
    assert target.url_for("h/x.dump") == "s3://my-bucket/a/b/h/x.dump"
    assert open_target_url("s3://bkt").url_for("k") == "s3://bkt/k"


def test_s3_url_defaults_to_path_style_only_with_an_endpoint() -> None:
    assert open_target_url("s3://bkt/p?endpoint=http://127.0.0.1:9").path_style is True
    assert open_target_url("s3://bkt/p").path_style is False


def test_credentials_in_url_refused_without_echo() -> None:
    with pytest.raises(TargetError) as info:
        open_target_url("s3://AKID:VerySecret@bucket/prefix")
    assert "VerySecret" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["s3://bkt/p?nope=1", "s3://bkt/p?path_style=maybe", "s3:///p", "s3://bkt?sse=DES"]
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(TargetError):
        open_target_url(url)


def test_target_from_config_local(tmp_path) -> None:
    cfg = TargetConfig(id="t1", type="local", local=LocalSettings(path=str(tmp_path)))
    target = target_from_config(cfg, part_size=16 << 20)
    assert isinstance(target, LocalTarget) and target.root == os.path.realpath(tmp_path)


def test_target_from_config_s3() -> None:
    secret = "s3cr3t-value-never-shown"
    cfg = TargetConfig(
        id="t2",
        type="s3",
        s3=S3Settings(
            bucket="bkt",
            prefix="team/db",
            region="us-east-2",
            endpoint_url="http://127.0.0.1:9",
            storage_class="GLACIER_IR",
            server_side_encryption="aws:kms",
            credentials=S3Credentials(access_key_id="AKID", secret_access_key=secret),
        ),
    )
    target = target_from_config(cfg, part_size=16 << 20)
    assert isinstance(target, S3Target)
    assert (target.prefix, target.region, target.sse) == ("team/db", "us-east-2", "aws:kms")
    assert target.part_size == 16 << 20 and target.path_style is True
    assert secret not in repr(target)
    creds = target._client._request_signer._credentials
    assert creds.secret_key == secret and creds.access_key == "AKID"


def test_target_from_config_errors() -> None:
    with pytest.raises(TargetError, match="unsupported type"):
        target_from_config(TargetConfig(id="x", type="ftp"))
    with pytest.raises(TargetError, match="needs a bucket"):
        target_from_config(TargetConfig(id="x", type="s3"))


def test_importing_targets_and_local_use_do_not_import_boto3(tmp_path) -> None:
    code = (
        "import sys\n"
        "from backupagent.targets import open_target_url\n"
        f"t = open_target_url('file://{tmp_path}')\n"
        "w = t.open_writer('a/b'); w.write(b'x'); w.commit()\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
