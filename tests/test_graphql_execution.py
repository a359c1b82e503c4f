"""The fast path for plain leaf fields (api/gql/execution.py) answers exactly what graphql-core answers."""

from __future__ import annotations

import asyncio
import enum
import tempfile
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from concord_core.api.gql.execution import PLAIN_LEAVES, PLAIN_OBJECTS
from concord_core.api.gql.schema import ConcordSchema, build_schema, load_lenses
from concord_core.settings import load_settings


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.type
class Thing:
    name: str
    count: int
    ratio: float
    flag: bool
    colour: Colour
    at: datetime
    tags: list[str]
    maybe_tags: list[str] | None
    note: str | None
    data: JSON
    key: strawberry.ID
    wrong: int  # holds a value that does not coerce to Int
    missing: str  # non-null, holds None
    bad_item: list[str]  # [String!]!, holds a None item
    boom: str  # reading it raises
    maybe_boom: str | None  # so does reading this one

    @strawberry.field
    def resolved(self) -> str:
        return self.name + "!"


class ExplodingThing(Thing):
    @property
    def boom(self) -> str:
        raise ValueError("cannot read this")

    @boom.setter
    def boom(self, _value: str) -> None:
        pass

    @property
    def maybe_boom(self) -> str | None:
        raise ValueError("cannot read this either")

    @maybe_boom.setter
    def maybe_boom(self, _value: str | None) -> None:
        pass


def _thing(number: int) -> Thing:
    return ExplodingThing(
        name=f"thing {number}",
        count=number,
        ratio=number / 3,
        flag=number % 2 == 0,
        colour=Colour.RED if number % 2 else Colour.BLUE,
        at=datetime(2026, 12, 2, 3, number, tzinfo=UTC),
        tags=[f"t{number}", "x"],
        maybe_tags=None if number % 2 else ["y"],
        note=None if number % 3 else "noted",
        data=cast(JSON, {"n": number, "list": [1, None]}),
        key=strawberry.ID(f"k{number}"),
        wrong="not a number",  # type: ignore[arg-type]
        missing=None,  # type: ignore[arg-type]
        bad_item=["ok", None],  # type: ignore[list-item]
        boom="",
        maybe_boom=None,
    )


@strawberry.interface
class Named:
    label: str


@strawberry.type
class Part(Named):  # implements an interface: Strawberry gives it an is_type_of
    size: int


@strawberry.type
class Imposter:  # has every field of Part, but is not one
    label: str
    size: int


@strawberry.type
class Box:
    """Plain object fields (basic fields holding objects), completed on the fast path too."""

    part: Part
    parts: list[Part]
    maybe_part: Part | None
    maybe_parts: list[Part] | None
    thing: Thing
    wrong: Part  # holds a Thing: is_type_of refuses it
    imposter: Part  # holds an Imposter: only is_type_of tells it from a Part
    holes: list[Part]  # [Part!]!, holds a None item
    missing: Part  # non-null, holds None


def _box(number: int) -> Box:
    parts = [Part(label=f"p{number}.{n}", size=n) for n in range(3)]
    return Box(
        part=parts[0],
        parts=parts,
        maybe_part=None if number % 2 else parts[1],
        maybe_parts=None if number % 2 else parts[1:],
        thing=_thing(number),
        wrong=_thing(number),  # type: ignore[arg-type]
        imposter=Imposter(label="fake", size=number),  # type: ignore[arg-type]
        holes=[parts[0], None],  # type: ignore[list-item]
        missing=None,  # type: ignore[arg-type]
    )


@strawberry.type
class Query:
    @strawberry.field
    def things(self) -> list[Thing]:
        return [_thing(number) for number in range(4)]

    @strawberry.field
    def thing(self) -> Thing | None:
        return _thing(5)

    @strawberry.field
    def boxes(self) -> list[Box]:
        return [_box(number) for number in range(3)]

    @strawberry.field
    async def total(self) -> int:
        return 3


#: (query, whether its answer has errors)
QUERIES = [
    ("{ things { name count ratio flag colour at tags maybeTags note data key resolved } }", False),
    ("{ things { n: name c: count ...F } } fragment F on Thing { colour tags name }", False),
    ("query($skip: Boolean!) { things { name @skip(if: $skip) count @include(if: $skip) } }", False),
    ("{ thing { __typename name } }", False),
    ("{ thing { wrong } }", True),
    ("{ thing { missing } }", True),
    ("{ thing { badItem } }", True),
    ("{ thing { boom name } }", True),
    ("{ things { name maybeBoom } }", True),
    ("{ things { name missing } }", True),
    ("{ boxes { part { label size } parts { size label } maybePart { label } maybeParts { size } } }", False),
    ("{ boxes { thing { name tags colour } parts { l: label ... on Part { size } } } }", False),
    ("{ boxes { part { __typename label } } }", False),
    ("{ boxes { wrong { label } } }", True),
    ("{ boxes { imposter { label size } } }", True),
    ("{ boxes { holes { label } } }", True),
    ("{ boxes { missing { label } } }", True),
    ("{ boxes { thing { name boom } part { label } } }", True),
    ("{ boxes { parts { label } thing { name maybeBoom } } }", True),
    ("query($skip: Boolean!) { boxes { part { label @skip(if: $skip) size } } }", False),
    ("{ total boxes { parts { size } } }", False),
]


def _answer(schema: strawberry.Schema, query: str) -> tuple[Any, list[tuple[str, Any]]]:
    result = asyncio.run(schema.execute(query, variable_values={"skip": True}))
    return result.data, [(error.message, error.path) for error in result.errors or []]


@pytest.mark.parametrize(("query", "has_errors"), QUERIES)
def test_fast_path_answers_what_graphql_core_answers(query: str, has_errors: bool) -> None:
    expected = _answer(strawberry.Schema(query=Query), query)
    assert bool(expected[1]) == has_errors
    assert _answer(ConcordSchema(query=Query), query) == expected


def test_plain_fields_take_the_fast_path_and_resolvers_do_not() -> None:
    schema = ConcordSchema(query=Query)
    leaves = schema._schema.type_map["Thing"].extensions[PLAIN_LEAVES]
    assert {"name", "count", "colour", "at", "tags", "maybeTags", "note", "data", "key"} <= set(leaves)
    assert "resolved" not in leaves
    # The kernel's own types: this fails if Strawberry stops marking basic fields the way the fast path
    # recognises them (the schema would still work, only slower).
    kernel = build_schema(load_lenses(load_settings(data_dir=tempfile.mkdtemp())))
    dtu = kernel._schema.type_map["Dtu"].extensions[PLAIN_LEAVES]
    assert {"id", "title", "tags", "tier", "visibility", "createdAt"} <= set(dtu)
    assert "cursor" in kernel._schema.type_map["DtuEdge"].extensions[PLAIN_LEAVES]
    assert "node" in kernel._schema.type_map["DtuEdge"].extensions[PLAIN_OBJECTS]
    assert {"edges", "pageInfo"} <= set(kernel._schema.type_map["DtuConnection"].extensions[PLAIN_OBJECTS])
    assert {"part", "parts", "maybePart", "maybeParts", "thing"} <= set(
        schema._schema.type_map["Box"].extensions[PLAIN_OBJECTS]
    )


def test_plain_objects_are_completed_without_graphql_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the root field's resolver goes through graphql-core: every object below it is plain."""
    executed: list[str] = []
    standard = StrawberryGraphQLCoreExecutionContext.execute_field

    def spy(self: Any, parent_type: Any, source: Any, field_details_list: Any, *args: Any) -> Any:
        executed.append(f"{parent_type.name}.{field_details_list[0].node.name.value}")
        return standard(self, parent_type, source, field_details_list, *args)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_field", spy)
    query = "{ boxes { part { label size } parts { size } maybePart { label } thing { name tags } } }"
    data, errors = _answer(ConcordSchema(query=Query), query)
    assert not errors and len(data["boxes"]) == 3
    assert executed == ["Query.boxes"]


def test_a_resolve_hook_still_sees_every_field() -> None:
    seen: list[str] = []

    class Watch(SchemaExtension):
        def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(info.field_name)
            return _next(root, info, *args, **kwargs)

    schema = ConcordSchema(query=Query, extensions=[Watch])
    result = schema.execute_sync("{ thing { name count colour } }")
    assert result.errors is None
    assert seen == ["thing", "name", "count", "colour"]
