"""Relay connection types, generic over the node type (``DtuConnection``, ``LensItemConnection``, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import strawberry
from sqlalchemy import Select

from concord_core.api.gql.context import GqlInfo
from concord_core.browse.connection import Page, count

NodeT = TypeVar("NodeT")


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


@strawberry.type
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]]
    page_info: PageInfo
    query: strawberry.Private[Select[Any]]

    @strawberry.field
    def nodes(self) -> list[NodeT]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="How many items match, over all pages (computed only when asked for).")
    async def total_count(self, info: GqlInfo) -> int:
        return await info.context.read(count, self.query)

    @classmethod
    def from_page(
        cls, page: Page[Any], query: Select[Any], to_node: Callable[[Any], NodeT]
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
            query=query,
        )
