"""Generic lens items through GraphQL, on SQLite and PostgreSQL: data checked against the data type's JSON
Schema (every violation listed), optimistic concurrency, status, delete, keyset paging, syncToLens of DTUs
into the knowledge lens, and manifest seed items in development mode only. Replay matches the tables."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL, make_settings
from fixtures.lens_plugins import NOTES, NOTES_SOURCE
from sqlalchemy import func, select, update

from concord_core.api.gql.schema import KERNEL
from concord_core.api.runtime import Runtime
from concord_core.db.migrate import upgrade
from concord_core.db.models import AuditEntry, Event, LensItem
from concord_core.events.replay import verify_replay
from concord_core.plugins.registry import LensRegistry, build_registry, discover
from concord_core.settings import Settings

ITEM = "id lensId type data status version sourceId"
CREATE = f"""
mutation Create($lensId: String!, $type: String!, $data: JSON!) {{
  createLensItem(lensId: $lensId, type: $type, data: $data) {{
    item {{ {ITEM} }} errors {{ field code message }}
  }}
}}"""
UPDATE = f"""
mutation Update($id: ID!, $data: JSON!, $v: Int!) {{
  updateLensItem(id: $id, data: $data, expectedVersion: $v) {{
    item {{ {ITEM} }} errors {{ field code message }}
  }}
}}"""
STATUS = f"""
mutation Status($id: ID!, $status: String!, $v: Int!) {{
  setLensItemStatus(id: $id, status: $status, expectedVersion: $v) {{
    item {{ {ITEM} }} errors {{ field code message }}
  }}
}}"""
DELETE = """
mutation Delete($id: ID!, $v: Int!) {
  deleteLensItem(id: $id, expectedVersion: $v) { deletedId errors { field code message } }
}"""
ITEMS = """
query Items($lensId: String!, $type: String, $status: String, $first: Int, $after: String, $last: Int,
            $before: String) {
  lensItems(lensId: $lensId, type: $type, status: $status, first: $first, after: $after, last: $last,
            before: $before) {
    totalCount
    edges { cursor node { id data status } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""
NODE = "query Node($id: ID!) { node(id: $id) { id ... on LensItem { version } } }"
SYNC = f"""
mutation Sync($lensId: String!, $ids: [ID!]!) {{
  syncToLens(lensId: $lensId, ids: $ids) {{ items {{ {ITEM} }} errors {{ field code message }} }}
}}"""
CREATE_DTU = """
mutation Dtu($input: CreateDtuInput!) { createDtu(input: $input) { dtu { id title } errors { code } } }"""


@pytest.fixture
def lenses() -> LensRegistry:
    """The built-in lenses plus the fixture-notes lens (data types note and task; notes have seeds)."""
    registry = build_registry([*discover(builtin_only=True), (NOTES_SOURCE, NOTES)], KERNEL)
    assert registry.problems == []
    return registry


@pytest.fixture
def runtime(settings: Settings, lenses: LensRegistry) -> Iterator[Runtime]:
    """Overrides conftest's runtime (and so `client` and `gql`) to serve the fixture lens as well."""
    rt = Runtime.open(settings, lenses)
    upgrade(rt.db)
    rt.start()
    yield rt
    rt.close()


def counts(runtime: Runtime) -> dict[str, int]:
    with runtime.db.read() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (LensItem, Event, AuditEntry)
        }


def assert_replay_matches(runtime: Runtime) -> None:
    with runtime.db.read() as session:
        report = verify_replay(session)
    assert report.ok, report.difference


def create(gql: GraphQL, data: dict[str, Any], lens_id: str = "fixture-notes", type: str = "note") -> Any:
    return gql.run(CREATE, {"lensId": lens_id, "type": type, "data": data})["createLensItem"]


def errors(payload: dict[str, Any]) -> list[tuple[str | None, str]]:
    return sorted((e["field"], e["code"]) for e in payload["errors"])


def global_id(type_name: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{key}".encode()).decode().rstrip("=")


def test_create_checks_data_against_the_data_types_schema(gql: GraphQL, runtime: Runtime) -> None:
    payload = create(gql, {"title": "Plan", "tags": ["a", "b"], "stars": 3})
    assert payload["errors"] == []
    item = payload["item"]
    assert (item["lensId"], item["type"], item["status"], item["version"]) == (
        "fixture-notes",
        "note",
        "active",
        1,
    )
    assert item["data"] == {"title": "Plan", "tags": ["a", "b"], "stars": 3}
    before = counts(runtime)

    payload = create(gql, {"title": "", "tags": ["ok", 5], "stars": 9, "colour": "red"})
    assert payload["item"] is None
    assert errors(payload) == [
        ("data", "VALIDATION"),  # colour: additional property
        ("data.stars", "VALIDATION"),
        ("data.tags.1", "VALIDATION"),
        ("data.title", "VALIDATION"),
    ]
    assert any("colour" in e["message"] for e in payload["errors"])
    missing = create(gql, {"body": "no title"})
    assert errors(missing) == [("data", "VALIDATION")] and "title" in missing["errors"][0]["message"]

    # format is asserted, not just an annotation: 30 February is no date
    assert errors(create(gql, {"title": "Due", "due": "2026-02-30"})) == [("data.due", "VALIDATION")]
    assert counts(runtime) == before
    assert create(gql, {"title": "Due", "due": "2026-02-28"})["errors"] == []
    before = counts(runtime)

    unknown_lens = create(gql, {"title": "x"}, lens_id="no-such-lens")
    assert errors(unknown_lens) == [("lensId", "NOT_FOUND")]
    unknown_type = create(gql, {"title": "x"}, type="no_such_type")
    assert errors(unknown_type) == [("type", "VALIDATION")]
    assert counts(runtime) == before  # nothing written by any refused create


def test_update_status_delete_with_expected_version(gql: GraphQL, runtime: Runtime) -> None:
    item = create(gql, {"title": "Draft"})["item"]
    updated = gql.run(UPDATE, {"id": item["id"], "data": {"title": "Final", "stars": 5}, "v": 1})[
        "updateLensItem"
    ]
    assert updated["errors"] == []
    assert (updated["item"]["version"], updated["item"]["data"]) == (2, {"title": "Final", "stars": 5})
    before = counts(runtime)

    stale = gql.run(UPDATE, {"id": item["id"], "data": {"title": "Lost"}, "v": 1})["updateLensItem"]
    assert errors(stale) == [("expectedVersion", "CONFLICT")]
    invalid = gql.run(UPDATE, {"id": item["id"], "data": {"title": 1, "stars": -1}, "v": 2})["updateLensItem"]
    assert errors(invalid) == [("data.stars", "VALIDATION"), ("data.title", "VALIDATION")]
    stale_status = gql.run(STATUS, {"id": item["id"], "status": "archived", "v": 1})["setLensItemStatus"]
    assert errors(stale_status) == [("expectedVersion", "CONFLICT")]
    bad_status = gql.run(STATUS, {"id": item["id"], "status": "Not A Status", "v": 2})["setLensItemStatus"]
    assert [code for _field, code in errors(bad_status)] == ["VALIDATION"]
    stale_delete = gql.run(DELETE, {"id": item["id"], "v": 1})["deleteLensItem"]
    assert (stale_delete["deletedId"], errors(stale_delete)) == (None, [("expectedVersion", "CONFLICT")])
    assert counts(runtime) == before  # nothing written
    assert gql.run(NODE, {"id": item["id"]})["node"]["version"] == 2

    archived = gql.run(STATUS, {"id": item["id"], "status": "archived", "v": 2})["setLensItemStatus"]
    assert (archived["errors"], archived["item"]["status"], archived["item"]["version"]) == (
        [],
        "archived",
        3,
    )
    assert archived["item"]["data"] == {"title": "Final", "stars": 5}
    listed = gql.run(ITEMS, {"lensId": "fixture-notes", "type": "note", "status": "archived"})["lensItems"]
    assert [edge["node"]["id"] for edge in listed["edges"]] == [item["id"]]
    assert listed["totalCount"] == 1

    deleted = gql.run(DELETE, {"id": item["id"], "v": 3})["deleteLensItem"]
    assert (deleted["deletedId"], deleted["errors"]) == (item["id"], [])
    assert gql.run(NODE, {"id": item["id"]})["node"] is None
    gone = gql.run(UPDATE, {"id": item["id"], "data": {"title": "x"}, "v": 3})["updateLensItem"]
    assert errors(gone) == [(None, "NOT_FOUND")]
    assert gql.run(ITEMS, {"lensId": "fixture-notes", "status": "archived"})["lensItems"]["totalCount"] == 0
    assert_replay_matches(runtime)


def _walk(gql: GraphQL, forward: bool, size: int) -> list[str]:
    """Every task id, page by page, forward (first/after) or backward (last/before), in list order."""
    ids: list[str] = []
    cursor = None
    while True:
        args = {"first": size, "after": cursor} if forward else {"last": size, "before": cursor}
        page = gql.run(ITEMS, {"lensId": "fixture-notes", "type": "task", **args})["lensItems"]
        assert page["totalCount"] == 7
        nodes = [edge["node"]["id"] for edge in page["edges"]]
        assert 0 < len(nodes) <= size
        info = page["pageInfo"]
        assert (info["startCursor"], info["endCursor"]) == (
            page["edges"][0]["cursor"],
            page["edges"][-1]["cursor"],
        )
        if forward:
            ids += nodes
            more, cursor = info["hasNextPage"], info["endCursor"]
            assert info["hasPreviousPage"] == (len(ids) > len(nodes))
        else:
            ids = nodes + ids
            more, cursor = info["hasPreviousPage"], info["startCursor"]
            assert info["hasNextPage"] == (len(ids) > len(nodes))
        if not more:
            return ids


def test_lens_items_pages_by_keyset(gql: GraphQL, runtime: Runtime) -> None:
    created = [create(gql, {"title": f"task {n}"}, type="task")["item"]["id"] for n in range(7)]
    everything = gql.run(ITEMS, {"lensId": "fixture-notes", "type": "task", "first": 100})["lensItems"]
    newest_first = [edge["node"]["id"] for edge in everything["edges"]]
    assert sorted(newest_first) == sorted(created)
    assert everything["pageInfo"]["hasNextPage"] is False
    for size in (1, 3, 7):
        assert _walk(gql, forward=True, size=size) == newest_first
        assert _walk(gql, forward=False, size=size) == newest_first

    # Rows created in the same instant are ordered by id: still no duplicate and no gap across pages.
    with runtime.db.write() as session:
        instant = session.scalar(select(func.min(LensItem.created_at)).where(LensItem.item_type == "task"))
        session.execute(update(LensItem).where(LensItem.item_type == "task").values(created_at=instant))
    with runtime.db.read() as session:
        tied_rows = select(func.count(func.distinct(LensItem.created_at))).where(LensItem.item_type == "task")
        assert session.scalar(tied_rows) == 1
    everything = gql.run(ITEMS, {"lensId": "fixture-notes", "type": "task", "first": 100})["lensItems"]
    tied = [edge["node"]["id"] for edge in everything["edges"]]
    assert sorted(tied) == sorted(created)
    assert _walk(gql, forward=True, size=2) == tied
    assert _walk(gql, forward=False, size=2) == tied

    too_many = gql.raw(ITEMS, {"lensId": "fixture-notes", "first": 101})
    assert too_many["errors"][0]["extensions"]["code"] == "VALIDATION"
    both = gql.raw(ITEMS, {"lensId": "fixture-notes", "first": 1, "last": 1})
    assert both["errors"][0]["extensions"]["code"] == "VALIDATION"
    bad_cursor = gql.raw(ITEMS, {"lensId": "fixture-notes", "first": 1, "after": "not-a-cursor"})
    assert bad_cursor["errors"][0]["extensions"]["code"] == "VALIDATION"
    assert gql.run(ITEMS, {"lensId": "no-such-lens"})["lensItems"]["totalCount"] == 0


def test_sync_to_lens_is_idempotent(gql: GraphQL, runtime: Runtime) -> None:
    dtus = [gql.run(CREATE_DTU, {"input": {"title": f"Thought {n}"}})["createDtu"]["dtu"] for n in range(3)]
    ids = [dtu["id"] for dtu in dtus[:2]]
    first = gql.run(SYNC, {"lensId": "knowledge", "ids": ids})["syncToLens"]
    assert first["errors"] == []
    assert [(i["lensId"], i["type"], i["sourceId"]) for i in first["items"]] == [
        ("knowledge", "dtu_ref", dtu_id) for dtu_id in ids
    ]
    assert first["items"][0]["data"]["title"] == "Thought 0"
    before = counts(runtime)

    again = gql.run(SYNC, {"lensId": "knowledge", "ids": ids})["syncToLens"]
    assert [i["id"] for i in again["items"]] == [i["id"] for i in first["items"]]
    assert counts(runtime) == before  # no new item, event or audit entry

    unknown = global_id("Dtu", str(uuid.uuid4()))
    missing = gql.run(SYNC, {"lensId": "knowledge", "ids": [dtus[2]["id"], unknown]})["syncToLens"]
    assert (missing["items"], errors(missing)) == ([], [("ids.1", "NOT_FOUND")])
    not_a_dtu = gql.run(SYNC, {"lensId": "knowledge", "ids": [first["items"][0]["id"]]})["syncToLens"]
    assert errors(not_a_dtu) == [("ids.0", "NOT_FOUND")]
    no_lens = gql.run(SYNC, {"lensId": "no-such-lens", "ids": [dtus[2]["id"]]})["syncToLens"]
    assert errors(no_lens) == [("lensId", "NOT_FOUND")]
    refuses_dtus = gql.run(SYNC, {"lensId": "fixture-notes", "ids": [dtus[2]["id"]]})["syncToLens"]
    assert errors(refuses_dtus) == [("type", "VALIDATION")]
    after_refusals = counts(runtime)
    assert (after_refusals["lens_items"], after_refusals["events"]) == (
        before["lens_items"],
        before["events"],
    )

    listed = gql.run(ITEMS, {"lensId": "knowledge", "type": "dtu_ref"})["lensItems"]
    assert listed["totalCount"] == 2
    assert_replay_matches(runtime)


def _seeded(runtime: Runtime) -> list[tuple[str, dict[str, Any]]]:
    with runtime.db.read() as session:
        rows = session.scalars(select(LensItem).where(LensItem.source_kind == "seed"))
        return sorted(((row.item_type, row.data) for row in rows), key=lambda item: item[1]["title"])


@pytest.mark.parametrize("environment", ["development", "production"])
def test_seed_items_only_in_development(
    tmp_path: Path, database_url: str, lenses: LensRegistry, environment: str
) -> None:
    rt = Runtime.open(make_settings(tmp_path, database_url, environment=environment), lenses)
    try:
        upgrade(rt.db)
        rt.start()
        if environment == "production":
            assert _seeded(rt) == []
            return
        assert _seeded(rt) == [
            ("note", {"title": "Second seed", "tags": ["seed"]}),
            ("note", {"title": "Welcome", "body": "Seeded in development mode only."}),
        ]
        before = counts(rt)
        rt.start()  # a restart seeds nothing new
        assert counts(rt) == before
        assert_replay_matches(rt)
    finally:
        rt.close()
