"""The composed GraphQL schema: the kernel's query and mutation types, merged into one."""

from __future__ import annotations

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.tools import merge_types

import concord_core
from concord_core.api.gql.artifacts import ArtifactMutations, ArtifactQueries
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.dtus import DtuMutations, DtuQueries
from concord_core.api.gql.errors import ErrorShaping
from concord_core.api.gql.nodes import NodeQueries

MAX_DEPTH = 12
MAX_ALIASES = 30
MAX_TOKENS = 4000


@strawberry.type(description="About this Concord instance.")
class ServerInfo:
    version: str
    auth_mode: str
    environment: str


@strawberry.type
class ServerQueries:
    @strawberry.field(description="Version and modes of this instance. Needs: nothing.")
    def server_info(self, info: GqlInfo) -> ServerInfo:
        settings = info.context.runtime.settings
        return ServerInfo(
            version=concord_core.__version__,
            auth_mode=settings.auth_mode.value,
            environment=settings.environment.value,
        )


KERNEL_QUERIES: tuple[type, ...] = (NodeQueries, ServerQueries, DtuQueries, ArtifactQueries)
KERNEL_MUTATIONS: tuple[type, ...] = (DtuMutations, ArtifactMutations)


def build_schema() -> strawberry.Schema:
    query = merge_types("Query", KERNEL_QUERIES)
    mutation = merge_types("Mutation", KERNEL_MUTATIONS)
    return strawberry.Schema(
        query=query,
        mutation=mutation,
        extensions=[
            ErrorShaping,
            QueryDepthLimiter(max_depth=MAX_DEPTH),  # type: ignore[list-item]
            MaxAliasesLimiter(max_alias_count=MAX_ALIASES),  # type: ignore[list-item]
            MaxTokensLimiter(max_token_count=MAX_TOKENS),  # type: ignore[list-item]
        ],
    )
