"""The fast path for plain leaf fields (api/gql/execution.py) answers exactly what graphql-core answers."""

from __future__ import annotations

import enum
import tempfile
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.scalars import JSON

from concord_core.api.gql.execution import PLAIN_LEAVES
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


@strawberry.type
class Query:
    @strawberry.field
    def things(self) -> list[Thing]:
        return [_thing(number) for number in range(4)]

    @strawberry.field
    def thing(self) -> Thing | None:
        return _thing(5)


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
]


def _answer(schema: strawberry.Schema, query: str) -> tuple[Any, list[tuple[str, Any]]]:
    result = schema.execute_sync(query, variable_values={"skip": True})
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
