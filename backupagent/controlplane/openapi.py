"""The committed OpenAPI document (docs/openapi.json) and how it is produced.

Generated from the app itself so the document cannot drift from the code; a
unit test regenerates it and fails when the committed copy is stale.
"""

from __future__ import annotations

import json

from backupagent.controlplane.app import create_app
from backupagent.controlplane.store import Store

DOC_PATH = "docs/openapi.json"


def openapi_document() -> str:
    """The OpenAPI JSON text, stable for a given code base (2-space indent, trailing newline)."""
    store = Store(":memory:")
    try:
        doc = create_app(store).openapi()
    finally:
        store.close()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
