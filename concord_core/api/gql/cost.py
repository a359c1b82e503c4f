"""Query cost: every field costs 1, and a list field's selection costs as many times as it holds items,
multiplied through nesting: a connection's ``edges``/``nodes`` ``first``/``last`` times (20 when asked
without either; its ``totalCount`` and ``facets`` once), a plain list 10 times. An operation over the limit
is refused before any resolver runs; every response to a document that parses reports its cost in
``extensions.cost`` (also when validation refuses it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from strawberry.extensions import SchemaExtension

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNamedType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
)
from graphql import ExecutionResult as GraphQLExecutionResult

MAX_COST = 10_000
DEFAULT_CONNECTION_PAGE = 20
UNPAGED_LIST = 10  # a plain list (citations, history) is assumed to hold this many
PAGE_ARGUMENTS = ("first", "last")


def _page_size(field: FieldNode, variables: Mapping[str, Any], definition: GraphQLField) -> int:
    for argument in field.arguments or ():
        if argument.name.value in PAGE_ARGUMENTS:
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(int(value.value), 1)
            if isinstance(value, VariableNode):
                given = variables.get(value.name.value)
                if isinstance(given, int):
                    return max(given, 1)
    if get_named_type(definition.type).name.endswith("Connection"):
        return DEFAULT_CONNECTION_PAGE
    return UNPAGED_LIST if isinstance(get_nullable_type(definition.type), GraphQLList) else 1


ITEM_FIELDS = ("edges", "nodes")  # a connection's fields that hold one entry per item


class _Costing:
    def __init__(self, schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any]) -> None:
        self.schema = schema
        self.variables = variables
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        # Each fragment is costed once (per page size), so a document that spreads fragments into
        # fragments takes time linear in its size to cost; it is costed before validation looks at it.
        self.fragment_costs: dict[tuple[str, int], int] = {}

    def selection(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType, seen: frozenset[str], items: int = 1
    ) -> int:
        """The cost of a selection on ``parent``; ``items`` is the page size when ``parent`` is a
        connection."""
        total = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                total += self.field(node, parent, seen, items)
            elif isinstance(node, InlineFragmentNode):
                condition = (
                    self.schema.get_type(node.type_condition.name.value) if node.type_condition else parent
                )
                total += self.selection(node.selection_set, condition or parent, seen, items)
            elif isinstance(node, FragmentSpreadNode):
                name = node.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in seen:  # cycles are refused by validation anyway
                    if (name, items) not in self.fragment_costs:
                        condition = self.schema.get_type(fragment.type_condition.name.value) or parent
                        self.fragment_costs[name, items] = self.selection(
                            fragment.selection_set, condition, seen | {name}, items
                        )
                    total += self.fragment_costs[name, items]
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType, seen: frozenset[str], items: int) -> int:
        if node.name.value.startswith("__"):
            return 0
        fields = getattr(parent, "fields", {})
        definition = fields.get(node.name.value)
        if definition is None or node.selection_set is None:
            return 1
        returns = get_named_type(definition.type)
        size = _page_size(node, self.variables, definition)
        if returns.name.endswith("Connection"):
            # The page size multiplies the items (edges, nodes); totalCount and facets come once a page.
            return 1 + self.selection(node.selection_set, returns, seen, items=size)
        if parent.name.endswith("Connection") and node.name.value in ITEM_FIELDS:
            return 1 + items * self.selection(node.selection_set, returns, seen)
        return 1 + size * self.selection(node.selection_set, returns, seen)


class CostCache:
    """Costs already worked out, by document, operation and the variables that can give a page size
    (integers); least recently used ones are dropped past ``size``. Only documents whose text is at most
    ``max_chars`` long are kept (as the parse cache keeps them).

    A document is recognised by identity: the parse cache hands out the same document for the same text,
    so a client's few operations are costed once each. Each entry holds its document, so the id in its key
    cannot be reused by another document while the entry lives.
    """

    def __init__(self, size: int, max_chars: int) -> None:
        self.size = size
        self.max_chars = max_chars
        self._costs: OrderedDict[tuple[Any, ...], tuple[DocumentNode, int]] = OrderedDict()
        self._lock = threading.Lock()

    def cost(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation_name: str | None,
        variables: Mapping[str, Any],
    ) -> int:
        sizes = tuple(sorted((name, v) for name, v in variables.items() if isinstance(v, int)))
        key = (id(document), operation_name, sizes)
        with self._lock:
            found = self._costs.get(key)
            if found is not None and found[0] is document:
                self._costs.move_to_end(key)
                return found[1]
        cost = operation_cost(schema, document, operation_name, variables)
        with self._lock:
            self._costs[key] = (document, cost)
            while len(self._costs) > self.size:
                self._costs.popitem(last=False)
        return cost


def operation_cost(
    schema: GraphQLSchema, document: DocumentNode, operation_name: str | None, variables: Mapping[str, Any]
) -> int:
    operation = get_operation_ast(document, operation_name)
    if not isinstance(operation, OperationDefinitionNode):
        return 0
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    return _Costing(schema, document, variables).selection(operation.selection_set, root, frozenset())


class QueryCost(SchemaExtension):
    """Refuse operations costing more than ``limit``; with ``cache`` (one per schema, shared by its
    requests), each document's cost is worked out once per operation and page sizes."""

    def __init__(self, *, limit: int = MAX_COST, cache: CostCache | None = None) -> None:
        self.limit = limit
        self.cache = cache
        self.cost: int | None = None

    def on_validate(self) -> Iterator[None]:
        # Costed as soon as the document is parsed, so that a query refused by validation (too deep, too
        # many aliases) reports its cost too.
        context = self.execution_context
        if context.graphql_document is not None:
            cache = self.cache
            cost = operation_cost
            if cache is not None and len(context.query or "") <= cache.max_chars:
                cost = cache.cost
            self.cost = cost(
                context.schema._schema,
                context.graphql_document,
                context.operation_name,
                context.variables or {},
            )
        yield

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        if self.cost is not None and self.cost > self.limit:
            context.result = GraphQLExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        f"this query would cost {self.cost}, over the limit of {self.limit}; "
                        "ask for smaller pages or fewer nested lists",
                        extensions={"code": "QUERY_TOO_COSTLY"},
                    )
                ],
            )
        yield

    def get_results(self) -> dict[str, Any]:
        if self.cost is None:
            return {}
        return {"cost": {"requested": self.cost, "limit": self.limit}}
