"""Global: ``dtus`` and ``artifacts`` as connections, and the pieces every browsable's field shares
(filter inputs, ordering, :func:`browse_connection`) so lenses serve theirs the same way."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import strawberry

from concord_core.api.gql.artifacts import Artifact
from concord_core.api.gql.connections import BrowseScope, Connection, columns_for, item_fields
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.dtus import DTU_COLUMNS, Dtu
from concord_core.api.gql.ids import expect_global_id
from concord_core.auth.policy import Visibility
from concord_core.browse.service import RELEVANCE, BrowseRequest, FilterValue, RangeFilter, TagFilter
from concord_core.browse.source import Browsable
from concord_core.browse.sources import ARTIFACTS, DTUS
from concord_core.operators.artifacts import ArtifactKind
from concord_core.operators.dtus import Tier

NodeT = TypeVar("NodeT")


@strawberry.enum(description="What to sort by; RELEVANCE needs a search, and is the default when searching.")
class SortField(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    TITLE = "title"
    RELEVANCE = RELEVANCE


@strawberry.enum
class SortDirection(enum.Enum):
    ASC = "asc"
    DESC = "desc"


@strawberry.input
class OrderBy:
    field: SortField
    direction: SortDirection = SortDirection.DESC


@strawberry.input(description="Items with any of `anyOf` and all of `allOf`.")
class TagFilterInput:
    any_of: list[str] | None = None
    all_of: list[str] | None = None


@strawberry.input(description="From (inclusive) and to (exclusive).")
class TimeRange:
    from_: datetime | None = strawberry.field(default=None, name="from")
    to: datetime | None = None


@strawberry.input
class DtuFilter:
    tags: TagFilterInput | None = None
    type: list[str] | None = None
    tier: list[Tier] | None = None
    visibility: list[Visibility] | None = None
    status: list[str] | None = None
    owner: list[strawberry.ID] | None = None
    workspace: list[strawberry.ID] | None = None
    created: TimeRange | None = None
    updated: TimeRange | None = None


@strawberry.input
class ArtifactFilter:
    tags: TagFilterInput | None = None
    type: list[ArtifactKind] | None = None
    visibility: list[Visibility] | None = None
    owner: list[strawberry.ID] | None = None
    workspace: list[strawberry.ID] | None = None
    created: TimeRange | None = None
    updated: TimeRange | None = None


GLOBAL_ID_FILTERS = {"owner": ("User", "user"), "workspace": ("Workspace", "workspace")}


def filters_from_input(value: Any) -> dict[str, FilterValue]:
    """A Strawberry filter input as the browse service's filters (global IDs decoded, enums unwrapped)."""
    filters: dict[str, FilterValue] = {}
    if value is None:
        return filters
    for name, given in vars(value).items():
        if given is None:
            continue
        if isinstance(given, TagFilterInput):
            filters[name] = TagFilter(any_of=given.any_of or (), all_of=given.all_of or ())
        elif isinstance(given, TimeRange):
            filters[name] = RangeFilter(start=given.from_, end=given.to)
        elif name in GLOBAL_ID_FILTERS:
            type_name, noun = GLOBAL_ID_FILTERS[name]
            filters[name] = [expect_global_id(v, type_name, noun, f"filter.{name}") for v in given]
        else:
            filters[name] = [v.value if isinstance(v, enum.Enum) else str(v) for v in given]
    return filters


def browse_request(filter: Any, search: str | None, order_by: OrderBy | None) -> BrowseRequest:
    return BrowseRequest(
        filters=filters_from_input(filter),
        search=search,
        sort=order_by.field.value if order_by else None,
        descending=order_by is None or order_by.direction is SortDirection.DESC,
    )


async def browse_connection(
    info: GqlInfo,
    browsable: Browsable,
    request: BrowseRequest,
    to_node: Callable[[Any], NodeT],
    *,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
    columns: Mapping[str, tuple[str, ...]] | None = None,
) -> Connection[NodeT]:
    """One page of ``browsable`` for the caller, as a connection (totalCount and facets on demand).

    ``to_node`` makes an item of a row: the model's entity, or, given ``columns`` (the node type's field
    names -> the model attributes each reads), a plain row of only the columns the query's items select
    (all of them when it selects a field ``columns`` does not name)."""
    principal = info.context.principal
    runtime = info.context.runtime
    browse = runtime.browse
    wanted = None
    if columns is not None:
        wanted = columns_for(item_fields(info), columns)
        if wanted is None:
            wanted = browsable.attributes
    paging: dict[str, Any] = {"first": first, "after": after, "last": last, "before": before}
    page = None
    reads = runtime.async_reads
    if wanted is not None and reads is not None and reads.usable():
        # On PostgreSQL a page of one statement is read on the event loop (db.async_reads).
        page = await browse.page_async(reads, principal, browsable, request, **paging, columns=wanted)
    if page is None:
        page = await info.context.read(
            lambda session: browse.page(session, principal, browsable, request, **paging, columns=wanted),
            transaction=False,  # no SET LOCAL, no locks
        )
    return Connection.from_page(page, BrowseScope(principal, browsable, request), to_node)


@strawberry.type
class GlobalQueries:
    @strawberry.field(
        description="Every DTU you can read (not others' unlisted ones), filtered, searched and "
        "ordered. Needs: nothing; you see what the visibility rules allow."
    )
    async def dtus(
        self,
        info: GqlInfo,
        filter: DtuFilter | None = None,
        search: str | None = None,
        order_by: OrderBy | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Dtu]:
        request = browse_request(filter, search, order_by)
        return await browse_connection(
            info,
            DTUS,
            request,
            Dtu.from_row,
            first=first,
            after=after,
            last=last,
            before=before,
            columns=DTU_COLUMNS,
        )

    @strawberry.field(
        description="Every artifact you can read (not others' unlisted ones), filtered, searched "
        "and ordered. Needs: nothing; you see what the visibility rules allow."
    )
    async def artifacts(
        self,
        info: GqlInfo,
        filter: ArtifactFilter | None = None,
        search: str | None = None,
        order_by: OrderBy | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Artifact]:
        request = browse_request(filter, search, order_by)
        return await browse_connection(
            info, ARTIFACTS, request, Artifact.from_row, first=first, after=after, last=last, before=before
        )
