"""The GraphQL names a set of Strawberry root types brings: root fields and every named type they reach.

Used to refuse collisions between lenses, and between a lens and the kernel, before composing the schema.
Names are the ones the schema will use (a specialised generic ``Connection[LensItem]`` is
``LensItemConnection``), and a name defined twice within one set is recorded in :attr:`GraphQLNames.clashes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from strawberry.schema.config import StrawberryConfig
from strawberry.schema.types.scalar import DEFAULT_SCALAR_REGISTRY
from strawberry.types.base import StrawberryContainer, StrawberryObjectDefinition, get_object_definition
from strawberry.types.enum import StrawberryEnumDefinition
from strawberry.types.lazy_type import LazyType
from strawberry.types.scalar import ScalarDefinition, ScalarWrapper
from strawberry.types.union import StrawberryUnion

ROOTS = ("query", "mutation", "subscription")
_names = StrawberryConfig().name_converter

#: Names every schema already has: the root types and Strawberry's built-in scalars (String, ID, JSON, ...).
BUILTIN_TYPES: dict[str, object] = {
    "Query": "the root Query type",
    "Mutation": "the root Mutation type",
    "Subscription": "the root Subscription type",
    **{definition.name: definition for definition in DEFAULT_SCALAR_REGISTRY.values()},
}


@dataclass
class GraphQLNames:
    root_fields: dict[tuple[str, str], type] = field(
        default_factory=dict
    )  # (root, field name) -> owner class
    types: dict[str, object] = field(default_factory=dict)  # type name -> what defines it (see _origin)
    clashes: list[str] = field(default_factory=list)  # "Query.x" or "type X": defined twice in this set

    def add_type(self, name: str, origin: object) -> bool:
        """Record a type; False if it was already known (a different definition is recorded as a clash)."""
        if name not in self.types:
            self.types[name] = origin
            return True
        if self.types[name] != origin and f"type {name}" not in self.clashes:
            self.clashes.append(f"type {name}")
        return False


class NotAStrawberryType(TypeError):
    pass


def _origin(cls: type, definition: StrawberryObjectDefinition) -> object:
    """What makes two classes the same GraphQL type: the class, or a generic with the same arguments."""
    if definition.concrete_of is not None and definition.concrete_of.is_graphql_generic:
        return (definition.concrete_of.origin, tuple(definition.type_var_map.values()))
    return cls


def _visit(annotation: Any, names: GraphQLNames) -> None:
    if isinstance(annotation, StrawberryContainer):
        _visit(annotation.of_type, names)
    elif isinstance(annotation, LazyType):
        _visit(annotation.resolve_type(), names)
    elif isinstance(annotation, StrawberryEnumDefinition):
        names.add_type(annotation.name, annotation.wrapped_cls)
    elif isinstance(annotation, StrawberryUnion):
        names.add_type(_names.from_union(annotation), annotation)
        for member in annotation.types:
            _visit(member, names)
    elif isinstance(annotation, ScalarDefinition):
        names.add_type(annotation.name, annotation)
    elif isinstance(annotation, ScalarWrapper):
        names.add_type(annotation._scalar_definition.name, annotation._scalar_definition)
    elif isinstance(annotation, type):
        enum_definition = getattr(annotation, "__strawberry_definition__", None)
        if isinstance(enum_definition, StrawberryEnumDefinition):
            names.add_type(enum_definition.name, annotation)
        elif get_object_definition(annotation) is not None:
            _walk(annotation, names)


def _walk(cls: type, names: GraphQLNames) -> None:
    definition = get_object_definition(cls, strict=True)
    if not names.add_type(_names.from_type(definition), _origin(cls, definition)):
        return
    for interface in definition.interfaces:
        _walk(interface.origin, names)
    for strawberry_field in definition.fields:
        _visit(strawberry_field.type, names)
        for argument in strawberry_field.arguments:
            _visit(argument.type, names)


def _classes(what: str, classes: Any) -> Sequence[Any]:
    if isinstance(classes, type) or not isinstance(classes, Sequence):
        raise NotAStrawberryType(f"{what} must be a list of @strawberry.type classes, not {classes!r}")
    return classes


def collect(roots: Mapping[str, Sequence[type]], extra_types: Sequence[type] = ()) -> GraphQLNames:
    """The root fields of ``roots`` ({"query": [...], ...}) and every named type reachable from them."""
    names = GraphQLNames()
    for root in ROOTS:
        for cls in _classes(root, roots.get(root, ())):
            definition = get_object_definition(cls)
            if definition is None:
                raise NotAStrawberryType(f"{cls!r} is not a @strawberry.type")
            for strawberry_field in definition.fields:
                key = (root, _names.from_field(strawberry_field))
                if key in names.root_fields and names.root_fields[key] is not cls:
                    names.clashes.append(f"{root.title()}.{key[1]}")
                names.root_fields.setdefault(key, cls)
                _visit(strawberry_field.type, names)
                for argument in strawberry_field.arguments:
                    _visit(argument.type, names)
    for cls in _classes("types", extra_types):
        if get_object_definition(cls) is None:
            raise NotAStrawberryType(f"{cls!r} is not a @strawberry.type")
        _walk(cls, names)
    return names
