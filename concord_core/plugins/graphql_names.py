"""The GraphQL names a set of Strawberry root types brings: root fields and every named type they reach.

Used to refuse collisions between lenses, and between a lens and the kernel, before composing the schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from strawberry.schema.config import StrawberryConfig
from strawberry.types.base import StrawberryContainer, get_object_definition
from strawberry.types.enum import StrawberryEnumDefinition
from strawberry.types.lazy_type import LazyType
from strawberry.types.scalar import ScalarDefinition, ScalarWrapper
from strawberry.types.union import StrawberryUnion

ROOTS = ("query", "mutation", "subscription")
_names = StrawberryConfig().name_converter


@dataclass
class GraphQLNames:
    root_fields: dict[tuple[str, str], type] = field(
        default_factory=dict
    )  # (root, field name) -> owner class
    types: dict[str, object] = field(default_factory=dict)  # type name -> the Python object that defines it


class NotAStrawberryType(TypeError):
    pass


def _visit(annotation: Any, found: dict[str, object]) -> None:
    if isinstance(annotation, StrawberryContainer):
        _visit(annotation.of_type, found)
    elif isinstance(annotation, LazyType):
        _visit(annotation.resolve_type(), found)
    elif isinstance(annotation, StrawberryEnumDefinition):
        found.setdefault(annotation.name, annotation.wrapped_cls)
    elif isinstance(annotation, StrawberryUnion):
        if annotation.graphql_name:
            found.setdefault(annotation.graphql_name, annotation)
        for member in annotation.types:
            _visit(member, found)
    elif isinstance(annotation, ScalarDefinition):
        found.setdefault(annotation.name, annotation)
    elif isinstance(annotation, ScalarWrapper):
        found.setdefault(annotation._scalar_definition.name, annotation._scalar_definition)
    elif isinstance(annotation, type):
        enum_definition = getattr(annotation, "__strawberry_definition__", None)
        if isinstance(enum_definition, StrawberryEnumDefinition):
            found.setdefault(enum_definition.name, annotation)
        elif get_object_definition(annotation) is not None:
            _walk(annotation, found)


def _walk(cls: type, found: dict[str, object]) -> None:
    definition = get_object_definition(cls, strict=True)
    if found.get(definition.name) is cls:
        return
    found.setdefault(definition.name, cls)
    for interface in definition.interfaces:
        _walk(interface.origin, found)
    for strawberry_field in definition.fields:
        _visit(strawberry_field.type, found)
        for argument in strawberry_field.arguments:
            _visit(argument.type, found)


def collect(roots: Mapping[str, Sequence[type]], extra_types: Sequence[type] = ()) -> GraphQLNames:
    """The root fields of ``roots`` ({"query": [...], ...}) and every named type reachable from them."""
    names = GraphQLNames()
    for root in ROOTS:
        for cls in roots.get(root, ()):
            definition = get_object_definition(cls)
            if definition is None:
                raise NotAStrawberryType(f"{cls!r} is not a @strawberry.type")
            for strawberry_field in definition.fields:
                names.root_fields[(root, _names.from_field(strawberry_field))] = cls
                _visit(strawberry_field.type, names.types)
                for argument in strawberry_field.arguments:
                    _visit(argument.type, names.types)
    for cls in extra_types:
        if get_object_definition(cls) is None:
            raise NotAStrawberryType(f"{cls!r} is not a @strawberry.type")
        _walk(cls, names.types)
    return names
