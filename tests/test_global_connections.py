"""Global's connections beyond the reference comparison (issue 6), on SQLite and PostgreSQL:

* search is real full-text search: stemmed ("running" finds "runs"), ranked (a title match outranks a body
  match), scoped by the access predicate like everything else, and stable under inserts when ordered by
  relevance; hostile search strings, filter values and cursors get typed answers, never a 500;
* DataLoaders: a page of 100 items with nested citations, history and versions takes as many SQL statements
  as a page of 10;
* totalCount and facets cost SQL only when selected; facets honour ``limit`` and say ``truncated``; a facet
  past its time budget comes back ``timedOut`` while the page, its total and the other facets are served.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from authz import gid, key_of
from global_world import BACKENDS, Query, World, all_rows, expected, open_world
from sqlalchemy import func, literal, select

from concord_core.browse.connection import Part, paginate_parts
from concord_core.browse.service import BrowseService
from concord_core.db.engine import Database
from concord_core.db.models import Artifact, ArtifactVersion, Dtu, DtuVersion, EntityTag, User, Workspace
from concord_core.db.types import new_id
from concord_core.operators import accounts as account_ops
from concord_core.operators import artifacts as artifact_ops
from concord_core.operators import dtus as dtu_ops
from concord_core.operators.base import OperationContext


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(request.param, tmp_path_factory.mktemp(f"connections-{request.param}")) as opened:
        yield opened


def new_tag() -> str:
    """A tag no other test uses, so each test filters down to its own rows in the shared world."""
    return f"t-{uuid.uuid4().hex[:10]}"


def create(world: World, who: str, title: str, tag: str, **fields: Any) -> str:
    data = {"title": title, "tags": [tag], "visibility": "public", **fields}
    return str(dtu_ops.create_dtu(world.ctx(who), data).id)


SEARCH = """query($search: String, $tag: String!, $orderBy: OrderBy, $first: Int, $after: String) {
  dtus(search: $search, filter: {tags: {anyOf: [$tag]}}, orderBy: $orderBy, first: $first, after: $after) {
    totalCount
    edges { cursor node { id title } }
    pageInfo { hasNextPage endCursor }
    facets(fields: ["visibility", "tags"]) { field values { value count } }
  }
}"""


def search(world: World, who: str, text: str, tag: str, **variables: Any) -> dict[str, Any]:
    result: dict[str, Any] = world.data(who, SEARCH, {"search": text, "tag": tag, **variables})["dtus"]
    return result


def keys(connection: dict[str, Any]) -> list[str]:
    return [key_of(edge["node"]["id"]) for edge in connection["edges"]]


# --- search ---------------------------------------------------------------------------------------


def test_search_stems_words(world: World) -> None:
    tag = new_tag()
    runs = create(world, "alice", "Morning routine", tag, human={"summary": "She runs along the river"})
    connected = create(world, "alice", "Connection pooling", tag)
    create(world, "alice", "Something else entirely", tag, human={"summary": "walking"})
    assert keys(search(world, "anonymous", "running", tag)) == [runs]
    assert keys(search(world, "anonymous", "connected", tag)) == [connected]
    assert keys(search(world, "anonymous", "RIVER run", tag)) == [runs]  # every word must match
    assert keys(search(world, "anonymous", "river walking", tag)) == []


def test_a_title_match_outranks_a_body_match(world: World) -> None:
    tag = new_tag()
    # The title match is made first (so newest-first would list it last) and its title is long (so a
    # length-normalised score would favour the short body that mentions the word too).
    in_title = create(
        world,
        "alice",
        "Lighthouse keeping on a remote and windy northern island through a long dark winter",
        tag,
    )
    in_body = create(world, "alice", "Coastal notes", tag, human={"summary": "lighthouse"})
    create(world, "alice", "Unrelated", tag)
    found = search(world, "anonymous", "lighthouse", tag)
    assert keys(found) == [in_title, in_body]
    assert found["totalCount"] == 2
    ascending = search(
        world, "anonymous", "lighthouse", tag, orderBy={"field": "CREATED", "direction": "ASC"}
    )
    assert keys(ascending) == [in_title, in_body]
    newest = search(world, "anonymous", "lighthouse", tag, orderBy={"field": "CREATED", "direction": "DESC"})
    assert keys(newest) == [in_body, in_title]


RELEVANCE_PAGES = """query($search: String, $tag: String!, $first: Int, $after: String, $last: Int,
    $before: String) {
  dtus(search: $search, filter: {tags: {anyOf: [$tag]}}, first: $first, after: $after, last: $last,
       before: $before) {
    edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""


def test_relevance_pages_forwards_and_backwards_agree_across_tiers(world: World) -> None:
    """Relevance pages (on PostgreSQL: title matches, then the others, each tier read only while a page
    needs it) list every match once whichever way they are followed, and a page can straddle the tiers.
    On PostgreSQL a title match comes first even when a body repeats the word."""
    tag = new_tag()
    titled = [create(world, "alice", f"Harbour pilots {n}", tag) for n in range(3)]
    summary = {"summary": "harbour harbour harbour pilots"}
    bodied = [create(world, "alice", f"Coastal log {n}", tag, human=summary) for n in range(4)]
    create(world, "alice", "Inland", tag)

    def follow(direction: str) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            size, at = ("first", "after") if direction == "forwards" else ("last", "before")
            variables = {"search": "harbour", "tag": tag, size: 2, at: cursor}
            page = world.data("bob", RELEVANCE_PAGES, variables)["dtus"]
            found = [key_of(edge["node"]["id"]) for edge in page["edges"]]
            seen = seen + found if direction == "forwards" else found + seen
            more = page["pageInfo"]["hasNextPage" if direction == "forwards" else "hasPreviousPage"]
            if not more:
                return seen
            cursor = page["pageInfo"]["endCursor" if direction == "forwards" else "startCursor"]

    forwards = follow("forwards")
    assert sorted(forwards) == sorted(titled + bodied) and len(set(forwards)) == len(forwards)
    assert follow("backwards") == forwards
    if world.runtime.db.is_postgres:
        assert set(forwards[:3]) == set(titled)


def test_search_hits_totals_and_facets_are_scoped_by_access(world: World) -> None:
    tag = new_tag()
    for who, visibility, workspace in (
        ("alice", "private", None),
        ("alice", "workspace", world.shared_workspace),
        ("alice", "unlisted", None),
        ("bob", "unlisted", world.shared_workspace),
        ("carol", "private", None),
        ("carol", "public", None),
    ):
        data = {"visibility": visibility, "workspace_id": workspace or world.people[who].workspace_id}
        create(world, who, f"Xylophone {who} {visibility}", tag, **data)
    query = Query("dtus", {"tags": ([tag], [])}, ["xylophone"], sort="created")
    for who in ("alice", "bob", "carol", "anonymous", "dave"):
        want = expected(world, who, query)
        found = search(world, who, "xylophones", tag, orderBy={"field": "CREATED", "direction": "DESC"})
        assert keys(found) == [row.id for row in want], who
        assert found["totalCount"] == len(want), who
        visibilities = {
            v["value"]: v["count"] for f in found["facets"] if f["field"] == "visibility" for v in f["values"]
        }
        assert sum(visibilities.values()) == len(want), who
        assert {row.visibility for row in want} == set(visibilities), who
    assert len(expected(world, "anonymous", query)) == 1 and len(expected(world, "dave", query)) == 6


def test_relevance_pages_are_stable_while_rows_are_inserted(world: World) -> None:
    """Relevance is a keyset like any other: inserting matching rows (which changes every corpus-wide
    statistic, such as how rare a word is) neither repeats nor skips an item on the following pages."""
    tag = new_tag()
    for n in range(12):
        create(
            world,
            "alice",
            f"Marimba {'marimba ' * (n % 4)}study {n}",
            tag,
            human={"summary": "marimba" * (n % 2)},
        )
    seen: list[str] = []
    after = None
    for page in range(20):
        found = search(world, "anonymous", "marimba", tag, first=3, after=after)
        seen += keys(found)
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
        for _ in range(3):  # more rows that match, and some that match only the tag
            create(world, "alice", f"marimba insert {page}", tag)
            create(world, "alice", f"other insert {page}", tag)
    assert len(seen) == len(set(seen)), "an item came twice"
    first_ones = {row.id for row in all_rows(world, "dtus") if row.title.startswith("Marimba ")}
    assert first_ones <= set(seen), "an item was skipped"


def test_relevance_pages_through_rows_whose_body_is_empty(world: World) -> None:
    """An artifact without tags has no searchable body (NULL in SQLite's FTS table); it still gets a rank
    and a cursor, so paging by relevance one at a time reaches every match exactly once."""
    word = f"w{uuid.uuid4().hex[:8]}"
    tagged, bare = [], []
    for n in range(4):
        data = {"name": f"{word} {n}", "visibility": "public", "tags": [word] if n % 2 else []}
        artifact = artifact_ops.create_artifact(world.ctx("alice"), data, world.blob(word))[0]
        (tagged if n % 2 else bare).append(artifact.id)
    document = """query($search: String!, $after: String) {
      artifacts(search: $search, first: 1, after: $after) {
        nodes { id } pageInfo { hasNextPage endCursor } } }"""
    seen, after = [], None
    for _ in range(10):
        page = world.data("anonymous", document, {"search": word, "after": after})["artifacts"]
        seen += [key_of(node["id"]) for node in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == 4 and set(seen) == {*tagged, *bare}


HOSTILE_SEARCHES = [
    '"',
    "'",
    "\"unbalanced 'quotes",
    "NEAR(alpha bravo)",
    "alpha OR bravo",
    "alpha AND NOT bravo",
    "*",
    "alpha*",
    "^alpha",
    "title:alpha",
    "a:* & b | !c <-> d",
    "'); DROP TABLE dtus; --",
    "1; DELETE FROM dtus",
    "\x00",
    "alpha\x00bravo",
    "\\",
    "%_%",
    "(((((",
    "ünïcødé 漢字 العربية",
    "x" * 500,
    " ".join(["word"] * 100),
    "",
    "   ",
]


def test_a_search_of_stop_words_alone_finds_nothing(world: World) -> None:
    """PostgreSQL drops stop words from a search, leaving an empty query that matches nothing; asking the
    index for the caller's access scopes beside it must not turn that into every readable row."""
    tag = new_tag()
    create(world, "alice", "Alpha rows", tag)
    create(world, "alice", "Beta rows", tag)
    for who in ("alice", "bob", "anonymous", "dave"):
        for order in (None, "RELEVANCE"):
            found = search(world, who, "the", tag, orderBy={"field": order} if order else None)
            assert (found["totalCount"], keys(found)) == (0, []), (who, order)


def test_hostile_search_strings_get_typed_answers(world: World) -> None:
    tag = new_tag()
    create(world, "alice", "Alpha bravo", tag)
    documents = {
        "dtus": "query($s: String) { c: dtus(search: $s, first: 5) { totalCount facets { field } } }",
        "artifacts": "query($s: String) { c: artifacts(search: $s, first: 5) { totalCount nodes { id } } }",
        "lensItems": 'query($s: String) { c: lensItems(lensId: "knowledge", search: $s) { totalCount } }',
    }
    before = len(all_rows(world, "dtus"))
    for text in HOSTILE_SEARCHES:
        for name, document in documents.items():
            body = world.post("alice", document, {"s": text})  # a 200 and no internals, or it fails
            codes = [error["extensions"]["code"] for error in body.get("errors") or []]
            assert codes in ([], ["VALIDATION"]), (name, text, body)
            if not codes:
                assert body["data"]["c"]["totalCount"] >= 0
    assert len(all_rows(world, "dtus")) == before


def cursor(order: str, values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([order, values]).encode()).decode().rstrip("=")


def test_hostile_filters_and_cursors_get_typed_errors(world: World) -> None:
    """A forged cursor (wrong types, a timestamp without a zone, NUL bytes) or a filter time without a zone
    is a VALIDATION error naming the argument; a NUL byte in a filter value matches nothing. Never an
    internal error (PostgreSQL refuses NUL in text, and naive timestamps cannot be compared)."""
    tag = new_tag()
    create(world, "alice", "Hostile", tag)
    document = """query($filter: DtuFilter, $after: String, $before: String, $last: Int, $orderBy: OrderBy,
                        $search: String) {
      dtus(filter: $filter, after: $after, before: $before, last: $last, orderBy: $orderBy, search: $search) {
        totalCount nodes { id } } }"""
    title_asc = {"field": "TITLE", "direction": "ASC"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"after": "!!!"}, "after"),
        ({"after": cursor("created:desc", [{"t": "2020-01-01T00:00:00"}, "x"])}, "after"),
        ({"after": cursor("created:desc", [{"a": 1}, "x"])}, "after"),
        ({"after": cursor("created:desc", ["not a date", "x"])}, "after"),
        ({"after": cursor("created:desc", [5, 6])}, "after"),
        ({"after": cursor("created:desc", [None, None])}, "after"),
        ({"after": cursor("created:desc", [{"t": "2020-01-01T00:00:00+00:00"}])}, "after"),
        ({"after": cursor("created:asc", [{"t": "2020-01-01T00:00:00+00:00"}, "x"])}, "after"),
        ({"before": cursor("created:desc", [[], "x"]), "last": 2}, "before"),
        ({"after": cursor("title:asc", [5, "x"]), "orderBy": title_asc}, "after"),
        ({"after": cursor("title:asc", ["a\x00", "x"]), "orderBy": title_asc}, "after"),
        ({"after": cursor("relevance", ["high", "x"]), "search": "hostile"}, "after"),
        ({"after": cursor("relevance", [True, "x"]), "search": "hostile"}, "after"),
        ({"filter": {"created": {"from": "2020-01-01T00:00:00"}}}, "filter.created"),
        ({"filter": {"updated": {"to": "2020-01-01T00:00:00"}}}, "filter.updated"),
    ]
    for variables, field_name in cases:
        body = world.post("alice", document, variables)
        errors = body.get("errors") or []
        assert [e["extensions"]["code"] for e in errors] == ["VALIDATION"], (variables, body)
        assert field_name in errors[0]["message"] or errors[0]["extensions"].get("field") in (
            None,
            field_name,
        )
    # A timestamp with a zone is fine; a NUL byte in a filter value is a value no row can hold.
    fine = world.data("alice", document, {"filter": {"created": {"from": "2020-01-01T00:00:00Z"}}})
    assert fine["dtus"]["totalCount"] >= 1
    for nothing in (
        {"tags": {"anyOf": [tag, "a\x00"]}, "type": ["note\x00"]},
        {"tags": {"allOf": [tag, "\x00"]}},
        {"status": ["\x00"]},
    ):
        assert world.data("alice", document, {"filter": nothing})["dtus"] == {"totalCount": 0, "nodes": []}
    assert (
        world.data("alice", document, {"filter": {"tags": {"anyOf": [tag, "a\x00"]}}})["dtus"]["totalCount"]
        == 1
    )


def test_page_arguments_are_checked(world: World) -> None:
    checks = [
        "{ dtus(first: 101) { nodes { id } } }",
        "{ dtus(last: -1) { nodes { id } } }",
        "{ dtus(first: 2, last: 2) { nodes { id } } }",
        "{ dtus(orderBy: {field: RELEVANCE}) { nodes { id } } }",
        '{ lensItems(lensId: "knowledge", orderBy: {field: TITLE}) { nodes { id } } }',
        '{ dtus(filter: {tags: {anyOf: ["a"]}}) { facets(fields: ["nope"]) { field } } }',
        "{ dtus { facets(limit: 0) { field } } }",
        "{ dtus { facets(limit: 101) { field } } }",
        '{ dtus(filter: {owner: ["bm90LWEtdXNlcg"]}) { nodes { id } } }',
    ]
    for document in checks:
        body = world.post("alice", document)
        codes = [error["extensions"]["code"] for error in body.get("errors") or []]
        assert codes and set(codes) <= {"VALIDATION", "NOT_FOUND"}, (document, body)


# --- DataLoaders --------------------------------------------------------------------------------------


def bulk_rows(
    world: World, count: int, tags: list[str], *, tier: str = "regular", artifacts: bool = True
) -> None:
    """``count`` public DTUs (each citing up to two earlier ones, each with two versions) and, with
    ``artifacts``, as many public artifacts (each with two versions), written in one transaction through
    the ORM; the browse indexes follow through the flush hook as for any write."""
    owner, workspace = world.people["alice"].user_id, world.people["alice"].workspace_id
    assert owner is not None and workspace is not None
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with world.runtime.db.write() as session:
        ids: list[str] = []
        for n in range(count):
            moment = start + timedelta(seconds=n)
            state = {
                "title": f"bulk {n}",
                "human": {"summary": "s"},
                "core": {},
                "machine": {},
                "tags": tags,
                "tier": tier,
                "dtu_type": "note",
                "visibility": "public",
                "citation_mode": "citing",
                "citations": ids[-2:],
                "status": "active",
                "merged_into_id": None,
                "content_hash": f"{n:064d}",
            }
            dtu = Dtu(id=new_id(), workspace_id=workspace, owner_id=owner, version=2, created_at=moment,
                      updated_at=moment, **state)  # fmt: skip
            session.add(dtu)
            ids.append(dtu.id)
            for version in (1, 2):
                session.add(
                    DtuVersion(dtu_id=dtu.id, version=version, workspace_id=workspace, owner_id=owner,
                               actor_id=owner, change="created", created_at=moment, **state)
                )  # fmt: skip
            if not artifacts:
                continue
            artifact = Artifact(id=new_id(), workspace_id=workspace, owner_id=owner, name=f"bulk {n}",
                                kind="audio",
                                visibility="public", tags=tags, current_version=2, created_at=moment,
                                updated_at=moment)  # fmt: skip
            session.add(artifact)
            for version in (1, 2):
                session.add(
                    ArtifactVersion(artifact_id=artifact.id, version=version, blob_sha256="0" * 64, size=1,
                                    media_type="audio/wav", label="original", filename=None, actor_id=owner,
                                    job_id=None, metadata_={}, created_at=moment)
                )  # fmt: skip


LOADED = {
    "dtus": """query($n: Int!, $tag: String!) { c: dtus(first: $n, filter: {tags: {anyOf: [$tag]}}) {
      nodes { id title citations { id title } history { version change title } } } }""",
    "artifacts": """query($n: Int!, $tag: String!) {
      c: artifacts(first: $n, filter: {tags: {anyOf: [$tag]}}) {
      nodes { id name versions { version sha256 } latest { version downloadUrl } } } }""",
}


def test_a_page_of_100_takes_as_many_statements_as_a_page_of_10(world: World) -> None:
    tag = new_tag()
    bulk_rows(world, 105, [tag])
    for name, document in LOADED.items():
        counts = {}
        for size in (10, 100, 10):
            with world.statements() as sent:
                page = world.data("anonymous", document, {"n": size, "tag": tag})["c"]["nodes"]
            assert len(page) == size
            counts[size] = len(sent)
        if name == "dtus":
            assert all(len(node["history"]) == 2 and len(node["citations"]) == 2 for node in page)
        else:
            assert all(node["latest"]["version"] == 2 for node in page)
        assert counts[10] == counts[100], (name, counts)
        assert counts[100] <= 10, (name, counts)


# --- totalCount and facets on demand ------------------------------------------------------------------

ON_DEMAND = """query($tag: String!) { dtus(first: 5, filter: {tags: {anyOf: [$tag]}, tier: [REGULAR, MEGA]}) {
  nodes { id } %s } }"""


def test_total_count_and_facets_cost_sql_only_when_selected(world: World) -> None:
    tag = new_tag()
    for n in range(6):
        create(world, "alice", f"demand {n}", tag, tier="mega" if n % 2 else "regular")
    counted = {}
    for name, extra in (
        ("nodes", ""),
        ("totalCount", "totalCount"),
        ("facets", 'facets(fields: ["tier", "visibility"]) { field values { value count } }'),
        ("both", 'totalCount facets(fields: ["tier", "visibility"]) { field values { value count } }'),
    ):
        with world.statements() as sent:
            world.data("anonymous", ON_DEMAND % extra, {"tag": tag})
        counted[name] = [statement for statement in sent if statement.upper().lstrip().startswith("SELECT")]
    assert not any("count(" in statement.lower() for statement in counted["nodes"])
    assert len(counted["totalCount"]) == len(counted["nodes"]) + 1
    # Both facets are read from counters (one tag filters the rows), all in one statement.
    assert len(counted["facets"]) == len(counted["nodes"]) + 1
    assert len(counted["both"]) == len(counted["nodes"]) + 2


def test_a_total_filtered_by_one_tag_is_exact(world: World) -> None:
    """Filtered by one tag and nothing else, the total is summed from the tag's counters; it equals the
    live count (two tags) and the reference for every asker, including rows they may not read."""
    tag = new_tag()
    for who, visibility in (
        ("alice", "private"),
        ("alice", "public"),
        ("bob", "workspace"),
        ("carol", "unlisted"),
    ):
        workspace = world.shared_workspace if who == "bob" else world.people[who].workspace_id
        create(world, who, f"counted {who}", tag, visibility=visibility, workspace_id=workspace)
    document = "query($filter: DtuFilter) { dtus(filter: $filter) { totalCount } }"
    for who in ("alice", "bob", "carol", "anonymous", "dave"):
        want = len(expected(world, who, Query("dtus", {"tags": ([tag], [])})))
        for tags in (
            {"anyOf": [tag]},
            {"allOf": [tag]},
            {"anyOf": [tag], "allOf": [tag]},
            {"anyOf": [tag, "x-none"]},
        ):
            found = world.data(who, document, {"filter": {"tags": tags}})["dtus"]["totalCount"]
            assert found == want, (who, tags)
    assert world.data("dave", document, {"filter": {"tags": {"anyOf": ["\x00"]}}})["dtus"]["totalCount"] == 0


def test_facet_limit_and_truncated(world: World) -> None:
    tag, kind = (
        new_tag(),
        f"k{uuid.uuid4().hex[:8]}",
    )  # the type filter keeps the (disjunctive) tag facet to these
    others = [f"{tag}-{letter}" for letter in "abcde"]
    for n in range(10):
        create(world, "alice", f"facet {n}", tag, tags=[tag, *others[: 1 + n % 5]], dtu_type=kind)
    document = """query($type: String!, $limit: Int!) { dtus(filter: {type: [$type]}) {
      facets(fields: ["tags"], limit: $limit) { field values { value count } truncated timedOut } } }"""
    full = world.data("anonymous", document, {"type": kind, "limit": 100})["dtus"]["facets"][0]
    assert full["values"] == [
        {"value": tag, "count": 10},
        *({"value": other, "count": count} for other, count in zip(others, (10, 8, 6, 4, 2), strict=True)),
    ]
    assert not full["truncated"] and not full["timedOut"]
    top = world.data("anonymous", document, {"type": kind, "limit": 3})["dtus"]["facets"][0]
    assert top["values"] == full["values"][:3] and top["truncated"]
    exact = world.data("anonymous", document, {"type": kind, "limit": 6})["dtus"]["facets"][0]
    assert exact["values"] == full["values"] and not exact["truncated"]


@contextmanager
def slow_tag_index(world: World) -> Iterator[None]:
    """Make counting tags slow, honestly. On PostgreSQL, another connection holds an exclusive lock on
    entity_tags, so a statement reading it waits until its statement_timeout ends it (the lock goes after
    10 seconds at the latest, so a missing timeout fails the test instead of hanging it). On SQLite a tiny
    budget interrupts any statement past 10,000 virtual machine steps, which counting tags over thousands
    of rows always is."""
    if world.runtime.db.is_sqlite:
        yield
        return
    url = world.runtime.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    release, locked = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as connection:
            connection.execute("LOCK TABLE entity_tags IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        yield
    finally:
        release.set()
        holder.join()


def test_a_facet_past_its_budget_times_out_instead_of_failing_the_page(world: World) -> None:
    tag = new_tag()
    bulk_rows(
        world, 3000 if world.runtime.db.is_sqlite else 40, [tag, f"{tag}-x"], tier="hyper", artifacts=False
    )
    runtime = world.runtime
    generous = runtime.browse
    runtime.browse = BrowseService(runtime.db, facet_budget_seconds=0.000_000_1)
    document = """{ dtus(first: 3, filter: {tier: [HYPER]}) {
      totalCount nodes { id }
      facets(fields: ["tags", "tier"]) { field values { value count } truncated timedOut } } }"""
    try:
        with slow_tag_index(world):
            body = world.post("anonymous", document)
    finally:
        runtime.browse = generous
    assert not body.get("errors"), body
    found = body["data"]["dtus"]
    assert len(found["nodes"]) == 3 and found["totalCount"] >= 40
    facets = {facet["field"]: facet for facet in found["facets"]}
    assert facets["tags"] == {"field": "tags", "values": [], "truncated": False, "timedOut": True}
    if not runtime.db.is_sqlite:  # counted from the tier index, which the lock does not touch
        assert not facets["tier"]["timedOut"] and facets["tier"]["values"]
    # With the usual budget the same page counts its tags.
    counted = {f["field"]: f for f in world.data("anonymous", document)["dtus"]["facets"]}
    assert (
        not counted["tags"]["timedOut"]
        and {"value": tag, "count": found["totalCount"]} in counted["tags"]["values"]
    )


# --- a page reads the columns its items select ------------------------------------------------------

EVERY_DTU_FIELD = """id title human { summary bullets examples } core { definitions invariants examples claims
  nextActions } machine tags tier type visibility citationMode status mergedIntoId contentHash version
  ownerId workspaceId createdAt updatedAt citations { id } history { version }"""


def page_statement(sent: list[str]) -> str:
    """The statement that read a page's rows (joined to its keys)."""
    (statement,) = [statement for statement in sent if "page_keys" in statement]
    return statement.lower()


def test_a_page_fetches_only_the_columns_its_items_select(world: World) -> None:
    tag = new_tag()
    cited = create(world, "alice", "columns cited", tag)
    data = {
        "human": {"summary": "the summary", "bullets": ["one"]},
        "core": {"claims": ["a claim"]},
        "machine": {"k": [1, 2]},
        "citation_mode": "derivative",
        "citations": [cited],
    }
    key = create(world, "alice", "columns citing", tag, **data)
    plain = "query($tag: String!) { dtus(filter: {tags: {anyOf: [$tag]}}) { edges { node { title tier } } } }"
    with world.statements() as sent:
        titles = world.data("anonymous", plain, {"tag": tag})["dtus"]["edges"]
    assert [edge["node"]["title"] for edge in titles] == ["columns citing", "columns cited"]
    statement = page_statement(sent)
    assert "dtus.title" in statement and "dtus.tier" in statement
    assert not any(f"dtus.{name}" in statement for name in ("human", "core", "machine", "tags", "citations"))

    # Through aliases, inline fragments and fragment spreads, every field of a page's DTU is what the DTU
    # itself says.
    whole = (
        """query($tag: String!, $id: ID!) {
      page: dtus(filter: {tags: {anyOf: [$tag]}}) { nodes { ... on Node { id } ...Whole } }
      more: dtus(filter: {tags: {anyOf: [$tag]}}) { edges { node { layer: human { summary } } } }
      one: dtu(id: $id) { ...Whole }
    }
    fragment Whole on Dtu { """
        + EVERY_DTU_FIELD
        + " }"
    )
    with world.statements() as sent:
        answer = world.data("alice", whole, {"tag": tag, "id": gid("Dtu", key)})
    assert answer["page"]["nodes"][0] == answer["one"]
    assert answer["one"]["human"]["summary"] == "the summary" and answer["one"]["machine"] == {"k": [1, 2]}
    assert answer["one"]["citations"] == [{"id": gid("Dtu", cited)}]
    assert answer["more"]["edges"][0]["node"]["layer"] == {"summary": "the summary"}
    page_statements = [statement.lower() for statement in sent if "page_keys" in statement]
    # The two pages may be read in either order.
    whole_page, layer_page = sorted(page_statements, key=lambda statement: "dtus.core" not in statement)
    assert all(f"dtus.{name}" in whole_page for name in ("human", "core", "machine", "citations"))
    assert "dtus.human" in layer_page and "dtus.core" not in layer_page and "dtus.title" not in layer_page


TAG_COUNTS = """query($tag: String!) { dtus(first: 1) { facets(fields: ["tags"], limit: 100) {
  values { value count } } } everyTag: dtus(first: 1, filter: {tags: {anyOf: [$tag]}}) { totalCount } }"""


def tag_count(world: World, who: str, tag: str) -> int:
    """The tags facet's count of ``tag`` for ``who`` (unfiltered: for a non-administrator, summed from
    the scope counters), checked against the total of the rows with the tag (from its bucket counters)."""
    answer = world.data(who, TAG_COUNTS, {"tag": tag})
    (values,) = [facet["values"] for facet in answer["dtus"]["facets"]]
    counted = {value["value"]: value["count"] for value in values}.get(tag, 0)
    assert counted == answer["everyTag"]["totalCount"], (who, counted, answer)
    return counted


def test_the_tags_facet_follows_visibility_ownership_and_membership(world: World) -> None:
    def now(who: str) -> OperationContext:  # with the workspaces they are in now
        return runtime.operation_context(runtime.principal_for_user(world.people[who].user_id))

    runtime = world.runtime
    tag = new_tag()
    studio = account_ops.create_workspace(world.ctx("alice"), "Scoped").id
    account_ops.set_member(now("alice"), studio, "bob@example.com", "editor")
    for who, visibility in (
        ("alice", "workspace"),
        ("alice", "workspace"),
        ("alice", "unlisted"),
        ("alice", "private"),
        ("bob", "workspace"),
        ("bob", "private"),
    ):
        data = {"title": f"scoped {visibility}", "tags": [tag], "visibility": visibility}
        dtu_ops.create_dtu(now(who), {**data, "workspace_id": studio})
    create(world, "carol", "scoped public", tag)
    expected = {"alice": 6, "bob": 6, "carol": 1, "anonymous": 1, "dave": 7}
    assert {who: tag_count(world, who, tag) for who in expected} == expected

    # bob leaves: his own rows stay his to list, alice's are no longer; she still lists his workspace row.
    account_ops.remove_member(now("alice"), studio, world.people["bob"].user_id or "")
    assert tag_count(world, "bob", tag) == 1 + 2
    assert tag_count(world, "alice", tag) == 6
    # A row changing visibility moves between scopes.
    data = {"title": "scoped moving", "tags": [tag], "visibility": "private", "workspace_id": studio}
    data["human"] = {"summary": "publishable"}
    row = dtu_ops.create_dtu(now("alice"), data).id
    assert tag_count(world, "carol", tag) == 1
    dtu_ops.publish_dtu(now("alice"), row, "public")
    assert {who: tag_count(world, who, tag) for who in ("alice", "bob", "carol")} == {
        "alice": 7,
        "bob": 4,
        "carol": 2,
    }


def test_tag_postings_follow_every_change_of_their_row(world: World) -> None:
    """A tag posting carries its row's sort keys, access columns and facet values; an edit, a publish and a
    merge rewrite the postings the row keeps, and a tag removed or added removes or adds its posting."""
    tag = new_tag()
    ctx = world.ctx("alice")
    summary = {"summary": "worth publishing"}
    kept = dtu_ops.create_dtu(ctx, {"title": "Posted", "tags": [tag, f"{tag}-a"], "human": summary})
    dtu_ops.edit_dtu(
        ctx,
        {"id": kept.id, "expected_version": 1, "title": "Renamed", "tier": "mega", "tags": [tag, f"{tag}-b"]},
    )
    dtu_ops.publish_dtu(ctx, kept.id, "unlisted")
    absorbed = dtu_ops.create_dtu(ctx, {"title": "Absorbed", "tags": [f"{tag}-c"], "dtu_type": "claim"})
    dtu_ops.merge_dtus(ctx, kept.id, [absorbed.id])

    def postings(dtu_id: str) -> dict[str, tuple[Any, ...]]:
        with world.runtime.db.read() as session:
            rows = session.scalars(select(EntityTag).where(EntityTag.entity_id == dtu_id)).all()
            return {
                row.tag: (row.created_at, row.updated_at, row.title, row.visibility, row.workspace_id,
                          row.owner_id, row.tier, row.type, row.status)
                for row in rows
            }  # fmt: skip

    def carried(dtu_id: str) -> tuple[Any, ...]:
        with world.runtime.db.read() as session:
            row = session.get(Dtu, dtu_id)
            assert row is not None
            return (row.created_at, row.updated_at, row.title, row.visibility, row.workspace_id, row.owner_id,
                    row.tier, row.dtu_type, row.status)  # fmt: skip

    now_kept = carried(kept.id)
    assert now_kept[2:4] == ("Renamed", "unlisted") and now_kept[6] == "mega"
    assert postings(kept.id) == {t: now_kept for t in (tag, f"{tag}-b", f"{tag}-c")}
    now_absorbed = carried(absorbed.id)
    assert now_absorbed[8] == "merged" and postings(absorbed.id) == {f"{tag}-c": now_absorbed}


def test_a_page_filtered_by_one_tag_reads_its_postings_alone(world: World) -> None:
    """A page, total and facet filtered by one tag (and a tier) are read from the tag's postings, never
    probing the rows; the page's cursors are those of any other page in the same order."""
    tag = new_tag()
    made = [
        create(world, "alice", f"Posting page {n}", tag, tier="hyper" if n % 3 else "regular")
        for n in range(9)
    ]
    hyper = [dtu_id for n, dtu_id in enumerate(made) if n % 3][::-1]  # newest first
    document = """query($tag: String!, $after: String) {
      dtus(first: 4, after: $after, filter: {tags: {anyOf: [$tag]}, tier: [HYPER]}) {
        totalCount edges { cursor node { id title } } pageInfo { hasNextPage endCursor }
        facets(fields: ["tier", "type"]) { field values { value count } } } }"""
    seen: list[str] = []
    after = None
    with world.statements() as sent:
        while True:
            page = world.data("bob", document, {"tag": tag, "after": after})["dtus"]
            seen += keys(page)
            assert page["totalCount"] == len(hyper)
            facets = {facet["field"]: facet["values"] for facet in page["facets"]}
            assert facets["tier"] == [{"value": "hyper", "count": 6}, {"value": "regular", "count": 3}]
            assert facets["type"] == [{"value": "note", "count": 6}]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
    assert seen == hyper
    reads = [" ".join(s.split()).lower() for s in sent if s.lstrip().upper().startswith("SELECT")]
    assert reads and not any("in (select entity_tags.entity_id" in s for s in reads), reads
    # The same cursor continues an unfiltered page in the same order (created, newest first).
    page = world.data("bob", document, {"tag": tag})["dtus"]
    cursor = page["edges"][1]["cursor"]
    everything = world.data(
        "bob", "query($after: String) { dtus(first: 2, after: $after) { nodes { id } } }", {"after": cursor}
    )["dtus"]
    assert everything["nodes"]  # a valid cursor there too


def test_totals_and_facets_requiring_one_tag_are_sums_of_counters(world: World) -> None:
    """A request that requires one tag and otherwise filters only on buckets, tier, type or status counts
    its total and its tier, type, status and visibility facets from counters (browse_counts,
    browse_tag_counts), whatever the tag's size: no statement counts postings or rows. Each person's counts
    are those of the rows they may read, and they follow an edit, a publish, a merge and a tag removed."""
    tag = new_tag()
    shared = world.shared_workspace
    ctx = world.ctx
    made = [
        create(world, "alice", "Counted public", tag, tier="mega", dtu_type="claim"),
        create(world, "alice", "Counted private", tag, visibility="private", tier="hyper"),
        create(world, "alice", "Counted shared", tag, visibility="workspace", workspace_id=shared),
        create(world, "bob", "Counted unlisted", tag, visibility="unlisted", dtu_type="idea"),
        create(world, "carol", "Counted carol", tag, visibility="private", tier="mega"),
        create(world, "carol", "Counted other tag", f"{tag}-b", tier="shadow"),
    ]
    document = """query($filter: DtuFilter) { dtus(first: 100, filter: $filter) {
        totalCount nodes { tier type status visibility }
        facets(fields: ["tier", "type", "status", "visibility"]) { field values { value count } } } }"""

    def check(who: str, **filters: list[str]) -> dict[str, dict[str, int]]:
        """The facets ``who`` gets; the total and the facets of the filtered fields are checked against
        the rows of the page."""
        with world.statements() as sent:
            page = world.data(who, document, {"filter": {"tags": {"anyOf": [tag]}, **filters}})["dtus"]
        rows = page["nodes"]
        assert page["totalCount"] == len(rows), (who, page)
        facets = {f["field"]: {v["value"]: v["count"] for v in f["values"]} for f in page["facets"]}
        for field in ("tier", "type", "status", "visibility"):
            if field not in filters:  # a facet ignores its own filter, so only these are the page's counts
                counted: dict[str, int] = {}
                for row in rows:
                    counted[row[field].lower()] = counted.get(row[field].lower(), 0) + 1
                assert facets[field] == counted, (who, field, facets, rows)
        counts = [" ".join(s.split()).lower() for s in sent if "count(" in s.lower() or "sum(" in s.lower()]
        assert counts and all("from browse_" in s and "entity_tags" not in s for s in counts), counts
        return facets

    assert check("alice")["tier"] == {"mega": 1, "hyper": 1, "regular": 1}
    assert check("bob")["type"] == {"claim": 1, "note": 1, "idea": 1}
    assert check("carol")["tier"] == {"mega": 2}
    assert check("anonymous")["visibility"] == {"public": 1}
    assert sum(check("dave")["tier"].values()) == 5
    # A visibility filter is a condition on the buckets, the others on the counters' columns.
    assert check("alice", visibility=["PRIVATE"])["visibility"] == {"public": 1, "private": 1, "workspace": 1}
    assert check("alice", tier=["MEGA", "HYPER"])["tier"] == {"mega": 1, "hyper": 1, "regular": 1}
    assert check("dave", tier=["MEGA"], type=["note"], status=["active"])["type"] == {"claim": 1, "note": 1}

    dtu_ops.edit_dtu(ctx("alice"), {"id": made[0], "expected_version": 1, "tier": "regular"})
    summary = {"summary": "worth publishing"}
    dtu_ops.edit_dtu(ctx("alice"), {"id": made[1], "expected_version": 1, "human": summary})
    dtu_ops.publish_dtu(ctx("alice"), made[1], "public")
    dtu_ops.merge_dtus(ctx("carol"), made[4], [made[5]])  # the absorbed row's tag joins the kept one
    dtu_ops.merge_dtus(ctx("alice"), made[0], [made[1]])  # the absorbed row keeps its tag, now merged
    dtu_ops.edit_dtu(ctx("bob"), {"id": made[3], "expected_version": 1, "tags": [f"{tag}-c"]})
    assert check("carol")["tier"] == {"mega": 1, "regular": 1, "hyper": 1}
    assert check("bob")["tier"] == {"regular": 2, "hyper": 1}
    assert check("dave", status=["merged"])["status"] == {"active": 3, "merged": 1}
    check("alice", type=["note"])


def test_the_indexes_still_match_a_rebuild(world: World) -> None:
    from concord_core.browse.indexes import verify_all

    with world.runtime.db.engine.begin() as connection:
        assert verify_all(connection) is None
    with world.runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Dtu)) == len(all_rows(world, "dtus"))


def test_a_row_added_without_its_defaulted_columns_is_counted_as_inserted(database_url: str) -> None:
    """A DTU added to a session without the columns that have Python-side defaults (status) is counted
    with the values its INSERT gives it: the counters and postings equal a rebuild from the rows."""
    from concord_core.browse.indexes import verify_all

    db = Database(database_url)
    try:
        with db.write() as session:
            owner, workspace = User(email="defaults@example.org", display_name="d"), Workspace(name="w")
            session.add_all([owner, workspace])
            session.flush()
            row = Dtu(workspace_id=workspace.id, owner_id=owner.id, title="defaults", human={}, core={},
                      machine={}, tags=["defaulted"], tier="regular", dtu_type="note", visibility="public",
                      citation_mode="original", citations=[], content_hash="h")  # fmt: skip
            session.add(row)
        assert row.status == "active"
        with db.engine.begin() as connection:
            assert verify_all(connection) is None
    finally:
        db.dispose()


def test_a_page_read_in_parts_leaves_out_rows_gone_and_shows_a_row_read_twice_once(database_url: str) -> None:
    """paginate_parts reads each part's keys, then the page's rows, in separate statements. Between them a
    row may be deleted, or an edit may move it from one part to the next. Here the parts stand for that
    directly: one names ids that have no user, and two name the same users."""
    db = Database(database_url)
    try:
        with db.write() as session:
            users = [User(email=f"{name}@example.org", display_name=name) for name in ("ann", "bob")]
            session.add_all(users)
            session.flush()
            session.add(Workspace(name="not a user"))
            ids = sorted(user.id for user in users)
        parts = [
            Part(select(User), (literal(2), literal(0.5), User.id), 2),
            Part(select(User), (literal(1), literal(0.5), User.id), 1),  # read again: moved by an edit
            Part(select(Workspace), (literal(0), literal(0.5), Workspace.id), 0),  # no such users
        ]
        with db.read() as session:
            page = paginate_parts(session, parts, "parts", (User, User.id), first=10)
        assert sorted(user.id for user in page.items) == ids
        assert len(page.cursors) == len(page.items) == 2
        assert not page.has_next_page
    finally:
        db.dispose()
