"""The Agent API as a FastAPI app: ``create_app(store)``.

Paths, methods, bodies and responses follow the reference exactly (see
schemas.py); errors are always ``{"error": "<code>", "message": "..."}`` with
the status codes protocol.md lists, never FastAPI's default 422 shape.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

import backupagent
from backupagent.controlplane import schemas as s
from backupagent.controlplane.errors import Conflict, NotFound, TokenRejected
from backupagent.controlplane.faults import FaultInjector
from backupagent.controlplane.middleware import ApiGuard
from backupagent.controlplane.store import API_KEY_PREFIX, Store

API = "/api/v1/agent"
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error response decided by a route or dependency."""

    def __init__(self, status: int, message: str, error: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error or ERROR_CODES.get(status, "error")
        self.message = message


def _error(
    status: int, error: str, message: str, headers: Optional[Dict[str, str]] = None
) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


def _describe(err: Dict[str, Any]) -> str:
    """One validation error as ``field.path[3].name: reason``."""
    loc = [p for p in err.get("loc", ()) if p != "body"]
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"body: invalid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
    if kind == "missing" and not path:
        return "body: a JSON object is required"
    msg = str(err.get("msg", "invalid"))
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg
    if kind == "extra_forbidden":
        msg = "unknown field (not in the Agent API reference)"
    elif kind == "missing":
        msg = "required field is missing"
    return f"{path or 'body'}: {msg}"


ERROR_DOCS = {
    400: "bad_request: a field is missing, of the wrong type, unknown or out of its value set",
    401: "unauthorized: missing, malformed or unknown API key",
    404: "not_found: no such job for this agent",
    409: "conflict: the job is already terminal (or the update goes backwards)",
    413: "payload_too_large: body over 1 MiB",
    415: "unsupported_media_type: Content-Type is not application/json",
}


def _errors(*codes: int, **overrides: str) -> Dict[Any, Dict[str, Any]]:
    docs = {**ERROR_DOCS, **{int(k[1:]): v for k, v in overrides.items()}}
    return {c: {"model": s.ErrorResponse, "description": docs[c]} for c in codes}


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer bak_...`")


def create_app(store: Store, *, faults: Optional[FaultInjector] = None) -> FastAPI:
    """The control plane over ``store``; ``faults`` (tests only) makes chosen requests fail."""
    app = FastAPI(
        title="backupagent reference control plane",
        version=backupagent.__version__,
        description="The Agent API (`/api/v1/agent`), implemented strictly for self-hosting"
        " and for testing agents against the reference.",
    )
    app.state.store = store

    # -- errors ---------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(e) for e in exc.errors()]
        return _error(400, "bad_request", "; ".join(dict.fromkeys(problems)))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.error, exc.message, headers)

    @app.exception_handler(TokenRejected)
    async def _token(_: Request, exc: TokenRejected) -> JSONResponse:
        return _error(401, "invalid_token", exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "not_found", exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _error(409, "conflict", exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = ERROR_CODES.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal", f"internal server error ({type(exc).__name__})")

    # -- auth -----------------------------------------------------------------

    def agent_id(
        credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer),  # noqa: B008
    ) -> str:
        """The calling agent's id; anything but a known ``Bearer bak_...`` key is a 401."""
        if credentials is None:
            raise ApiError(401, "missing or malformed Authorization header; send 'Bearer bak_...'")
        key = credentials.credentials
        if credentials.scheme != "Bearer" or not key.startswith(API_KEY_PREFIX):
            raise ApiError(401, "Authorization must be 'Bearer bak_...'")
        found = store.agent_id_for_key(key)
        if found is None:
            raise ApiError(401, "API key not recognised; re-register the agent")
        return found

    Agent = Depends(agent_id)

    # -- endpoints ------------------------------------------------------------

    @app.get("/api/v1/health", response_model=s.HealthResponse, tags=["ops"])
    def health() -> Dict[str, str]:
        """Readiness probe; not part of the Agent API."""
        return {"status": "ok"}

    @app.post(
        f"{API}/register",
        response_model=s.RegisterResponse,
        responses=_errors(
            400, 401, 413, 415, e401="invalid_token: the token is unknown, used or expired"
        ),
        tags=["agent"],
    )
    def register(body: s.RegisterRequest) -> Dict[str, str]:
        """Register a new agent with a one-time token. The API key is shown only here."""
        new_id, api_key = store.register_agent(
            body.registrationToken,
            hostname=body.hostname,
            os=body.os,
            arch=body.arch,
            agent_version=body.agentVersion,
        )
        return {"agentId": new_id, "apiKey": api_key}

    @app.post(
        f"{API}/heartbeat",
        response_model=s.HeartbeatResponse,
        responses=_errors(400, 401, 413, 415),
        tags=["agent"],
    )
    def heartbeat(body: s.HeartbeatRequest, agent: str = Agent) -> Dict[str, bool]:
        """Record status and discovered databases; ``configChanged`` says: pull /config now."""
        discovered: Optional[List[Dict[str, str]]] = None
        if body.discoveredDatabases is not None:
            discovered = [d.model_dump() for d in body.discoveredDatabases]
        changed = store.record_heartbeat(
            agent,
            status=body.status,
            agent_version=body.agentVersion,
            config_hash=body.configHash,
            discovered=discovered,
        )
        return {"configChanged": changed}

    @app.get(
        f"{API}/config",
        response_model=s.ConfigResponse,
        responses=_errors(401),
        tags=["agent"],
    )
    def config(agent: str = Agent) -> Dict[str, Any]:
        """The agent's schedules, targets and alert channels, exactly as stored."""
        return store.get_config(agent)

    @app.post(
        f"{API}/jobs/start",
        response_model=s.JobStartResponse,
        responses=_errors(400, 401, 413, 415),
        tags=["jobs"],
    )
    def start_job(body: s.JobStartRequest, agent: str = Agent) -> Dict[str, str]:
        """Open a backup job; its id is used by the status, verification and logs calls."""
        job_id = store.start_job(
            agent, database_id=body.databaseId, target_id=body.targetId, schedule_id=body.scheduleId
        )
        return {"jobId": job_id}

    @app.post(
        f"{API}/jobs/{{jobId}}/status",
        response_model=s.SuccessResponse,
        responses=_errors(400, 401, 404, 409, 413, 415),
        tags=["jobs"],
    )
    def job_status(jobId: str, body: s.JobStatusRequest, agent: str = Agent) -> Dict[str, bool]:
        """Report a pipeline stage, or the terminal result (nothing may follow it: 409)."""
        store.update_job_status(agent, jobId, body.model_dump(exclude_none=True))
        return {"success": True}

    @app.post(
        f"{API}/jobs/{{jobId}}/verification",
        response_model=s.VerificationResponse,
        responses=_errors(400, 401, 404, 409, 413, 415),
        tags=["jobs"],
    )
    def job_verification(
        jobId: str,
        body: s.VerificationRequest,
        agent: str = Agent,
    ) -> Dict[str, str]:
        """Submit the result of restoring a completed job's backup."""
        report = body.model_dump()
        return {"verificationId": store.add_verification(agent, jobId, report)}

    @app.post(
        f"{API}/jobs/{{jobId}}/logs",
        response_model=s.LogsResponse,
        responses=_errors(400, 401, 404, 413, 415),
        tags=["jobs"],
    )
    def job_logs(jobId: str, body: s.LogsRequest, agent: str = Agent) -> Dict[str, int]:
        """Append 1 to 100 log entries to a job."""
        entries = [e.model_dump() for e in body.logs]
        return {"inserted": store.add_logs(agent, jobId, entries)}

    @app.post(
        f"{API}/schema-snapshot",
        response_model=s.SchemaSnapshotResponse,
        responses=_errors(400, 401, 413, 415),
        tags=["agent"],
    )
    def schema_snapshot(body: s.SchemaSnapshotRequest, agent: str = Agent) -> Dict[str, str]:
        """Store a database's schema for drift detection."""
        snapshot_id = store.add_schema_snapshot(
            agent,
            database_id=body.databaseId,
            snapshot=body.snapshot,
            table_count=body.tableCount,
            column_count=body.columnCount,
        )
        return {"snapshotId": snapshot_id}

    @app.post(
        f"{API}/anomaly",
        response_model=s.AnomalyResponse,
        responses=_errors(400, 401, 413, 415),
        tags=["agent"],
    )
    def anomaly(body: s.AnomalyRequest, agent: str = Agent) -> Dict[str, str]:
        """Report a detected anomaly."""
        anomaly_id = store.add_anomaly(
            agent,
            type=body.type,
            severity=body.severity,
            title=body.title,
            description=body.description,
        )
        return {"anomalyId": anomaly_id}

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(ApiGuard, store=store, faults=faults)
    return app


def _openapi(app: FastAPI) -> Dict[str, Any]:
    """FastAPI's document minus its 422 responses, which this server never sends."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = doc
    return doc
