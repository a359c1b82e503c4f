"""REST browsing (issue 6, plan B3), on SQLite and PostgreSQL: ``GET /api/<name>/paginated`` for dtus,
artifacts, lens_items and jobs returns ``{items, total, facets, pageInfo}`` from the same service as the
GraphQL connections. For the same request, page after page, both answer the same items, cursors, total
and facets (and both equal the brute-force reference); the paths are in the OpenAPI schema; bad parameters
are a 422 with typed errors, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from authz import assert_no_internals, gid, key_of
from global_world import (
    BACKENDS,
    DOCUMENTS,
    FACETS,
    ID_FACETS,
    Query,
    World,
    all_rows,
    expected,
    graphql_variables,
    open_world,
    seed,
)

SOURCES = ("dtus", "artifacts", "lens_items", "jobs")


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(request.param, tmp_path_factory.mktemp(f"rest-{request.param}")) as opened:
        seed(opened)
        yield opened


def rest_params(query: Query, facet_limit: int) -> dict[str, Any]:
    """``query`` as REST parameters (raw ids, lower-case values, one parameter per filter value)."""
    params: dict[str, Any] = {"facetLimit": facet_limit, "direction": "desc" if query.descending else "asc"}
    if query.source != "jobs":
        params["sort"] = query.sort
    if query.search:
        params["search"] = " ".join(query.search)
    for name, value in query.filters.items():
        if name == "tags":
            params["tags"], params["allTags"] = value
        elif name in ("created", "updated"):
            start, end = value
            params[f"{name}From"] = start.isoformat() if start else None
            params[f"{name}To"] = end.isoformat() if end else None
        else:
            params[name] = list(value)
    return {key: value for key, value in params.items() if value not in (None, [])}


def rest_facets(facets: dict[str, Any]) -> list[dict[str, Any]]:
    """The REST facets in the GraphQL shape (ids as global ids)."""
    shaped = []
    for name, facet in facets.items():
        type_name = ID_FACETS.get(name)
        values = [
            {"value": gid(type_name, v["value"]) if type_name else v["value"], "count": v["count"]}
            for v in facet["values"]
        ]
        shaped.append(
            {"field": name, "values": values, "truncated": facet["truncated"], "timedOut": facet["timedOut"]}
        )
    return shaped


def compare(
    world: World, who: str, query: Query, size: int, *, backwards: bool = False, limit: int = 3
) -> int:
    """Page through ``query`` over REST and GraphQL side by side; returns how many pages it took."""
    rest_cursor: str | None = None
    ids: list[str] = []
    for number in range(1, 40):
        paging = {"last": size, "before": rest_cursor} if backwards else {"first": size, "after": rest_cursor}
        response = world.rest(
            who,
            f"/api/{query.source}/paginated",
            {**rest_params(query, limit), **{k: v for k, v in paging.items() if v}},
        )
        assert response.status_code == 200, response.text
        rest = response.json()
        graphql = world.data(
            who,
            DOCUMENTS[query.source],
            {
                **graphql_variables(query),
                **paging,
                "counts": True,
                "facets": list(FACETS[query.source]),
                "limit": limit,
            },
        )["page"]
        keys = [item["id"] for item in rest["items"]]
        assert keys == [key_of(edge["node"]["id"]) for edge in graphql["edges"]]
        assert rest["pageInfo"] == graphql["pageInfo"]
        assert rest["total"] == graphql["totalCount"]
        assert rest_facets(rest["facets"]) == graphql["facets"]
        ids = keys + ids if backwards else ids + keys
        more = rest["pageInfo"]["hasPreviousPage" if backwards else "hasNextPage"]
        if not more:
            want = [row.id for row in expected(world, who, query)]
            assert ids == want if query.sort != "relevance" else sorted(ids) == sorted(want)
            return number
        rest_cursor = rest["pageInfo"]["startCursor" if backwards else "endCursor"]
    raise AssertionError("too many pages")


def people(world: World, *names: str) -> list[str]:
    return [world.people[name].user_id or "" for name in names]


def requests(world: World) -> list[tuple[str, Query, int]]:
    """(asker, query, page size): every connection, filters of each kind, search, sorts and directions."""
    moments = sorted(row.created_at for row in all_rows(world, "dtus"))
    middle = moments[len(moments) // 2]
    shared = world.shared_workspace
    return [
        ("alice", Query("dtus"), 7),
        ("anonymous", Query("dtus", sort="title", descending=False), 4),
        ("bob", Query("dtus", {"tags": (["bass", "echo"], [])}, sort="updated"), 3),
        ("carol", Query("dtus", {"tags": ([], ["bass"]), "tier": ["mega", "regular"]}), 2),
        ("dave", Query("dtus", {"visibility": ["unlisted", "workspace"], "workspace": [shared]}), 5),
        (
            "alice",
            Query("dtus", {"owner": people(world, "bob", "carol"), "status": ["active"]}, sort="title"),
            4,
        ),
        ("bob", Query("dtus", {"created": (middle, None), "type": ["note", "idea"]}, descending=False), 3),
        ("alice", Query("dtus", {"updated": (None, middle + timedelta(microseconds=1))}), 6),
        ("anonymous", Query("dtus", search=["alpha"], sort="relevance"), 2),
        ("bob", Query("dtus", {"tier": ["mega"]}, search=["bravo"], sort="created"), 2),
        ("alice", Query("artifacts", {"type": ["audio", "image"]}), 3),
        ("carol", Query("artifacts", {"tags": (["bass"], [])}, search=["delta"], sort="title"), 2),
        ("alice", Query("lens_items", {"lens": ["knowledge"]}), 4),
        ("bob", Query("lens_items", {"lens": ["knowledge"], "status": ["active"]}, sort="updated"), 3),
        ("alice", Query("jobs"), 3),
        ("bob", Query("jobs", {"type": ["knowledge.export_markdown"], "workspace": [shared]}), 2),
        ("dave", Query("jobs", {"status": ["queued"]}), 4),
    ]


def test_rest_and_graphql_answer_the_same(world: World) -> None:
    several = 0
    for who, query, size in requests(world):
        several += compare(world, who, query, size) > 1
    assert several >= 10  # most of them really page
    # Backwards, with last/before.
    assert compare(world, "alice", Query("dtus", sort="title"), 4, backwards=True) > 1
    assert compare(world, "dave", Query("jobs"), 3, backwards=True) > 1


def test_total_and_facets_are_computed_only_when_asked(world: World) -> None:
    plain = {"first": 3, "total": "false", "facets": "", "tier": ["mega", "regular"]}
    with world.statements() as sent:
        body = world.rest("anonymous", "/api/dtus/paginated", plain).json()
    assert body["total"] is None and body["facets"] == {}
    assert not any("count(" in statement.lower() for statement in sent)
    with world.statements() as counted:
        body = world.rest(
            "anonymous", "/api/dtus/paginated", {**plain, "total": "true", "facets": "tier,tags"}
        ).json()
    assert body["total"] >= len(body["items"]) and set(body["facets"]) == {"tier", "tags"}
    assert len(counted) > len(sent)


def test_every_browsable_is_in_the_openapi_schema(world: World) -> None:
    schema = world.instance.client.get("/openapi.json").json()
    for source in SOURCES:
        operation = schema["paths"][f"/api/{source}/paginated"]["get"]
        parameters = {parameter["name"] for parameter in operation["parameters"]}
        assert {
            "first",
            "after",
            "last",
            "before",
            "facets",
            "facetLimit",
            "total",
            "direction",
        } <= parameters
        assert {"search", "sort"} <= parameters
        reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        body = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]
        assert set(body["properties"]) == {"items", "total", "facets", "pageInfo"}
        assert "422" in operation["responses"]
    assert "tier" in schema["paths"]["/api/dtus/paginated"]["get"]["description"]


BAD_PARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    # (source, parameters, the field named in the error)
    ("dtus", {"first": "many"}, "first"),
    ("dtus", {"first": 101}, "first"),
    ("dtus", {"last": -1}, "last"),
    ("dtus", {"first": 2, "last": 2}, "first"),
    ("dtus", {"after": "not-a-cursor"}, "after"),
    ("dtus", {"before": "not-a-cursor", "last": 2}, "before"),
    ("dtus", {"direction": "sideways"}, "direction"),
    ("dtus", {"sort": "colour"}, "orderBy"),
    ("dtus", {"sort": "relevance"}, "orderBy"),
    ("dtus", {"facets": "tier,colour"}, "facets"),
    ("dtus", {"facetLimit": 0}, "facetLimit"),
    ("dtus", {"facetLimit": 101}, "facetLimit"),
    ("dtus", {"createdFrom": "yesterday"}, "createdFrom"),
    ("dtus", {"createdFrom": "2025-01-01T00:00:00"}, "filter.created"),
    ("dtus", {"tier": ["t"] * 101}, "filter.tier"),
    ("dtus", {"search": "s" * 501}, "search"),
    ("dtus", {"lens": "knowledge"}, "lens"),
    ("artifacts", {"tier": "mega"}, "tier"),
    ("lens_items", {"sort": "title"}, "orderBy"),
    ("jobs", {"search": "anything"}, "search"),
    ("jobs", {"visibility": "public"}, "visibility"),
]


@pytest.mark.parametrize(("source", "params", "field_name"), BAD_PARAMETERS, ids=lambda v: str(v)[:30])
def test_bad_parameters_are_422_with_typed_errors(
    world: World, source: str, params: dict[str, Any], field_name: str
) -> None:
    response = world.rest("alice", f"/api/{source}/paginated", params)
    assert response.status_code == 422, response.text
    assert_no_internals(response.text)
    errors = response.json()["errors"]
    assert errors and all(error["code"] == "VALIDATION" for error in errors)
    assert field_name in [error["field"] for error in errors], errors


def test_hostile_values_are_only_data(world: World) -> None:
    for params in (
        {"tags": "a\x00b"},
        {"type": "\x00", "search": "\x00"},
        {"search": "'); DROP TABLE dtus; --"},
        {"search": "NEAR(alpha bravo) OR *"},
        {"owner": "' OR 1=1 --"},
    ):
        response = world.rest("anonymous", "/api/dtus/paginated", params)
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 0 and response.json()["items"] == []
    assert all_rows(world, "dtus")


def test_a_cursor_from_another_ordering_or_connection_is_refused(world: World) -> None:
    page = world.rest("alice", "/api/dtus/paginated", {"first": 2, "sort": "title"}).json()
    cursor = page["pageInfo"]["endCursor"]
    assert (
        world.rest("alice", "/api/dtus/paginated", {"first": 2, "sort": "title", "after": cursor}).status_code
        == 200
    )
    for source, params in (("dtus", {"sort": "created"}), ("dtus", {"sort": "title", "direction": "asc"})):
        response = world.rest("alice", f"/api/{source}/paginated", {"first": 2, "after": cursor, **params})
        assert response.status_code == 422 and response.json()["errors"][0]["field"] == "after"
