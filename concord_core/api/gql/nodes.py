"""The Relay ``Node`` interface and ``node(id)``: any object by its global ID, if you may read it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.ids import from_global_id
from concord_core.operators.errors import OperatorError


@strawberry.interface(description="An object with an opaque global ID.")
class Node:
    id: strawberry.ID


NodeLoader = Callable[[GqlInfo, str], Awaitable["Node | None"]]
_loaders: dict[str, NodeLoader] = {}


def register_node(type_name: str, loader: NodeLoader) -> None:
    """Make ``node(id)`` resolve global IDs of ``type_name`` with ``loader(info, key)``."""
    _loaders[type_name] = loader


@strawberry.type
class NodeQueries:
    @strawberry.field(
        description="Any object by global ID; null when unknown or you cannot read it. "
        "Needs: read on that object (as its own query field needs)."
    )
    async def node(self, info: GqlInfo, id: strawberry.ID) -> Node | None:
        try:
            type_name, key = from_global_id(id)
        except OperatorError:
            return None
        loader = _loaders.get(type_name)
        return await loader(info, key) if loader else None
