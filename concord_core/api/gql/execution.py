"""A faster path through graphql-core for plain fields.

A page of 50 DTUs is about 400 fields, and graphql-core spends most of its time per field on machinery a
plain attribute does not need: a ``GraphQLResolveInfo`` built for a resolver that ignores it, a path, argument
checks, and the generic ``complete_value`` dispatch, for every field and every object of the page. A field
Strawberry itself resolves as a *basic* field (no resolver, no permission classes or field extensions, no
exception handlers: it reads the attribute and ignores ``info``) is *plain* when its type is a scalar or enum,
an object type, or a list of non-null ones. :class:`ConcordExecutionContext` completes plain fields itself:
it reads the value as that resolver would (the attribute, through Strawberry's default resolver), coerces a
leaf with the same ``coerce_output_value`` graphql-core would use, checks an object with its type's
``is_type_of`` (Strawberry's, which looks at the value alone) and completes its selected fields the same way,
and nothing else. An object whose selected fields are all plain (a connection's edges, each with its cursor
and node) is completed in one loop.

Anything out of the ordinary is left to graphql-core: a resolve middleware (a schema extension with a
``resolve`` hook must see every field), directives on the field (``@stream``), deferred fragments, a null in a
non-null position, an error or an awaitable value, a value that does not coerce or that ``is_type_of``
refuses, an ``is_type_of`` of the application's own. The whole object is then executed again the standard
way, so errors, their messages and their paths are graphql-core's own; reading a plain field twice only reads
an attribute twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from functools import partial
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLID,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    Undefined,
    is_leaf_type,
)

#: Keys, in a ``GraphQLObjectType``'s ``extensions``, of its plain leaf fields and plain object fields (an
#: object or a list of them) by name.
PLAIN_LEAVES = "concord.plain_leaves"
PLAIN_OBJECTS = "concord.plain_objects"

#: Name Strawberry gives the resolver of a basic field (strawberry/schema/schema_converter.py); checked by
#: tests/test_graphql_execution.py so that a rename in Strawberry shows as a failing test, not a slowdown.
BASIC_RESOLVER_NAME = "_get_basic_result"


#: Module and name of the ``is_type_of`` Strawberry makes (strawberry/schema/schema_converter.py); checked by
#: tests/test_graphql_execution.py like BASIC_RESOLVER_NAME.
STRAWBERRY_IS_TYPE_OF = ("strawberry.schema.schema_converter", "is_type_of")

T = TypeVar("T")

#: Types of value that are never awaitable (the common ones: no need to ask).
PLAIN_VALUE_TYPES = frozenset({str, int, float, bool, list, datetime})


class PlainField(NamedTuple):
    """A basic field the fast path completes: a leaf, an object, or a list of either (items non-null)."""

    read: Callable[[Any], Any]  # the value of the field on its source object
    named_type: GraphQLLeafType | GraphQLObjectType  # of the value, or of each item of a list
    is_list: bool
    nullable: bool
    coerce: Callable[[Any], Any] | None  # a leaf's coerce_output_value, or a faster equivalent
    type_check: Callable[[Any, Any], Any] | None  # an object type's is_type_of, if it has one


def _leaf_coercion(leaf_type: GraphQLLeafType) -> Callable[[Any], Any]:
    """``leaf_type.coerce_output_value``, short-cut where its answer is known: a ``str`` is its own String or
    ID, and an enum member's name is remembered (Strawberry's enum types search their values each time)."""
    coerce = leaf_type.coerce_output_value
    if leaf_type is GraphQLString or leaf_type is GraphQLID:
        return lambda value: value if type(value) is str else coerce(value)
    if isinstance(leaf_type, GraphQLEnumType):
        names: dict[Enum, Any] = {}

        def enum_name(value: Any) -> Any:
            if not isinstance(value, Enum):
                return coerce(value)
            name = names.get(value)
            if name is None:
                name = names[value] = coerce(value)
            return name

        return enum_name
    return coerce


def plain_field(field: GraphQLField) -> PlainField | None:
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
    is_list = isinstance(inner, GraphQLList)
    if is_list:
        if not isinstance(inner.of_type, GraphQLNonNull):  # type: ignore[union-attr]
            return None
        inner = inner.of_type.of_type  # type: ignore[union-attr]
    if is_leaf_type(inner):
        return PlainField(read, inner, is_list, nullable, _leaf_coercion(inner), None)
    if isinstance(inner, GraphQLObjectType):
        completable, check = _type_check(inner)
        if completable:
            return PlainField(read, inner, is_list, nullable, None, check)
    return None


def _type_check(object_type: GraphQLObjectType) -> tuple[bool, Callable[[Any, Any], Any] | None]:
    """Whether the fast path may complete values of an object type, and the ``is_type_of`` to check them
    with (None: the type has none). Strawberry gives types that implement interfaces an ``is_type_of`` that
    checks the value alone; a type's own check might read ``info``, so such a type is left to graphql-core."""
    check = object_type.is_type_of
    if check is None:
        return True, None
    made_by = (getattr(check, "__module__", None), getattr(check, "__name__", None))
    return (True, check) if made_by == STRAWBERRY_IS_TYPE_OF else (False, None)


def mark_plain_fields(schema: GraphQLSchema) -> int:
    """Record every object type's plain leaf and object fields in its ``extensions``; returns how many."""
    marked = 0
    for named_type in schema.type_map.values():
        if not isinstance(named_type, GraphQLObjectType) or named_type.name.startswith("__"):
            continue
        leaves: dict[str, PlainField] = {}
        objects: dict[str, PlainField] = {}
        for name, field in named_type.fields.items():
            plain = plain_field(field)
            if plain is not None:
                (objects if isinstance(plain.named_type, GraphQLObjectType) else leaves)[name] = plain
        named_type.extensions = {**named_type.extensions, PLAIN_LEAVES: leaves, PLAIN_OBJECTS: objects}
        marked += len(leaves) + len(objects)
    return marked


class PlanEntry(NamedTuple):
    """One selected field the fast path completes: a leaf, or an object (or list) with its own plan."""

    field: PlainField
    fields: Plan | None  # the object's selected fields, by response name; None for a leaf


#: An object's selected fields by response name, when the fast path can complete all of them.
Plan = dict[str, PlanEntry]


def _coerce(leaf: PlainField, value: Any) -> Any:
    """A non-null leaf value completed, or ``Undefined`` when graphql-core must complete it (and report any
    error)."""
    if isinstance(value, Exception):
        return Undefined
    coerce: Callable[[Any], Any] = leaf.coerce  # type: ignore[assignment]
    if not leaf.is_list:
        coerced = coerce(value)
        return Undefined if coerced is None else coerced
    if not isinstance(value, list | tuple):
        return Undefined
    completed = []
    for item in value:
        if item is None or isinstance(item, Exception):
            return Undefined
        coerced = coerce(item)
        if coerced is None or coerced is Undefined:
            return Undefined
        completed.append(coerced)
    return completed


#: Memos by the identity of graphql-core's own memoized field groups, each kept alive beside what was made of
#: it, so that its id is not reused by another group during the execution.
Memo = dict[tuple[GraphQLObjectType, int], tuple[Any, T | None]]


def _memo(
    memo: Memo[T],
    parent_type: GraphQLObjectType,
    group: Any,
    make: Callable[[GraphQLObjectType, Any], T | None],
) -> T | None:
    key = (parent_type, id(group))
    cached = memo.get(key)
    if cached is None:
        cached = memo[key] = (group, make(parent_type, group))
    return cached[1]


class ConcordExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context, with plain fields completed without the per-field machinery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Strawberry hands every request a middleware manager; it only wraps resolvers when an extension
        # has a ``resolve`` hook, and then every field must go through it.
        manager = self.middleware_manager
        self._fast = manager is None or not manager.middlewares
        self._plans: Memo[Plan] = {}
        self._entries: Memo[PlanEntry] = {}

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Any,
        grouped_field_set: Any,
        position_context: Any,
    ) -> Any:
        # An object whose selected fields are all plain (a page's edges and items) is completed in one
        # loop: no path, no dispatch and no awaitable check per field. If anything cannot be, the whole
        # object is executed the standard way (reading a plain field again only reads an attribute again).
        if self._fast:
            plan = self._plan(parent_type, grouped_field_set)
            if plan is not None:
                completed = self._complete_object(plan, source_value)
                if completed is not Undefined:
                    return completed
        return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Any,
        position_context: Any,
    ) -> Any:
        # A plain field of an object that also has others (a connection's edges beside its totalCount).
        if self._fast:
            entry = self._entry(parent_type, field_details_list)
            if entry is not None:
                completed = self._complete_entry(entry, source)
                if completed is not Undefined:
                    return completed
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    # -- plans --------------------------------------------------------------------------------------------

    def _plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Plan | None:
        """The plan of ``grouped_field_set``, or None unless the fast path can complete every field.
        Memoized like graphql-core's ``collect_subfields``, whose field sets every item of a list shares."""
        return _memo(self._plans, parent_type, grouped_field_set, self._make_plan)

    def _entry(self, parent_type: GraphQLObjectType, field_details_list: Any) -> PlanEntry | None:
        """How the fast path completes one selected field, or None if graphql-core must: a plain field
        selected without directives or deferral, and for an object, a plan for all it selects."""
        return _memo(self._entries, parent_type, field_details_list, self._make_entry)

    def _make_plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Plan | None:
        plan: Plan = {}
        for response_name, field_details_list in grouped_field_set.items():
            entry = self._entry(parent_type, field_details_list)
            if entry is None:
                return None
            plan[response_name] = entry
        return plan

    def _make_entry(self, parent_type: GraphQLObjectType, field_details_list: Any) -> PlanEntry | None:
        if any(details.node.directives or details.defer_usage is not None for details in field_details_list):
            return None
        name = field_details_list[0].node.name.value
        extensions = parent_type.extensions
        leaf = extensions.get(PLAIN_LEAVES, {}).get(name)
        if leaf is not None:
            return PlanEntry(leaf, None)
        plain = extensions.get(PLAIN_OBJECTS, {}).get(name)
        if plain is None:
            return None
        object_type: GraphQLObjectType = plain.named_type
        grouped_field_set, new_defer_usages, forbidden = self.collect_subfields(
            object_type, field_details_list
        )
        if new_defer_usages or forbidden:
            return None
        fields = self._plan(object_type, grouped_field_set)
        return None if fields is None else PlanEntry(plain, fields)

    # -- completion: a value, or Undefined for graphql-core to do it again (and report any error) ---------

    def _complete_object(self, plan: Plan, source: Any) -> Any:
        results: dict[str, Any] = {}
        complete = self._complete_entry
        for response_name, entry in plan.items():
            completed = complete(entry, source)
            if completed is Undefined:
                return Undefined
            results[response_name] = completed
        return results

    def _complete_entry(self, entry: PlanEntry, source: Any) -> Any:
        field = entry.field
        try:
            value = field.read(source)
            if value is None:
                return None if field.nullable else Undefined
            if (
                type(value) not in PLAIN_VALUE_TYPES
                and not isinstance(value, Enum)
                and self.is_awaitable(value)
            ):
                return Undefined
            if entry.fields is None:
                return _coerce(field, value)
            if not field.is_list:
                return self._complete_item(entry, value)
            if not isinstance(value, list | tuple):
                return Undefined
            completed = []
            for item in value:
                done = self._complete_item(entry, item)
                if done is Undefined:
                    return Undefined
                completed.append(done)
            return completed
        except Exception:
            return Undefined

    def _complete_item(self, entry: PlanEntry, value: Any) -> Any:
        """An object value (non-null), checked as graphql-core would (``is_type_of``)."""
        if value is None or isinstance(value, Exception) or self.is_awaitable(value):
            return Undefined
        type_check = entry.field.type_check
        if type_check is not None and not type_check(value, None):
            return Undefined
        return self._complete_object(entry.fields, value)  # type: ignore[arg-type]
