"""The composed GraphQL schema: the kernel's root types plus every active lens's contributions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import suppress
from functools import lru_cache, partial
from typing import Any

import strawberry
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, SchemaExtension, ValidationCache
from strawberry.schema.schema import validate_document
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

import concord_core
from concord_core.api.gql.accounts import AccountMutations, AccountQueries
from concord_core.api.gql.artifacts import ArtifactMutations, ArtifactQueries
from concord_core.api.gql.browse import GlobalQueries
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.cost import CostCache, QueryCost
from concord_core.api.gql.dtus import DtuMutations, DtuQueries
from concord_core.api.gql.errors import ErrorShaping
from concord_core.api.gql.execution import ConcordExecutionContext, mark_plain_fields
from concord_core.api.gql.jobs import JobMutations, JobQueries, JobSubscriptions
from concord_core.api.gql.lenses import LensMutations, LensQueries
from concord_core.api.gql.nodes import NodeQueries
from concord_core.api.gql.query_limits import limits_rule
from concord_core.api.gql.workflows import WorkflowMutations, WorkflowQueries, WorkflowSubscriptions
from concord_core.observability.context import set_lens_id, set_operation
from concord_core.operators.errors import OperatorError
from concord_core.plugins.contract import GraphQLContribution
from concord_core.plugins.graphql_names import collect
from concord_core.plugins.registry import LensRegistry, load_registry
from concord_core.settings import Settings
from graphql import DocumentNode, FieldNode, GraphQLError, OperationDefinitionNode, parse

MAX_DEPTH = 12
MAX_ALIASES = 30
MAX_TOKENS = 4000
#: Distinct documents whose parse and validation are kept (an LRU each): a client's few operations are
#: parsed and validated once, and unique documents cannot grow memory past this.
DOCUMENT_CACHE_SIZE = 512
#: Longer documents are parsed and validated anew each time: the caches keep at most
#: DOCUMENT_CACHE_SIZE documents of at most this many characters (a string literal is one token, so the
#: token limit alone does not bound a document's size).
MAX_CACHED_DOCUMENT_CHARS = 64 * 1024


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


@lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def _parse(query: str, **options: Any) -> DocumentNode:
    return parse(query, **options)


class ParseCache(SchemaExtension):
    """strawberry's ``ParserCache``, except that a document that does not parse is left to strawberry's
    own parsing step, which reports it like any other error (``ParserCache`` raises out of the hook)."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if (
            context.query
            and len(context.query) <= MAX_CACHED_DOCUMENT_CHARS
            and context.graphql_document is None
        ):
            # A document that does not parse is parsed again by strawberry, which reports the error.
            with suppress(Exception):
                context.graphql_document = _parse(context.query, **context.parse_options)
        yield


class BoundedValidationCache(ValidationCache):
    """strawberry's ``ValidationCache`` for documents up to MAX_CACHED_DOCUMENT_CHARS; longer ones are
    validated without being kept."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is None or context.query is None or len(context.query) <= MAX_CACHED_DOCUMENT_CHARS:
            yield from super().on_validate()
            return
        context.pre_execution_errors = validate_document(
            context.schema._schema, document, context.validation_rules
        )
        yield


class ConcordSchema(strawberry.Schema):
    """Strawberry's schema, executed by :class:`ConcordExecutionContext` (plain leaf fields on a fast path),
    logging only unexpected errors: a client's bad input or a refusal is answered, not an incident."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(execution_context_class=ConcordExecutionContext, **kwargs)
        mark_plain_fields(self._schema)

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
            # Costed once per document, operation and page sizes (documents come from the parse cache).
            partial(QueryCost, cache=CostCache(DOCUMENT_CACHE_SIZE, MAX_CACHED_DOCUMENT_CHARS)),
            # Depth and aliases in one rule that walks each fragment once (strawberry's limiters expand
            # every spread, exponential in fragments spreading fragments); the class is made once, so
            # the validation cache below recognises every request's rules as the same.
            partial(AddValidationRules, [limits_rule(MAX_DEPTH, MAX_ALIASES)]),
            partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
            # Parsing and validating a document cost more server CPU than a whole createDtu's SQL; a
            # document depends only on its text, and its validation only on the document and rules.
            ParseCache,
            partial(BoundedValidationCache, maxsize=DOCUMENT_CACHE_SIZE),
        ],
    )
