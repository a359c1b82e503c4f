"""The composed GraphQL schema: the kernel's root types plus every active lens's contributions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

import concord_core
from concord_core.api.gql.accounts import AccountMutations, AccountQueries
from concord_core.api.gql.artifacts import ArtifactMutations, ArtifactQueries
from concord_core.api.gql.browse import GlobalQueries
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.cost import QueryCost
from concord_core.api.gql.dtus import DtuMutations, DtuQueries
from concord_core.api.gql.errors import ErrorShaping
from concord_core.api.gql.jobs import JobMutations, JobQueries, JobSubscriptions
from concord_core.api.gql.lenses import LensMutations, LensQueries
from concord_core.api.gql.nodes import NodeQueries
from concord_core.api.gql.workflows import WorkflowMutations, WorkflowQueries, WorkflowSubscriptions
from concord_core.observability.context import set_lens_id, set_operation
from concord_core.operators.errors import OperatorError
from concord_core.plugins.contract import GraphQLContribution
from concord_core.plugins.graphql_names import collect
from concord_core.plugins.registry import LensRegistry, load_registry
from concord_core.settings import Settings
from graphql import FieldNode, GraphQLError, OperationDefinitionNode

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


#: What the kernel itself contributes; lenses may not redefine any of its fields or types.
KERNEL = GraphQLContribution(
    query=(
        NodeQueries,
        ServerQueries,
        AccountQueries,
        GlobalQueries,
        DtuQueries,
        ArtifactQueries,
        LensQueries,
        JobQueries,
        WorkflowQueries,
    ),
    mutation=(
        AccountMutations,
        DtuMutations,
        ArtifactMutations,
        LensMutations,
        JobMutations,
        WorkflowMutations,
    ),
    subscription=(JobSubscriptions, WorkflowSubscriptions),
)


def load_lenses(settings: Settings) -> LensRegistry:
    """The installed lenses, checked against the kernel (raises InvalidLenses unless told to skip)."""
    return load_registry(KERNEL, skip_invalid=settings.skip_invalid_lenses)


class LensAttribution(SchemaExtension):
    """Record the operation name, and the lens owning its first lens field, for the request log."""

    def __init__(self, *, owners: dict[str, str]) -> None:
        self.owners = owners

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        set_operation(context.operation_name)
        document = context.graphql_document
        if self.owners and document is not None:
            for definition in document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    for selection in definition.selection_set.selections:
                        if isinstance(selection, FieldNode) and selection.name.value in self.owners:
                            set_lens_id(self.owners[selection.name.value])
                            break
        yield


class ConcordSchema(strawberry.Schema):
    """Logs only unexpected errors: a client's bad input or a refusal is answered, not an incident."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        unexpected = [
            error
            for error in errors
            if error.original_error is not None
            and not isinstance(error.original_error, OperatorError | GraphQLError)
        ]
        super().process_errors(unexpected, execution_context)


def _root(name: str, types: Sequence[type]) -> type | None:
    return merge_types(name, tuple(types)) if types else None


def build_schema(lenses: LensRegistry) -> strawberry.Schema:
    """One schema from the kernel and the active lenses (whose names were checked not to collide)."""
    query, mutation, subscription = list(KERNEL.query), list(KERNEL.mutation), list(KERNEL.subscription)
    extra_types = list(KERNEL.types)
    owners: dict[str, str] = {}
    for lens in lenses.active:
        contribution = lens.graphql
        query += contribution.query
        mutation += contribution.mutation
        subscription += contribution.subscription
        extra_types += contribution.types
        names = collect(
            {
                "query": contribution.query,
                "mutation": contribution.mutation,
                "subscription": contribution.subscription,
            }
        )
        owners.update({field_name: lens.lens_id for _root_name, field_name in names.root_fields})
    return ConcordSchema(
        query=merge_types("Query", tuple(query)),
        mutation=_root("Mutation", mutation),
        subscription=_root("Subscription", subscription),
        types=extra_types,
        extensions=[
            ErrorShaping,
            partial(LensAttribution, owners=owners),
            QueryCost,
            partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
            partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
            partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        ],
    )
