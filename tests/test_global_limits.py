"""GraphQL query limits (issue 6), on SQLite and PostgreSQL: depth, aliases, tokens and cost.

An over-limit query gets a typed error before any SQL runs (counted with a ``before_cursor_execute``
listener: none at all for an anonymous caller, and none beyond authenticating the credential for a signed-in
one). ``first``/``last`` multiply through nesting, aliases and fragments cannot dodge the cost, and every
response to a document that parses carries ``extensions.cost``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from global_world import BACKENDS, World, open_world

from concord_core.api.gql import query_limits
from concord_core.api.gql.cost import MAX_COST
from concord_core.api.gql.schema import MAX_ALIASES, MAX_CACHED_DOCUMENT_CHARS, MAX_DEPTH, MAX_TOKENS
from concord_core.operators import dtus as dtu_ops
from graphql import DocumentNode, parse


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(request.param, tmp_path_factory.mktemp(f"limits-{request.param}")) as opened:
        for n in range(3):
            dtu_ops.create_dtu(opened.ctx("alice"), {"title": f"limit {n}", "visibility": "public"})
        yield opened


def nested(depth: int) -> str:
    """A query ``depth`` levels deep: dtus > nodes > citations > citations > ..."""
    inner = "id"
    for _ in range(depth - 2):
        inner = f"citations {{ {inner} }}"
    return f"{{ dtus(first: 1) {{ nodes {{ {inner} }} }} }}"


def aliased(count: int) -> str:
    return "{ " + " ".join(f"a{n}: serverInfo {{ version }}" for n in range(count)) + " }"


def long_document(tokens: int) -> str:
    """A document of exactly ``tokens`` tokens (20 of them around a list of strings)."""
    return "{ dtus(filter: {tags: {anyOf: [" + ' "t"' * (tokens - 20) + "]}}) { totalCount } }"


#: first: n costs 2 + 111 n (each node: its citations, 10 assumed, and their history, 10 each): 9992 for 90,
#: 10103 for 91.
NEAR_THE_LIMIT = "query($n: Int) { dtus(first: $n) { nodes { citations { history { version } } } } }"

REFUSED: dict[str, tuple[str, dict[str, Any], str, str]] = {
    # name: (document, variables, code, words the message must contain)
    "depth": (nested(MAX_DEPTH + 1), {}, "GRAPHQL_VALIDATION", f"maximum operation depth of {MAX_DEPTH}"),
    "aliases": (aliased(MAX_ALIASES + 1), {}, "GRAPHQL_VALIDATION", f"Allowed: {MAX_ALIASES}"),
    "tokens": (long_document(MAX_TOKENS + 1), {}, "GRAPHQL_VALIDATION", f"more than {MAX_TOKENS} tokens"),
    "cost": (NEAR_THE_LIMIT, {"n": 91}, "QUERY_TOO_COSTLY", "would cost 10103"),
    "cost by aliases": (
        """{ a: dtus(first: 50) { ...F } b: dtus(first: 50) { ...F } }
           fragment F on DtuConnection { nodes { citations { history { version } } } }""",
        {},
        "QUERY_TOO_COSTLY",
        "would cost 11104",
    ),
    "cost by a literal": (
        "{ dtus(last: 100) { edges { node { citations { citations { id } } } } } }",
        {},
        "QUERY_TOO_COSTLY",
        "would cost 11202",
    ),
}


@pytest.mark.parametrize("limit", list(REFUSED))
def test_an_over_limit_query_is_refused_before_any_sql(world: World, limit: str) -> None:
    document, variables, code, words = REFUSED[limit]
    with world.statements() as sent:
        body = world.post("anonymous", document, variables)
    assert sent == [], f"{limit}: SQL ran for a refused query: {sent}"
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == code and error["extensions"]["requestId"]
    assert words in error["message"], error["message"]
    if limit != "tokens":  # a document too long to parse cannot be costed
        assert body["extensions"]["cost"]["limit"] == MAX_COST
        assert body["extensions"]["cost"]["requested"] > (MAX_COST if code == "QUERY_TOO_COSTLY" else 0)


def test_a_signed_in_caller_costs_only_the_credential_check(world: World) -> None:
    world.data("alice", "{ __typename }")  # the key's lastUsedAt is written at most once a minute
    with world.statements() as baseline:
        world.data("alice", "{ __typename }")
    for document, variables, _code, _words in REFUSED.values():
        with world.statements() as sent:
            body = world.post("alice", document, variables)
        assert body["errors"] and sent == baseline


def test_limits_just_inside_are_served(world: World) -> None:
    for document, variables in ((aliased(MAX_ALIASES), {}), (NEAR_THE_LIMIT, {"n": 90})):
        body = world.post("anonymous", document, variables)
        assert not body.get("errors"), body["errors"]
    assert world.post("anonymous", NEAR_THE_LIMIT, {"n": 90})["extensions"]["cost"]["requested"] == 9992
    # Exactly MAX_TOKENS tokens parse; the resolver then refuses the 3,980 tags (at most 100 per filter).
    body = world.post("anonymous", long_document(MAX_TOKENS))
    assert [error["extensions"]["code"] for error in body["errors"]] == ["VALIDATION"]
    # Every path that deep goes through lists, so it is too costly, but it is not too deep.
    body = world.post("anonymous", nested(MAX_DEPTH))
    assert [error["extensions"]["code"] for error in body["errors"]] == ["QUERY_TOO_COSTLY"]


@pytest.mark.parametrize(
    ("document", "cost"),
    [
        ("{ serverInfo { version } }", 2),
        ("{ dtus { totalCount } }", 2),  # totalCount comes once, whatever the page size
        ("{ dtus { nodes { id } } }", 1 + 1 + 20 * 1),  # no first/last: 20 items
        ("{ dtus(first: 7) { nodes { id title } } }", 1 + 1 + 7 * 2),
        ("{ dtus(last: 3) { edges { cursor node { id citations { id } } } } }", 1 + 1 + 3 * (1 + 1 + 1 + 11)),
        (
            "{ dtus(first: 2) { nodes { history { version } citations { history { version } } } } }",
            1 + 1 + 2 * (11 + 1 + 10 * 11),
        ),
        ("{ a: dtus(first: 2) { nodes { id } } b: dtus(first: 3) { nodes { id } } }", (2 + 2) + (2 + 3)),
        (
            '{ dtus(first: 4) { nodes { id } facets(fields: ["tier"]) { field values { value count } } } }',
            1 + (1 + 4) + (1 + 10 * (1 + 1 + 10 * 2)),  # facets (10 assumed) and their values (10 each)
        ),
        (
            "query($n: Int) { dtus(first: $n) { nodes { id } } }",
            1 + 1 + 20,  # an unset variable: the default page
        ),
    ],
)
def test_first_and_last_multiply_through_nesting(world: World, document: str, cost: int) -> None:
    body = world.post("anonymous", document)
    assert not body.get("errors"), body["errors"]
    assert body["extensions"]["cost"] == {"requested": cost, "limit": MAX_COST}


def test_every_response_reports_its_cost(world: World) -> None:
    """Served, failed in a resolver, refused by validation, refused for cost: all say what they cost."""
    answers = [
        world.post("anonymous", "{ dtus(first: 2) { nodes { id } } }"),
        world.post("anonymous", "{ dtus(first: 101) { nodes { id } } }"),  # VALIDATION from the resolver
        world.post("anonymous", "{ nope }"),  # refused by validation
        world.post("anonymous", REFUSED["depth"][0]),
        world.post("anonymous", NEAR_THE_LIMIT, {"n": 100}),  # refused for its cost
        world.post(
            "alice", 'mutation { createDtu(input: {title: "costed"}) { dtu { id } errors { code } } }'
        ),
    ]
    for body in answers:
        assert set(body["extensions"]["cost"]) == {"requested", "limit"}, body


def fan_out(levels: int, leaf: str = "id", each: str = "") -> str:
    """``levels`` fragments, each spreading the next twice (plus ``each``): a document of a few hundred
    bytes that expands to 2^levels copies of ``leaf``."""
    fragments = [f"fragment F{n} on Dtu {{ {each} ...F{n + 1} ...F{n + 1} }}" for n in range(levels)]
    fragments.append(f"fragment F{levels} on Dtu {{ {leaf} }}")
    return "{ dtus(first: 1) { nodes { ...F0 } } } " + " ".join(fragments)


@pytest.fixture
def limit_walks(monkeypatch: pytest.MonkeyPatch) -> list[query_limits.Measure]:
    """Every walk the depth and alias rule makes, with how many selections it looked at."""
    walks: list[query_limits.Measure] = []
    measure = query_limits.measure

    def recorded(document: DocumentNode) -> query_limits.Measure:
        walks.append(measure(document))
        return walks[-1]

    monkeypatch.setattr(query_limits, "measure", recorded)
    return walks


def test_fragments_that_fan_out_are_refused_without_expanding_them(
    world: World, limit_walks: list[query_limits.Measure]
) -> None:
    """Seventeen fragments, each spreading the next twice, describe 2^17 fields in a 1 KB document. It is
    refused for its cost (costing is linear in the document), and the depth and alias rule looks at each of
    the document's 38 selections once instead of walking all 2^17: work linear in the document, whatever
    it expands to, and only once for a document it has validated before."""
    document = fan_out(17).replace("{", f"query FanOut{world.backend} {{", 1)
    selections = 3 + 17 * 2 + 1  # dtus, nodes, ...F0; two spreads per fragment; the last one's id
    for _ in range(2):
        body = world.post("anonymous", document)
        assert [error["extensions"]["code"] for error in body["errors"]] == ["QUERY_TOO_COSTLY"]
        assert body["extensions"]["cost"]["requested"] == 1 + 1 + 2**17
    [walk] = limit_walks  # the second request's validation came from the cache
    assert walk.visited == selections
    assert walk.depths == {f"FanOut{world.backend}": 2} and walk.aliases == 0


def test_aliases_are_counted_through_every_spread_without_walking_each(
    world: World, limit_walks: list[query_limits.Measure]
) -> None:
    """An alias in each of 17 doubling fragments is 2^18 - 1 aliases once expanded: the count is exact,
    from a walk that visits each selection of the document once."""
    body = world.post("anonymous", fan_out(17, leaf="a: id", each="b: id"))
    [error] = body["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION"
    assert error["message"] == f"{2**18 - 1} aliases found. Allowed: {MAX_ALIASES}"
    assert [walk.visited for walk in limit_walks] == [3 + 17 * 3 + 1]


def test_depth_is_measured_through_fragments() -> None:
    """A fragment adds the depth of its fields at every spread, and introspection fields add none."""
    fragments = "fragment C on Dtu { citations { citations { id } } } fragment D on Dtu { ...C __typename }"
    document = parse(
        "query Q { dtus { nodes { ...D } } __schema { types { fields { name } } } } " + fragments
    )
    assert query_limits.measure(document).depths == {"Q": 4}
    document = parse("{ a: dtus { b: nodes { ...C ...C } } } " + fragments)
    assert query_limits.measure(document).aliases == 2


def test_long_documents_are_validated_every_time_and_never_kept(
    world: World, limit_walks: list[query_limits.Measure]
) -> None:
    """The parse and validation caches keep only short documents: one string literal is one token, so
    the token limit does not bound a document's size, and a cache of hostile megabyte-long documents
    would hold hundreds of them. A long document is still validated, on every request."""
    filler = "x" * (MAX_CACHED_DOCUMENT_CHARS + 1)
    document = f'query Long{world.backend} {{ dtus(first: 1, search: "{filler}") {{ nodes {{ id }} }} }}'
    for _ in range(2):
        body = world.post("anonymous", document)
        assert "errors" not in body or body["errors"] == [], body.get("errors")
    assert len(limit_walks) == 2  # validated twice: nothing cached
    short = f"query Short{world.backend} {{ dtus(first: 1) {{ nodes {{ id }} }} }}"
    for _ in range(2):
        world.post("anonymous", short)
    assert len(limit_walks) == 3  # the short one once


def test_a_cached_cost_follows_the_page_size_variables(world: World) -> None:
    """The cost of a document is kept per operation and page sizes: the same text with a larger ``$n``
    costs more (and is refused), a smaller one less, whatever was asked before."""
    costs = []
    for n in (1, 90, 91, 1, 91, 90):
        body = world.post("anonymous", NEAR_THE_LIMIT, {"n": n})
        costs.append(body["extensions"]["cost"]["requested"])
        refused = [error["extensions"]["code"] for error in body.get("errors", [])]
        assert refused == (["QUERY_TOO_COSTLY"] if n == 91 else []), (n, body)
    assert costs == [113, 9992, 10103, 113, 10103, 9992]
    named = """query Small { dtus(first: 1) { nodes { id } } }
               query Large { dtus(first: 90) { nodes { citations { history { version } } } } }"""
    for operation, cost in (("Small", 3), ("Large", 9992), ("Small", 3)):
        response = world.instance.client.post(
            "/graphql",
            json={"query": named, "operationName": operation},
            headers=world.people["anonymous"].headers,
        )
        assert response.json()["extensions"]["cost"]["requested"] == cost, (operation, response.text)
