"""The FastAPI application: middleware, REST routes and the GraphQL endpoint at /graphql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from strawberry.fastapi import GraphQLRouter

import concord_core
from concord_core.api import rest
from concord_core.api.gql.context import Context
from concord_core.api.gql.schema import build_schema
from concord_core.api.limits import BodySizeLimit
from concord_core.api.runtime import Runtime
from concord_core.observability.middleware import RequestContextMiddleware


def create_app(runtime: Runtime) -> FastAPI:
    """An app serving ``runtime``, whose database must already be migrated."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield

    app = FastAPI(title="Concord", version=concord_core.__version__, lifespan=lifespan)
    app.state.runtime = runtime

    async def graphql_context(request: Request) -> Context:
        return Context(runtime, await rest.principal(request))

    graphql = GraphQLRouter(
        build_schema(runtime.lenses),
        context_getter=graphql_context,
        multipart_uploads_enabled=True,
        graphql_ide="graphiql",
    )
    app.include_router(rest.router)
    app.include_router(graphql, prefix="/graphql")
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
