"""The FastAPI application: middleware, REST routes and the GraphQL endpoint at /graphql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection
from strawberry.fastapi import GraphQLRouter

import concord_core
from concord_core.api import rest
from concord_core.api.gql.context import Context
from concord_core.api.gql.schema import build_schema
from concord_core.api.limits import BodySizeLimit
from concord_core.api.paginated import add_paginated_routes
from concord_core.api.runtime import Runtime
from concord_core.observability.metrics import gauge
from concord_core.observability.middleware import RequestContextMiddleware


def create_app(runtime: Runtime) -> FastAPI:
    """An app serving ``runtime``, whose database must already be migrated."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        runtime.jobs.start()  # in-process job runners, when there is no Redis
        try:
            yield
        finally:
            runtime.jobs.stop()

    app = FastAPI(title="Concord", version=concord_core.__version__, lifespan=lifespan)
    app.state.runtime = runtime
    gauge("concord_lenses_failed", "Installed lenses skipped because they are invalid.").set(
        len(runtime.lenses.failed)
    )

    async def graphql_context(connection: HTTPConnection) -> Context:
        # An HTTP request or a subscription's websocket: principal() reads only headers, state and app.
        return Context(runtime, await rest.principal(cast(Request, connection)))

    graphql = GraphQLRouter(
        build_schema(runtime.lenses),
        context_getter=graphql_context,
        multipart_uploads_enabled=True,
        graphql_ide="graphiql",
    )
    app.add_exception_handler(HTTPException, rest.http_error)
    app.add_exception_handler(RequestValidationError, rest.request_validation_error)
    app.include_router(rest.router)
    add_paginated_routes(app, list(runtime.browsables.values()))
    app.include_router(graphql, prefix="/graphql")
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
