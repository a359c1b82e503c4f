"""DTUs through GraphQL: create, edit (optimistic concurrency, full history), citations, merge with
lineage, dedupe, export to a JSON artifact, and publish with its checks. Every test runs on both backends."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL
from fastapi.testclient import TestClient
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from concord_core.api.runtime import Runtime
from concord_core.auth.accounts import create_user
from concord_core.browse.indexes import index_inserted
from concord_core.db.models import (
    AuditEntry,
    Base,
    BrowseCount,
    Dtu,
    DtuCitation,
    DtuVersion,
    EntityTag,
    Event,
)
from concord_core.db.snapshots import dtu_snapshot, dtu_version_snapshot
from concord_core.operators import dtus as dtu_ops
from concord_core.operators.base import write
from concord_core.operators.errors import ErrorCode, OperatorError

GRAPHQL_DIR = Path(__file__).resolve().parent.parent / "graphql"


def load_operation(name: str) -> str:
    """An operation document from graphql/, with the fragments it spreads appended."""
    text = (GRAPHQL_DIR / f"{name}.graphql").read_text()
    fragments = {
        match.group(1): match.group(0)
        for match in re.finditer(
            r"fragment\s+(\w+)\s+on\s+\w+\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}",
            (GRAPHQL_DIR / "fragments.graphql").read_text(),
        )
    }
    included: list[str] = []
    pending = [text]
    while pending:
        for name_used in re.findall(r"\.\.\.\s*(?!on\b)(\w+)", pending.pop()):
            if name_used not in included:
                included.append(name_used)
                pending.append(fragments[name_used])
    return "\n".join([text, *(fragments[n] for n in included)])


CREATE = load_operation("CreateDtu")
EDIT = load_operation("EditDtu")
MERGE = load_operation("MergeDtus")
DEDUPE = load_operation("DedupeDtus")
PUBLISH = load_operation("PublishDtu")
EXPORT = load_operation("ExportDtus")
GET = load_operation("GetDtu")
NODE = load_operation("Node")


def key_of(global_id: str) -> str:
    """The database key inside a global ID (tests look at rows; clients never do this)."""
    raw = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return raw.split(":", 1)[1]


def global_id(type_name: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{key}".encode()).decode().rstrip("=")


def row_counts(runtime: Runtime) -> dict[str, int]:
    with runtime.db.read() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def create(gql: GraphQL, **fields: Any) -> dict[str, Any]:
    payload = gql.run(CREATE, {"input": {"title": "A thought", **fields}})["createDtu"]
    assert payload["errors"] == [], payload
    dtu: dict[str, Any] = payload["dtu"]
    return dtu


def edit(gql: GraphQL, dtu: dict[str, Any], **fields: Any) -> dict[str, Any]:
    variables = {"input": {"id": dtu["id"], "expectedVersion": dtu["version"], **fields}}
    payload = gql.run(EDIT, variables)["editDtu"]
    assert payload["errors"] == [], payload
    edited: dict[str, Any] = payload["dtu"]
    return edited


def errors_of(payload: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(e["field"], e["code"]) for e in payload["errors"]]


def fetch(gql: GraphQL, dtu_id: str) -> dict[str, Any]:
    dtu: dict[str, Any] = gql.run(GET, {"id": dtu_id})["dtu"]
    return dtu


def events_of(runtime: Runtime, key: str) -> list[Event]:
    with runtime.db.read() as session:
        return list(
            session.scalars(
                select(Event).where(Event.entity_type == "dtu", Event.entity_id == key).order_by(Event.seq)
            )
        )


FULL = {
    "title": "  Tension and release  ",
    "human": {
        "summary": "Music moves between tension and release.",
        "bullets": ["dominant resolves to tonic", "suspensions delay resolution"],
        "examples": ["V7 -> I"],
    },
    "core": {
        "definitions": ["tension: expectation of change"],
        "invariants": ["release follows tension"],
        "examples": ["a suspended fourth"],
        "claims": ["listeners predict resolution"],
        "nextActions": ["write a lens for harmony"],
    },
    "machine": {"embedding": [0.25, -1.5], "source": {"kind": "note", "n": 3}, "ok": True},
    "tags": ["  Harmony ", "harmony", "Theory", "music/ear-training"],
    "tier": "HYPER",
    "type": "concept",
    "visibility": "WORKSPACE",
}


def test_answers_carry_any_json_exactly(gql: GraphQL) -> None:
    """Answers are encoded by orjson, except what it refuses (an integer past 64 bits), which falls back to
    json: both arrive exactly, as does text beyond ASCII."""
    machine = {"huge": 2**70, "exact": 2**63 - 1, "text": "naïve — 音楽 🎵", "float": 0.1}
    dtu = create(gql, title="Ünïcode ✓", machine=machine)
    assert (dtu["title"], dtu["machine"]) == ("Ünïcode ✓", machine)
    fetched = fetch(gql, dtu["id"])
    assert (fetched["title"], fetched["machine"]) == ("Ünïcode ✓", machine)
    assert fetch(gql, create(gql, machine={"n": 1})["id"])["machine"] == {"n": 1}


def test_create_with_every_field(gql: GraphQL, runtime: Runtime) -> None:
    dtu = create(gql, **FULL)
    assert dtu["title"] == "Tension and release"  # trimmed
    assert dtu["human"] == FULL["human"]
    assert dtu["core"] == FULL["core"]
    assert dtu["machine"] == FULL["machine"]
    assert dtu["tags"] == ["harmony", "music/ear-training", "theory"]  # lower-cased, trimmed, unique, sorted
    assert (dtu["tier"], dtu["type"], dtu["visibility"]) == ("HYPER", "concept", "WORKSPACE")
    assert (dtu["citationMode"], dtu["citations"], dtu["status"]) == ("ORIGINAL", [], "active")
    assert dtu["version"] == 1 and dtu["mergedIntoId"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", dtu["contentHash"])

    # A fresh read returns exactly what the mutation returned, plus one history entry.
    fetched = fetch(gql, dtu["id"])
    history = fetched.pop("history")
    assert fetched == dtu
    assert [(h["version"], h["change"], h["title"]) for h in history] == [(1, "created", dtu["title"])]
    node = gql.run(NODE, {"id": dtu["id"]})["node"]
    assert node == {"__typename": "Dtu", "id": dtu["id"], "title": dtu["title"], "version": 1}

    key = key_of(dtu["id"])
    with runtime.db.read() as session:
        row = session.get(Dtu, key)
        assert row is not None
        assert row.owner_id == runtime.local_owner_id
        assert key_of(dtu["ownerId"]) == row.owner_id
        assert key_of(dtu["workspaceId"]) == row.workspace_id
        assert row.human["bullets"] == FULL["human"]["bullets"]
        assert row.core["next_actions"] == ["write a lens for harmony"]
        snapshot = dtu_snapshot(row)
    [event] = events_of(runtime, key)
    assert event.event_type == "DTU_CREATED"
    assert event.payload == {"dtu": snapshot, "change": "created"}

    # Every tier and visibility value is accepted; omitted fields get their defaults.
    for tier, visibility in [("REGULAR", "PRIVATE"), ("MEGA", "UNLISTED"), ("SHADOW", "PUBLIC")]:
        made = create(gql, title=f"{tier} one", tier=tier, visibility=visibility)
        assert (made["tier"], made["visibility"]) == (tier, visibility)
    plain = create(gql, title="bare")
    assert (plain["tier"], plain["type"], plain["visibility"], plain["citationMode"], plain["tags"]) == (
        "REGULAR",
        "note",
        "PRIVATE",
        "ORIGINAL",
        [],
    )
    assert plain["human"] == {"summary": "", "bullets": [], "examples": []}
    assert plain["machine"] == {}

    # Unknown, malformed and wrongly typed IDs read as null, not as errors.
    for bad in (global_id("Dtu", str(uuid.uuid4())), "not an id!", "", global_id("Artifact", key)):
        assert gql.run(GET, {"id": bad})["dtu"] is None
        assert gql.run(NODE, {"id": bad})["node"] is None


#: Statements of the job runners, which share the engine and may run in other threads while a request is
#: counted. (The live-update publisher sends its NOTIFY on the driver's connection, unseen here.)
BACKGROUND = re.compile(r"\b(jobs|job_runs|workflows)\b", re.IGNORECASE)


def test_create_sends_one_statement_per_row(gql: GraphQL, runtime: Runtime) -> None:
    """createDtu reads nothing but the principal and writes each of its rows with one statement: no
    workspace lookup, no citation statements when nothing is cited, no ORM flush of extra statements."""
    create(gql, title="warm-up", tags=["first"])
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not BACKGROUND.search(statement):
            sent.append(" ".join(statement.split()))

    sqlalchemy_event.listen(runtime.db.engine, "before_cursor_execute", record)
    try:
        create(gql, title="counted", tags=["one", "two"], visibility="PUBLIC")
    finally:
        sqlalchemy_event.remove(runtime.db.engine, "before_cursor_execute", record)
    transactions = [s for s in sent if s.upper().startswith("BEGIN")]
    log = [s for s in sent if "event_head" in s or s.upper().startswith("INSERT INTO EVENTS")]
    rest = [s for s in sent if s not in transactions and s not in log]
    kinds = sorted(" ".join(s.split()[:3]).upper() for s in rest)
    # The principal, with its memberships: read through SQLAlchemy on SQLite, on the event loop on
    # PostgreSQL (concord_core.db.async_reads), where SQLAlchemy does not see it.
    principal = [] if runtime.db.is_postgres else ["SELECT USERS.IS_ADMIN, USERS.DISABLED_AT,"]
    assert kinds == [
        "INSERT INTO AUDIT_LOG",
        "INSERT INTO BROWSE_COUNTS",
        "INSERT INTO BROWSE_SCOPE_COUNTS",  # the tags facet's counters by access scope
        "INSERT INTO BROWSE_TAG_COUNTS",  # the tier, type and status counters per tag
        "INSERT INTO DTUS",
        "INSERT INTO DTU_VERSIONS",
        "INSERT INTO ENTITY_TAGS",
        *principal,
    ], sent
    # The event append: three statements on SQLite (head, event, new head); on PostgreSQL one, sent on the
    # driver's connection (concord_core.events.log), where SQLAlchemy does not see it.
    assert len(log) == (0 if runtime.db.is_postgres else 3), sent
    # SQLite: the principal's read and the write transaction; PostgreSQL's driver begins implicitly.
    assert len(transactions) <= 2, sent


def test_a_change_audited_early_refuses_a_later_audit_and_writes_nothing(runtime: Runtime) -> None:
    """createDtu writes its audit row with its batch of rows (Change.write_audit); auditing after that
    would change a row already sent, so it is refused, and the transaction rolls back."""
    ctx = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    with runtime.db.read() as session:
        before = session.scalar(select(func.count()).select_from(AuditEntry))
    with pytest.raises(RuntimeError, match="already written"), write(ctx, "test.audit") as change:
        change.audit("dtu", "some-id", None, version=1)
        change.write_audit()
        change.audit("dtu", "some-id", None, version=2)
    with runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == before


def test_a_failing_index_write_raises_as_sqlalchemy_would_and_writes_nothing(
    gql: GraphQL, runtime: Runtime
) -> None:
    """The browse index statements of a write go out together on PostgreSQL (one round trip), so their
    errors arrive when the batch ends: still as SQLAlchemy's exceptions (operators catch IntegrityError),
    and the whole transaction rolls back."""
    create(gql, title="indexed", tags=["one"])
    with runtime.db.read() as session:
        dtu = session.scalars(select(Dtu)).one()
        before = session.scalar(select(func.count()).select_from(EntityTag))
        counted = session.scalar(select(func.sum(BrowseCount.count)))
    with pytest.raises(IntegrityError), runtime.db.write() as session:
        # Indexing the row again repeats its postings' primary keys.
        index_inserted(session.connection(), dtu)
    with runtime.db.read() as session:
        assert session.scalar(select(func.count()).select_from(EntityTag)) == before
        assert session.scalar(select(func.sum(BrowseCount.count))) == counted


def test_edits_write_full_versions_and_stale_edits_conflict(gql: GraphQL, runtime: Runtime) -> None:
    v1 = create(gql, title="Draft", tags=["a"], human={"summary": "first"})
    v2 = edit(gql, v1, title="Second draft", human={"summary": "second", "bullets": ["b1"]})
    v3 = edit(gql, v2, tags=["B", "c"], tier="MEGA")
    v4 = edit(gql, v3, machine={"score": 4}, type="essay")
    assert [v["version"] for v in (v1, v2, v3, v4)] == [1, 2, 3, 4]
    # An edit changes only what it sends.
    assert v3["title"] == "Second draft" and v3["human"]["bullets"] == ["b1"] and v3["tags"] == ["b", "c"]
    assert v4["tier"] == "MEGA" and v4["tags"] == ["b", "c"]
    assert v2["contentHash"] != v1["contentHash"]
    assert v3["contentHash"] == v2["contentHash"]  # tags and tier are not content

    history = fetch(gql, v1["id"])["history"]
    assert [(h["version"], h["change"]) for h in history] == [
        (1, "created"),
        (2, "edited"),
        (3, "edited"),
        (4, "edited"),
    ]
    for entry, state in zip(history, (v1, v2, v3, v4), strict=True):
        for name in (
            "title",
            "human",
            "core",
            "machine",
            "tags",
            "tier",
            "type",
            "visibility",
            "contentHash",
        ):
            assert entry[name] == state[name], (entry["version"], name)

    # The stored rows are full copies, and each edit's event carries the state it produced.
    key = key_of(v1["id"])
    with runtime.db.read() as session:
        rows = session.scalars(
            select(DtuVersion).where(DtuVersion.dtu_id == key).order_by(DtuVersion.version)
        )
        versions = [dtu_version_snapshot(r) for r in rows]
    events = events_of(runtime, key)
    assert [e.event_type for e in events] == ["DTU_CREATED", "DTU_EDITED", "DTU_EDITED", "DTU_EDITED"]
    for version, event in zip(versions, events, strict=True):
        assert event.payload["dtu"]["version"] == version["version"]
        assert event.payload["dtu"]["title"] == version["title"]
        assert event.payload["dtu"]["tags"] == version["tags"]
        assert version["actor_id"] == runtime.local_owner_id

    # A stale edit (someone else saved version 4 first) is a conflict and writes nothing.
    before = row_counts(runtime)
    for expected in (3, 7):
        variables = {"input": {"id": v1["id"], "expectedVersion": expected, "title": "Overwrite"}}
        stale = gql.run(EDIT, variables)["editDtu"]
        assert stale["dtu"] is None
        assert errors_of(stale) == [("expectedVersion", "CONFLICT")]
        assert "version 4" in stale["errors"][0]["message"]
    assert row_counts(runtime) == before
    current = fetch(gql, v1["id"])
    assert (current["title"], current["version"], current["contentHash"]) == (
        "Second draft",
        4,
        v4["contentHash"],
    )
    assert len(current["history"]) == 4
    # Reloading and retrying with the current version works.
    assert edit(gql, current, title="Overwrite")["version"] == 5


def test_citation_modes(gql: GraphQL, runtime: Runtime) -> None:
    source = create(gql, title="Source")
    other = create(gql, title="Other source")
    before = row_counts(runtime)

    def refused(variables: dict[str, Any], mutation: str = CREATE) -> list[tuple[str | None, str]]:
        body = gql.run(mutation, variables)
        payload = next(iter(body.values()))
        assert payload["dtu"] is None
        return errors_of(payload)

    assert refused({"input": {"title": "x", "citationMode": "ORIGINAL", "citations": [source["id"]]}}) == [
        ("citations", "VALIDATION")
    ]
    assert refused({"input": {"title": "x", "citationMode": "DERIVATIVE"}}) == [("citations", "VALIDATION")]
    assert refused({"input": {"title": "x", "citationMode": "DERIVATIVE", "citations": []}}) == [
        ("citations", "VALIDATION")
    ]
    unknown = global_id("Dtu", str(uuid.uuid4()))
    assert refused(
        {"input": {"title": "x", "citationMode": "CITING", "citations": [source["id"], unknown]}}
    ) == [("citations.1", "NOT_FOUND")]
    assert refused({"input": {"title": "x", "citationMode": "CITING", "citations": ["%%garbage%%"]}}) == [
        ("citations.0", "NOT_FOUND")
    ]
    not_a_dtu = global_id("Artifact", key_of(source["id"]))
    assert refused({"input": {"title": "x", "citationMode": "CITING", "citations": [not_a_dtu]}}) == [
        ("citations.0", "NOT_FOUND")
    ]
    assert refused(
        {"input": {"title": "x", "citationMode": "CITING", "citations": [source["id"], source["id"]]}}
    ) == [("citations", "VALIDATION")]
    assert row_counts(runtime) == before

    derived = create(gql, title="Derived", citationMode="DERIVATIVE", citations=[source["id"], other["id"]])
    assert [c["id"] for c in derived["citations"]] == [source["id"], other["id"]]
    citing_nothing = create(gql, title="Free", citationMode="CITING")
    assert citing_nothing["citations"] == []

    # Self-citation is refused on edit (the only time a DTU's own ID is known).
    self_cite = {
        "input": {
            "id": derived["id"],
            "expectedVersion": 1,
            "citations": [source["id"], derived["id"]],
        }
    }
    assert ("citations", "VALIDATION") in refused(self_cite, EDIT)
    # Dropping every citation of a derivative is refused too; switching modes is allowed.
    drop_all = {"input": {"id": derived["id"], "expectedVersion": 1, "citations": []}}
    assert refused(drop_all, EDIT) == [("citations", "VALIDATION")]
    derived_v2 = edit(gql, derived, citationMode="CITING", citations=[other["id"]])
    assert [c["id"] for c in derived_v2["citations"]] == [other["id"]]
    history = fetch(gql, derived["id"])["history"]
    assert [h["citationIds"] for h in history] == [[source["id"], other["id"]], [other["id"]]]

    with runtime.db.read() as session:
        links = session.execute(
            select(DtuCitation.cited_id).where(DtuCitation.citing_id == key_of(derived["id"]))
        ).scalars()
        assert sorted(links) == [key_of(other["id"])]

    # Citing a DTU the author cannot read is refused as if it did not exist (operators, as a second user).
    owner = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    with runtime.db.write() as session:
        other_user = create_user(session, email="b@example.org", display_name="B").id
    someone = runtime.operation_context(runtime.principal_for_user(other_user))
    private = dtu_ops.create_dtu(owner, {"title": "Owner's private note"})
    public = dtu_ops.create_dtu(owner, {"title": "Owner's public note", "visibility": "public"})
    before_other = row_counts(runtime)

    with pytest.raises(OperatorError) as denied:
        dtu_ops.create_dtu(
            someone, {"title": "mine", "citation_mode": "citing", "citations": [public.id, private.id]}
        )
    assert [(e.field, e.code) for e in denied.value.errors] == [("citations.1", ErrorCode.NOT_FOUND)]
    assert row_counts(runtime) == before_other

    mine = dtu_ops.create_dtu(
        someone, {"title": "mine", "citation_mode": "derivative", "citations": [public.id]}
    )
    assert mine.citations == [public.id]
    assert mine.owner_id == other_user


def test_merge_keeps_lineage(gql: GraphQL, runtime: Runtime) -> None:
    cited = create(gql, title="Background")
    target = create(
        gql,
        title="Main idea",
        tags=["a", "shared"],
        human={"summary": "", "bullets": ["x", "y"]},
        core={"claims": ["c1"]},
        machine={"k": "target"},
    )
    first = create(
        gql,
        title="Duplicate 1",
        tags=["b", "shared"],
        human={"summary": "from first", "bullets": ["y", "z"]},
        core={"claims": ["c2"]},
        machine={"k": "first", "only_first": 1},
        citationMode="CITING",
        citations=[cited["id"]],
    )
    second = create(gql, title="Duplicate 2", tags=["c"], human={"bullets": ["w"]})

    payload = gql.run(MERGE, {"targetId": target["id"], "sourceIds": [first["id"], second["id"]]})[
        "mergeDtus"
    ]
    assert payload["errors"] == []
    merged = payload["dtu"]
    assert merged["id"] == target["id"] and merged["version"] == 2 and merged["status"] == "active"
    assert merged["title"] == "Main idea"
    assert merged["tags"] == ["a", "b", "c", "shared"]
    assert merged["human"]["bullets"] == ["x", "y", "z", "w"]
    assert merged["human"]["summary"] == "from first"
    assert merged["core"]["claims"] == ["c1", "c2"]
    assert merged["machine"] == {"k": "target", "only_first": 1}
    assert [c["id"] for c in merged["citations"]] == [cited["id"]]

    for source in (first, second):
        after = fetch(gql, source["id"])
        assert after["status"] == "merged"
        assert after["mergedIntoId"] == target["id"]
        assert after["version"] == source["version"] + 1
        assert after["title"] == source["title"]  # the source keeps its own content
        assert [h["change"] for h in after["history"]] == ["created", "merged_away"]
    assert [h["change"] for h in fetch(gql, target["id"])["history"]] == ["created", "merged"]

    target_events = events_of(runtime, key_of(target["id"]))
    assert target_events[-1].event_type == "DTU_MERGED"
    assert target_events[-1].payload["merged_from"] == [key_of(first["id"]), key_of(second["id"])]
    for source in (first, second):
        last = events_of(runtime, key_of(source["id"]))[-1]
        assert last.event_type == "DTU_MERGED_AWAY"
        assert last.payload["merged_into"] == key_of(target["id"])
        assert last.payload["dtu"]["status"] == "merged"
        assert last.request_id == target_events[-1].request_id  # one request, one transaction

    # A merged DTU is closed: editing it or merging it again is a conflict, and writes nothing.
    before = row_counts(runtime)
    stale = gql.run(EDIT, {"input": {"id": first["id"], "expectedVersion": 2, "title": "revive"}})["editDtu"]
    assert errors_of(stale) == [("id", "CONFLICT")]
    again = gql.run(MERGE, {"targetId": target["id"], "sourceIds": [second["id"]]})["mergeDtus"]
    assert errors_of(again) == [("sourceIds.0", "CONFLICT")]
    into_self = gql.run(MERGE, {"targetId": target["id"], "sourceIds": [target["id"]]})["mergeDtus"]
    assert errors_of(into_self) == [("sourceIds", "VALIDATION")]
    nothing = gql.run(MERGE, {"targetId": target["id"], "sourceIds": []})["mergeDtus"]
    assert errors_of(nothing) == [("sourceIds", "VALIDATION")]
    assert row_counts(runtime) == before


def test_dedupe_merges_identical_content(gql: GraphQL, runtime: Runtime) -> None:
    content = {"title": "Same", "human": {"summary": "same words", "bullets": ["one"]}, "type": "note"}
    original = create(gql, **content, tags=["first"])
    copy = create(gql, **content, tags=["second"], tier="MEGA")  # tags and tier are not content
    third = create(gql, **content, visibility="WORKSPACE")
    different = create(gql, title="Same", human={"summary": "other words", "bullets": ["one"]})
    pair_a = create(gql, title="Pair", machine={"n": 1})
    pair_b = create(gql, title="Pair", machine={"n": 1})
    assert original["contentHash"] == copy["contentHash"] == third["contentHash"] != different["contentHash"]

    before = row_counts(runtime)
    preview = gql.run(DEDUPE, {"dryRun": True})["dedupeDtus"]
    assert preview["errors"] == []
    groups = sorted((g["kept"], sorted(g["merged"])) for g in preview["groups"])
    assert groups == sorted(
        [
            (original["id"], sorted([copy["id"], third["id"]])),
            (pair_a["id"], [pair_b["id"]]),
        ]
    )
    assert row_counts(runtime) == before  # a dry run writes nothing at all
    assert fetch(gql, copy["id"])["status"] == "active"

    done = gql.run(DEDUPE, {"dryRun": False})["dedupeDtus"]
    assert sorted((g["kept"], sorted(g["merged"])) for g in done["groups"]) == groups
    kept = fetch(gql, original["id"])
    assert kept["tags"] == ["first", "second"]
    assert kept["status"] == "active" and kept["version"] == 2
    for dup in (copy, third):
        after = fetch(gql, dup["id"])
        assert (after["status"], after["mergedIntoId"]) == ("merged", original["id"])
    assert fetch(gql, different["id"])["status"] == "active"
    assert fetch(gql, pair_b["id"])["mergedIntoId"] == pair_a["id"]

    # Nothing is left to dedupe.
    assert gql.run(DEDUPE, {"dryRun": False})["dedupeDtus"]["groups"] == []


def test_export_writes_a_json_artifact(gql: GraphQL, client: TestClient, runtime: Runtime) -> None:
    first = create(gql, **FULL)
    edit(gql, first, title="Tension, release")
    second = create(gql, title="Second", citationMode="CITING", citations=[first["id"]])

    payload = gql.run(EXPORT, {"ids": [first["id"], second["id"]]})["exportDtus"]
    assert payload["errors"] == []
    artifact, version = payload["artifact"], payload["version"]
    assert (artifact["kind"], artifact["currentVersion"]) == ("EXPORT", 1)
    assert (version["label"], version["mediaType"]) == ("export", "application/json")

    response = client.get(version["downloadUrl"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = json.loads(response.content)
    assert document["format"] == "concord.dtus.v1"
    entries = document["dtus"]
    assert [e["dtu"]["id"] for e in entries] == [key_of(first["id"]), key_of(second["id"])]
    with runtime.db.read() as session:
        for entry in entries:
            row = session.get(Dtu, entry["dtu"]["id"])
            assert row is not None
            assert entry["dtu"] == dtu_snapshot(row)
            stored = session.scalars(
                select(DtuVersion).where(DtuVersion.dtu_id == row.id).order_by(DtuVersion.version)
            )
            assert entry["versions"] == [dtu_version_snapshot(v) for v in stored]
    assert [v["title"] for v in entries[0]["versions"]] == ["Tension and release", "Tension, release"]
    assert entries[1]["dtu"]["citations"] == [key_of(first["id"])]

    # Without history, only the current state is exported.
    bare = gql.run(EXPORT, {"ids": [second["id"]], "withHistory": False})["exportDtus"]
    only = json.loads(client.get(bare["version"]["downloadUrl"]).content)["dtus"]
    assert only == [{"dtu": entries[1]["dtu"]}]

    # Exporting something unknown is refused before anything is stored.
    before = row_counts(runtime)
    missing = gql.run(EXPORT, {"ids": [second["id"], global_id("Dtu", str(uuid.uuid4()))]})["exportDtus"]
    assert missing["artifact"] is None
    assert errors_of(missing) == [("ids.1", "NOT_FOUND")]
    assert errors_of(gql.run(EXPORT, {"ids": []})["exportDtus"]) == [("ids", "VALIDATION")]
    assert row_counts(runtime) == before


def test_publish_checks(gql: GraphQL, runtime: Runtime) -> None:
    empty = create(gql, title="Only a title")
    before = row_counts(runtime)
    for visibility in ("PUBLIC", "UNLISTED"):
        refused = gql.run(PUBLISH, {"id": empty["id"], "visibility": visibility})["publishDtu"]
        assert refused["dtu"] is None
        assert errors_of(refused) == [("id", "VALIDATION")]
    assert row_counts(runtime) == before
    # Sharing with the workspace has no such check.
    shared = gql.run(PUBLISH, {"id": empty["id"], "visibility": "WORKSPACE"})["publishDtu"]
    assert shared["errors"] == [] and shared["dtu"]["visibility"] == "WORKSPACE"

    basis = create(gql, title="Basis", core={"definitions": ["a basis"]})
    claim = create(
        gql, title="Claim", human={"summary": "it holds"}, citationMode="DERIVATIVE", citations=[basis["id"]]
    )
    before = row_counts(runtime)
    blocked = gql.run(PUBLISH, {"id": claim["id"], "visibility": "PUBLIC"})["publishDtu"]
    assert errors_of(blocked) == [("id", "VALIDATION")]
    assert "cites" in blocked["errors"][0]["message"]
    assert row_counts(runtime) == before

    published_basis = gql.run(PUBLISH, {"id": basis["id"], "visibility": "PUBLIC"})["publishDtu"]
    assert published_basis["errors"] == []
    assert (published_basis["dtu"]["visibility"], published_basis["dtu"]["version"]) == ("PUBLIC", 2)
    published = gql.run(PUBLISH, {"id": claim["id"], "visibility": "PUBLIC"})["publishDtu"]
    assert published["errors"] == [] and published["dtu"]["visibility"] == "PUBLIC"

    history = fetch(gql, claim["id"])["history"]
    assert [(h["change"], h["visibility"]) for h in history] == [
        ("created", "PRIVATE"),
        ("published", "PUBLIC"),
    ]
    last = events_of(runtime, key_of(claim["id"]))[-1]
    assert last.event_type == "DTU_PUBLISHED"
    assert last.payload["previous_visibility"] == "private"
    assert last.payload["dtu"]["visibility"] == "public"
