"""A faster path through graphql-core for plain leaf fields.

A page of 50 DTUs is about 400 fields, and graphql-core spends most of its time per field on machinery a
plain attribute does not need: a ``GraphQLResolveInfo`` built for a resolver that ignores it, argument
checks, and the generic ``complete_value`` dispatch. For a field Strawberry itself resolves as a *basic*
field (no resolver, no permission classes or field extensions, no exception handlers: it reads the
attribute and ignores ``info``) whose type is a scalar or enum, or a list of non-null ones,
:class:`ConcordExecutionContext` reads the value as that resolver would (the attribute, through Strawberry's
default resolver) and coerces it with the same ``coerce_output_value`` graphql-core would use, and
nothing else.

Anything out of the ordinary is left to graphql-core: a resolve middleware (a schema extension with a
``resolve`` hook must see every field), directives on the field (``@stream``), a null, an error or an
awaitable value, a value that does not coerce. The field is then executed again the standard way, so errors,
their messages and their paths are graphql-core's own; reading a basic field twice only reads an
attribute twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import Any, NamedTuple

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from graphql import (
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
    is_leaf_type,
)

#: Key, in a ``GraphQLObjectType``'s ``extensions``, of its plain leaf fields by name.
PLAIN_LEAVES = "concord.plain_leaves"

#: Name Strawberry gives the resolver of a basic field (strawberry/schema/schema_converter.py); checked by
#: tests/test_graphql_execution.py so that a rename in Strawberry shows as a failing test, not a slowdown.
BASIC_RESOLVER_NAME = "_get_basic_result"


#: Types of value that are never awaitable (the common ones: no need to ask).
PLAIN_VALUE_TYPES = frozenset({str, int, float, bool, list, datetime})


class PlainLeaf(NamedTuple):
    read: Callable[[Any], Any]  # the value of the field on its source object
    leaf_type: GraphQLLeafType
    is_list: bool
    nullable: bool


def plain_leaf(field: GraphQLField) -> PlainLeaf | None:
    """How to complete a field on the fast path, or None if it must take graphql-core's."""
    resolve = field.resolve
    if resolve is None or getattr(resolve, "__name__", None) != BASIC_RESOLVER_NAME:
        return None
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    read: Callable[[Any], Any]
    if isinstance(definition, StrawberryField) and definition.default_resolver is getattr:
        read = attrgetter(definition.python_name)  # what the basic resolver does, minus two calls
    else:
        read = partial(resolve, info=None)
    field_type = field.type
    nullable = not isinstance(field_type, GraphQLNonNull)
    inner = field_type if nullable else field_type.of_type  # type: ignore[union-attr]
    if is_leaf_type(inner):
        return PlainLeaf(read, inner, is_list=False, nullable=nullable)
    if isinstance(inner, GraphQLList) and isinstance(inner.of_type, GraphQLNonNull):
        item = inner.of_type.of_type
        if is_leaf_type(item):
            return PlainLeaf(read, item, is_list=True, nullable=nullable)
    return None


def mark_plain_leaves(schema: GraphQLSchema) -> int:
    """Record every object type's plain leaf fields in its ``extensions``; returns how many there are."""
    marked = 0
    for named_type in schema.type_map.values():
        if not isinstance(named_type, GraphQLObjectType) or named_type.name.startswith("__"):
            continue
        leaves = {}
        for name, field in named_type.fields.items():
            leaf = plain_leaf(field)
            if leaf is not None:
                leaves[name] = leaf
        named_type.extensions = {**named_type.extensions, PLAIN_LEAVES: leaves}
        marked += len(leaves)
    return marked


def _coerce(leaf: PlainLeaf, value: Any) -> Any:
    """The completed value, or ``Undefined`` when graphql-core must complete it (and report any error)."""
    if value is None:
        return None if leaf.nullable else Undefined
    if isinstance(value, Exception):
        return Undefined
    if not leaf.is_list:
        coerced = leaf.leaf_type.coerce_output_value(value)
        return Undefined if coerced is None else coerced
    if not isinstance(value, list | tuple):
        return Undefined
    completed = []
    coerce = leaf.leaf_type.coerce_output_value
    for item in value:
        if item is None or isinstance(item, Exception):
            return Undefined
        coerced = coerce(item)
        if coerced is None or coerced is Undefined:
            return Undefined
        completed.append(coerced)
    return completed


class ConcordExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context, with plain leaf fields completed without the per-field machinery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Strawberry hands every request a middleware manager; it only wraps resolvers when an extension
        # has a ``resolve`` hook, and then every field must go through it.
        manager = self.middleware_manager
        self._fast_leaves = manager is None or not manager.middlewares

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Any,
        position_context: Any,
    ) -> Any:
        node = field_details_list[0].node
        leaf = parent_type.extensions.get(PLAIN_LEAVES, {}).get(node.name.value)
        if leaf is not None and self._fast_leaves and not node.directives:
            completed = self._complete_plain_leaf(leaf, source)
            if completed is not Undefined:
                return completed
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    def _complete_plain_leaf(self, leaf: PlainLeaf, source: Any) -> Any:
        """The field's completed value, or ``Undefined`` for graphql-core to read and complete it again
        (reporting any error its own way)."""
        try:
            value = leaf.read(source)
            if type(value) not in PLAIN_VALUE_TYPES and self.is_awaitable(value):
                return Undefined
            return _coerce(leaf, value)
        except Exception:
            return Undefined
