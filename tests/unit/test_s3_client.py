"""The lean S3 client: smaller data, the same endpoints and requests as boto3's."""

from __future__ import annotations

from typing import Any, Dict
from urllib.parse import urlsplit

import pytest

from backupagent.targets.s3_client import (
    ENDPOINT_SERVICES,
    make_loader,
    make_s3_client,
    slim_endpoints,
    strip_documentation,
)

CREDS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret-example"}


def test_slim_endpoints_keeps_partitions_and_only_the_needed_services() -> None:
    data: Dict[str, Any] = {
        "version": 3,
        "partitions": [
            {
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "regions": {"us-east-1": {}},
                "services": {"s3": {"x": 1}, "ec2": {}, "sts": {}, "lambda": {}},
            },
            {"partition": "aws-cn", "regions": {}, "services": {"s3": {}, "iam": {}}},
        ],
    }
    out = slim_endpoints(data)
    assert out["version"] == 3
    assert set(out["partitions"][0]["services"]) == {"s3", "sts"}
    assert out["partitions"][0]["services"]["s3"] == {"x": 1}
    assert out["partitions"][0]["regions"] == {"us-east-1": {}}
    assert set(out["partitions"][1]["services"]) == {"s3"}


def test_strip_documentation_removes_docs_only() -> None:
    model: Dict[str, Any] = {
        "operations": {"PutObject": {"documentation": "long", "http": {"method": "PUT"}}},
        "shapes": {
            "Body": {"type": "blob", "documentation": "long"},
            "Req": {
                "type": "structure",
                "documentation": "long",
                "members": {"Key": {"shape": "K", "documentation": "long", "location": "uri"}},
            },
        },
    }
    out = strip_documentation(model)
    assert out["operations"]["PutObject"] == {"http": {"method": "PUT"}}
    assert out["shapes"]["Body"] == {"type": "blob"}
    assert out["shapes"]["Req"]["members"]["Key"] == {"shape": "K", "location": "uri"}


def test_loader_reads_botocore_data_lean() -> None:
    loader = make_loader()
    endpoints = loader.load_data("endpoints")
    aws = next(p for p in endpoints["partitions"] if p["partition"] == "aws")
    assert "s3" in aws["services"] and "ec2" not in aws["services"]
    assert set(aws["services"]) <= ENDPOINT_SERVICES
    assert "us-east-1" in aws["regions"]
    model = loader.load_service_model("s3", "service-2")
    assert "UploadPart" in model["operations"]
    assert "documentation" not in model["operations"]["UploadPart"]
    assert type(model["shapes"]) is dict  # plain dicts, not OrderedDict trees
    # files it does not slim pass through whole
    assert loader.load_data("partitions")["partitions"]


def _client(region: str, **kw: Any) -> Any:
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3=kw.pop("s3", {"addressing_style": "auto"}))
    return make_s3_client(
        region=region, endpoint_url=kw.pop("endpoint_url", None), config=config, credentials=CREDS
    )


def _boto3_client(region: str, **kw: Any) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3=kw.pop("s3", {"addressing_style": "auto"}))
    session = boto3.session.Session(region_name=region, **CREDS)
    return session.client("s3", endpoint_url=kw.pop("endpoint_url", None), config=config)


@pytest.mark.parametrize(
    "region,kw",
    [
        ("us-east-1", {}),
        ("eu-west-1", {}),
        ("cn-north-1", {}),
        ("us-gov-west-1", {}),
        ("eu-central-1", {"s3": {"addressing_style": "path"}}),
        ("us-east-1", {"endpoint_url": "http://127.0.0.1:8333"}),
    ],
)
def test_requests_go_where_boto3_sends_them(region: str, kw: Dict[str, Any]) -> None:
    """Same endpoint resolution (rules, partitions, addressing) as a stock boto3 client."""
    ours = _client(region, **dict(kw))
    stock = _boto3_client(region, **dict(kw))
    assert ours.meta.region_name == stock.meta.region_name == region
    params = {"Bucket": "my-bucket", "Key": "a/b.bin"}
    url_ours = urlsplit(ours.generate_presigned_url("get_object", Params=params, ExpiresIn=60))
    url_stock = urlsplit(stock.generate_presigned_url("get_object", Params=params, ExpiresIn=60))
    assert (url_ours.scheme, url_ours.netloc, url_ours.path) == (
        url_stock.scheme,
        url_stock.netloc,
        url_stock.path,
    )
    assert f"{region}%2Fs3%2Faws4_request" in url_ours.query  # SigV4 scope


def test_credentials_left_out_use_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.config import Config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    client = make_s3_client(region="us-east-1", endpoint_url=None, config=Config(), credentials={})
    assert client._request_signer._credentials.access_key == "AKIDFROMENV"
