"""docs/openapi.json must be what the control plane's app generates today."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.servers import require

ROOT = Path(__file__).resolve().parents[2]
AGENT_PATHS = {
    "/api/v1/agent/register": "post",
    "/api/v1/agent/heartbeat": "post",
    "/api/v1/agent/config": "get",
    "/api/v1/agent/jobs/start": "post",
    "/api/v1/agent/jobs/{jobId}/status": "post",
    "/api/v1/agent/jobs/{jobId}/verification": "post",
    "/api/v1/agent/jobs/{jobId}/logs": "post",
    "/api/v1/agent/schema-snapshot": "post",
    "/api/v1/agent/anomaly": "post",
}


@pytest.fixture
def generated() -> str:
    require(find_spec("fastapi") is not None, "fastapi (pip install '.[server]')")
    from backupagent.controlplane.openapi import openapi_document

    return openapi_document()


def test_committed_openapi_is_current(generated: str) -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
    assert committed == generated, (
        "docs/openapi.json is stale: run scripts/gen-openapi"
        " (or backupagent-server openapi -o docs/openapi.json) and commit it"
    )


def test_openapi_has_every_endpoint_and_no_422(generated: str) -> None:
    doc = json.loads(generated)
    paths = doc["paths"]
    assert {p: m for p, m in AGENT_PATHS.items() if p in paths} == AGENT_PATHS
    for path, method in AGENT_PATHS.items():
        responses = paths[path][method]["responses"]
        assert "422" not in responses
        if path != "/api/v1/agent/register":
            assert "401" in responses, path
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    register = doc["components"]["schemas"]["RegisterRequest"]
    assert set(register["required"]) == {
        "registrationToken",
        "hostname",
        "os",
        "arch",
        "agentVersion",
    }
