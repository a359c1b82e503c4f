"""REST routes: health, readiness, metrics and artifact content download."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import text

from concord_core.api.gql.ids import plausible_key
from concord_core.api.runtime import Runtime
from concord_core.auth.authenticate import AuthenticationFailed
from concord_core.auth.principal import Principal
from concord_core.observability.context import current_request_id, set_user_id
from concord_core.observability.metrics import metrics_response
from concord_core.operators import artifacts as artifact_ops
from concord_core.operators.errors import ErrorCode, OperatorError, not_found
from concord_core.plugins.manifest import manifest_schema
from concord_core.settings import AuthMode
from concord_core.storage import BlobNotFound, StorageError

log = logging.getLogger("concord.api")
#: The largest version number the database can hold (a 32-bit integer column).
MAX_VERSION = 2**31 - 1
router = APIRouter()

STATUS_FOR_CODE = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.VALIDATION: 422,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.INTERNAL: 500,
}


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def unauthenticated(message: str) -> HTTPException:
    return HTTPException(
        status_code=401, detail=message, headers={"WWW-Authenticate": 'Bearer realm="concord"'}
    )


CODE_FOR_STATUS = {status: code for code, status in STATUS_FOR_CODE.items()}


async def request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Malformed REST parameters, as typed VALIDATION errors naming each parameter."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"][1:]) or None,
            "code": ErrorCode.VALIDATION.value,
            "message": error["msg"],
            "extensions": {"code": ErrorCode.VALIDATION.value, "requestId": current_request_id()},
        }
        for error in exc.errors()
    ]
    return JSONResponse({"errors": errors}, status_code=422)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """HTTP errors in one shape that both REST and GraphQL clients read: errors[] with a code (also under
    extensions, as GraphQL clients expect) and the request id."""
    assert isinstance(exc, HTTPException)
    code = CODE_FOR_STATUS.get(
        exc.status_code, ErrorCode.VALIDATION if exc.status_code < 500 else ErrorCode.INTERNAL
    )
    error = {
        "field": None,
        "code": code.value,
        "message": str(exc.detail),
        "extensions": {"code": code.value, "requestId": current_request_id()},
    }
    return JSONResponse({"errors": [error]}, status_code=exc.status_code, headers=exc.headers)


async def principal(request: Request) -> Principal:
    """Who is asking, from the request's credentials; remembered for the rest of the request.

    Bad credentials are a 401 in every mode; no credentials are a 401 in apikey mode (health, readiness and
    metrics do not ask for a principal, so they stay open).
    """
    known: Principal | None = getattr(request.state, "principal", None)
    if known is None:
        rt = runtime(request)
        try:
            known = await rt.authenticate_async(request.headers)
        except AuthenticationFailed as exc:
            raise unauthenticated(str(exc)) from None
        if rt.settings.auth_mode is AuthMode.APIKEY and not known.is_authenticated:
            raise unauthenticated("this instance needs an API key (Authorization: Bearer or X-API-Key)")
        request.state.principal = known
        set_user_id(known.user_id)
    return known


def error_response(exc: OperatorError) -> JSONResponse:
    errors = [{"field": e.field, "code": e.code.value, "message": e.message} for e in exc.errors]
    return JSONResponse({"errors": errors}, status_code=STATUS_FOR_CODE.get(exc.code, 400))


@router.get("/healthz", tags=["ops"], summary="The process is alive.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Database, object store and (when configured) Redis reachable.")
async def readyz(rt: Annotated[Runtime, Depends(runtime)]) -> JSONResponse:
    def probe() -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            with rt.db.read() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports any failure rather than raising it
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            rt.store.check()
            checks["objectStore"] = "ok"
        except StorageError as exc:
            checks["objectStore"] = f"error: {exc}"
        if rt.settings.redis_url:
            import redis

            try:
                redis.Redis.from_url(rt.settings.redis_url, socket_timeout=2).ping()
                checks["redis"] = "ok"
            except redis.RedisError as exc:
                checks["redis"] = f"error: {type(exc).__name__}"
        return checks

    checks = await anyio.to_thread.run_sync(probe)
    ready = all(value == "ok" for value in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "authMode": rt.settings.auth_mode.value,
        "checks": checks,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/api/lens-manifest.schema.json",
    tags=["lenses"],
    summary="The JSON Schema lens manifests follow.",
    dependencies=[Depends(principal)],
)
async def lens_manifest_schema() -> JSONResponse:
    return JSONResponse(manifest_schema(), media_type="application/schema+json")


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics.")
async def metrics() -> Response:
    body, content_type = metrics_response()
    return Response(body, media_type=content_type)


@router.get(
    "/api/artifacts/{artifact_id}/versions/{version}/content",
    tags=["artifacts"],
    summary="Download one version's bytes (verified against its SHA-256 as they stream).",
    response_model=None,
)
async def download_artifact(
    artifact_id: str,
    version: int,
    request: Request,
    rt: Annotated[Runtime, Depends(runtime)],
    who: Annotated[Principal, Depends(principal)],
) -> Response:
    ctx = rt.operation_context(who)

    def lookup() -> tuple[str, int, str, str | None]:
        # Ids and versions that cannot exist are not found without asking the database (PostgreSQL
        # refuses NUL in text and integers beyond its range): the same answer as any unknown one.
        if not plausible_key(artifact_id):
            raise not_found("artifact")
        with rt.db.read() as session:
            if not 0 < version <= MAX_VERSION:
                artifact_ops.get_artifact(ctx, session, artifact_id)
                raise not_found("artifact version")
            row = artifact_ops.get_version(ctx, session, artifact_id, version)
            return row.blob_sha256, row.size, row.media_type, row.filename

    try:
        sha256, size, media_type, filename = await anyio.to_thread.run_sync(lookup)
    except OperatorError as exc:
        return error_response(exc)
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    headers = {
        "ETag": etag,
        "Content-Length": str(size),
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if filename:
        safe = filename.replace('"', "").replace("\r", "").replace("\n", "")
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    try:
        chunks = await anyio.to_thread.run_sync(rt.store.open_chunks, sha256)
    except BlobNotFound:
        log.error(
            "artifact %s version %s: blob %s is missing from the object store", artifact_id, version, sha256
        )
        missing = OperatorError.single(ErrorCode.INTERNAL, "the stored content of this version is missing")
        return error_response(missing)
    return StreamingResponse(_last_chunk_after_verification(chunks), media_type=media_type, headers=headers)


def _last_chunk_after_verification(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass a blob's chunks on, holding the last one back until the store has verified the whole content.

    The store raises BlobCorrupted only after the last chunk; sending that chunk first would give the client
    every byte Content-Length promised, so a corrupted file would look like a complete download. Held back,
    the response ends short and any HTTP client reports it as broken.
    """
    held: bytes | None = None
    try:
        for chunk in chunks:
            if held is not None:
                yield held
            held = chunk
        if held is not None:
            yield held
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
