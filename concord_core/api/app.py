"""The FastAPI application: middleware, REST routes and the GraphQL endpoint at /graphql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.schema.base import BaseSchema
from strawberry.types.unset import UNSET, UnsetType

import concord_core
from concord_core.api import rest
from concord_core.api.gql.context import Context
from concord_core.api.gql.schema import build_schema
from concord_core.api.limits import BodySizeLimit
from concord_core.api.paginated import add_paginated_routes
from concord_core.api.runtime import Runtime
from concord_core.auth.authenticate import AuthenticationFailed
from concord_core.auth.principal import ANONYMOUS
from concord_core.observability.context import set_user_id
from concord_core.observability.metrics import gauge
from concord_core.observability.middleware import RequestContextMiddleware
from concord_core.settings import AuthMode

#: The credential keys a websocket's connection_init payload may carry (any case), as the HTTP headers.
CREDENTIAL_KEYS = frozenset({"authorization", "x-api-key"})


def _has_credential_headers(connection: HTTPConnection) -> bool:
    return any(key in connection.headers for key in CREDENTIAL_KEYS)


def init_payload_credentials(payload: Any) -> dict[str, str] | None:
    """The credentials in a connection_init payload, keyed like headers (lower case), or None when it
    carries none; raises AuthenticationFailed for malformed ones (a key twice, a value not a string)."""
    if not isinstance(payload, dict):
        return None
    found: dict[str, str] = {}
    for key, value in payload.items():
        name = key.lower() if isinstance(key, str) else None
        if name not in CREDENTIAL_KEYS:
            continue
        if name in found or not isinstance(value, str):
            raise AuthenticationFailed("malformed")
        found[name] = value
    return found or None


class RecordsItself:
    """A Starlette route that records itself in the scope when it matches, as FastAPI's own routes do,
    so the request log and metrics name its template (observability.middleware.route_template)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)  # type: ignore[misc]
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


class RecordedRoute(RecordsItself, Route):
    pass


class RecordedWebSocketRoute(RecordsItself, WebSocketRoute):
    pass


class ConcordGraphQL(GraphQL[Context, None]):
    """The GraphQL endpoint at /graphql (HTTP and websockets): Strawberry's ASGI app, routed by Starlette
    without FastAPI's dependency injection, which cost more per request than Strawberry's own handling
    before the query ran. Websockets may authenticate in their connection_init payload."""

    def __init__(self, schema: BaseSchema, runtime: Runtime) -> None:
        super().__init__(schema, multipart_uploads_enabled=True, graphql_ide="graphiql")
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _has_credential_headers(HTTPConnection(scope)):
            # Credentials in the handshake are checked before Strawberry accepts the connection, so that
            # bad ones are refused there with a 401, as over HTTP (rest.principal remembers good ones).
            await rest.principal(cast(Request, WebSocket(scope, receive, send)))
        await super().__call__(scope, receive, send)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        """Who asks: an HTTP request or a subscription's websocket, from its headers (see rest.principal)."""
        runtime = self.runtime
        if (
            request.scope["type"] == "websocket"
            and runtime.settings.auth_mode is AuthMode.APIKEY
            and not _has_credential_headers(request)
        ):
            # A websocket may authenticate in its connection_init payload instead (browsers cannot set
            # its headers); until it does, it is nobody and can run nothing (on_ws_connect).
            context = Context(runtime, ANONYMOUS)
            context.awaiting_credentials = True
            return context
        return Context(runtime, await rest.principal(cast(Request, request)))

    def encode_json(self, data: object) -> str:
        """An answer or a websocket message as compact JSON through orjson (a page of 50 items: a tenth of
        ``json.dumps``'s time); what orjson refuses (integers past 64 bits, keys that are not strings) goes
        through Strawberry's own encoder (``json.dumps``). Text, not bytes: Strawberry sends bytes as binary
        websocket frames. Decoding stays with ``json``: orjson reads such integers as floats."""
        try:
            return orjson.dumps(data).decode()
        except TypeError:
            return cast(str, super().encode_json(data))

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate from the payload's Authorization or X-API-Key (as the HTTP headers do); bad
        credentials, or none where the instance needs them, close the connection (4403) before any
        subscription starts."""
        try:
            credentials = init_payload_credentials(context.connection_params)
            if credentials is not None:
                runtime = context.runtime
                context.principal = await runtime.authenticate_async(credentials)
                context.awaiting_credentials = False
                set_user_id(context.principal.user_id)
        except AuthenticationFailed:
            raise ConnectionRejectionError from None
        if context.awaiting_credentials:
            raise ConnectionRejectionError
        return UNSET


def create_app(runtime: Runtime) -> FastAPI:
    """An app serving ``runtime``, whose database must already be migrated."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        runtime.jobs.start()  # in-process job runners, when there is no Redis
        await runtime.open_async_reads()
        try:
            yield
        finally:
            await runtime.close_async_reads()
            runtime.jobs.stop()

    app = FastAPI(title="Concord", version=concord_core.__version__, lifespan=lifespan)
    app.state.runtime = runtime
    gauge("concord_lenses_failed", "Installed lenses skipped because they are invalid.").set(
        len(runtime.lenses.failed)
    )

    app.add_exception_handler(HTTPException, rest.http_error)
    app.add_exception_handler(RequestValidationError, rest.request_validation_error)
    # GraphQL first: most requests are GraphQL, and routes are matched in order (no path is shared).
    graphql = ConcordGraphQL(build_schema(runtime.lenses), runtime)
    app.router.routes.append(
        RecordedRoute("/graphql", graphql, methods=["GET", "POST"], include_in_schema=False)
    )
    app.router.routes.append(RecordedWebSocketRoute("/graphql", graphql))
    app.include_router(rest.router)
    add_paginated_routes(app, list(runtime.browsables.values()))
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
