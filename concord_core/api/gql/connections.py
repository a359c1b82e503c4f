"""Relay connections for every browsable (``DtuConnection``, ``ArtifactConnection``, ...), with
``totalCount`` and ``facets`` computed only when selected, by the browse service."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import strawberry

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.ids import to_global_id
from concord_core.auth.principal import Principal
from concord_core.browse.connection import Page
from concord_core.browse.service import DEFAULT_FACET_VALUES, BrowseRequest, FacetResult
from concord_core.browse.source import Browsable
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
)

NodeT = TypeVar("NodeT")

#: A connection's fields that hold its items: ``nodes``, and ``node`` within ``edges``.
ITEMS, EDGES, EDGE_NODE = "nodes", "edges", "node"


def _flatten(
    selection_set: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    """The fields of one selection set, through inline fragments and fragment spreads (each fragment
    expanded once, so fragments spreading fragments cost what the document holds, not what it would
    expand to). Directives are ignored: a field that @skip leaves out still counts as selected."""
    found: list[FieldNode] = []
    seen: set[str] = set()
    pending: list[SelectionSetNode] = [selection_set] if selection_set is not None else []
    while pending:
        for node in pending.pop().selections:
            if isinstance(node, FieldNode):
                found.append(node)
            elif isinstance(node, InlineFragmentNode):
                pending.append(node.selection_set)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                seen.add(node.name.value)
                fragment = fragments.get(node.name.value)
                if fragment is not None:
                    pending.append(fragment.selection_set)
    return found


def item_fields(info: GqlInfo) -> set[str]:
    """The names of the fields the query selects on a connection's items (the connection being the field
    ``info`` resolves), under ``nodes`` and ``edges { node }``, whatever the aliases and fragments."""
    raw = info._raw_info
    fragments = raw.fragments
    names: set[str] = set()
    for connection in raw.field_nodes:
        for field in _flatten(connection.selection_set, fragments):
            if field.name.value == ITEMS:
                items: Iterable[FieldNode] = [field]
            elif field.name.value == EDGES:
                items = (f for f in _flatten(field.selection_set, fragments) if f.name.value == EDGE_NODE)
            else:
                continue
            for item in items:
                names.update(f.name.value for f in _flatten(item.selection_set, fragments))
    return names


def columns_for(fields: Iterable[str], columns: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """The model attributes that items showing ``fields`` need, by ``columns`` (a node type's field name
    -> the attributes it reads); None (every column) if a field is not in ``columns``."""
    needed: dict[str, None] = {}
    for name in fields:
        read = columns.get(name)
        if read is None:
            return None
        needed.update(dict.fromkeys(read))
    return list(needed)


#: Facets whose values are row ids, shown to clients as global ids of these types.
ID_FACETS = {"workspace": "Workspace", "owner": "User"}


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type(description="One value of a facet and how many matching items have it.")
class FacetValue:
    value: str
    count: int


@strawberry.type(
    description="Counts per value of one field over all matching items you can read. "
    "Disjunctive: a field's counts ignore that field's own filter."
)
class Facet:
    field: str
    values: list[FacetValue]
    truncated: bool = strawberry.field(description="More values exist than were returned.")
    timed_out: bool = strawberry.field(description="Counting ran past its time budget; values are empty.")

    @classmethod
    def from_result(cls, result: FacetResult) -> Facet:
        type_name = ID_FACETS.get(result.field)
        return cls(
            field=result.field,
            values=[
                FacetValue(value=to_global_id(type_name, v.value) if type_name else v.value, count=v.count)
                for v in result.values
            ],
            truncated=result.truncated,
            timed_out=result.timed_out,
        )


@dataclass(frozen=True)
class BrowseScope:
    """What a connection was asked for, kept so totalCount and facets answer the same question."""

    principal: Principal
    browsable: Browsable
    request: BrowseRequest


@strawberry.type
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]]
    page_info: PageInfo
    scope: strawberry.Private[BrowseScope]

    @strawberry.field
    def nodes(self) -> list[NodeT]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="How many items match, over all pages (computed only when asked for).")
    async def total_count(self, info: GqlInfo) -> int:
        browse = info.context.runtime.browse
        scope = self.scope
        return await info.context.read(
            browse.total, scope.principal, scope.browsable, scope.request, transaction=False
        )

    @strawberry.field(
        description="Counts per value of the named fields (default: all this list offers), "
        "top `limit` values each (at most 100)."
    )
    async def facets(
        self, info: GqlInfo, fields: list[str] | None = None, limit: int = DEFAULT_FACET_VALUES
    ) -> list[Facet]:
        browse = info.context.runtime.browse
        scope = self.scope
        results = await info.context.run(
            browse.facets, scope.principal, scope.browsable, scope.request, fields, limit
        )
        return [Facet.from_result(result) for result in results]

    @classmethod
    def from_page(
        cls, page: Page[Any], scope: BrowseScope, to_node: Callable[[Any], NodeT]
    ) -> Connection[NodeT]:
        edges = [
            Edge(cursor=cursor, node=to_node(row))
            for cursor, row in zip(page.cursors, page.items, strict=True)
        ]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                has_previous_page=page.has_previous_page,
                start_cursor=page.cursors[0] if page.cursors else None,
                end_cursor=page.cursors[-1] if page.cursors else None,
            ),
            scope=scope,
        )
