"""The event log and the audit log: request ids carried from the HTTP header into events and audit rows,
the hash chain (and `concord events verify` finding tampering), `concord replay --verify`, and the log's
order when many threads write at once. Every test runs on SQLite and PostgreSQL; the tests of events
staged in the outbox (PostgreSQL's way past the commit floor, `concord_core.events.log`) skip SQLite,
which serializes writers and never stages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from concord_core.api.runtime import Runtime
from concord_core.cli.main import main
from concord_core.db.engine import Database
from concord_core.db.models import AuditEntry, DtuVersion, Event, EventOutbox
from concord_core.events.log import CHAIN_LOCK, append_event, seal_pending, verify_chain
from concord_core.events.replay import verify_replay
from concord_core.observability.context import bind
from concord_core.operators import dtus as dtu_ops
from concord_core.operators.errors import OperatorError

MUTATIONS = {
    "create": "mutation($i: CreateDtuInput!) { createDtu(input: $i) { dtu { id version } errors { code } } }",
    "edit": "mutation($i: EditDtuInput!) { editDtu(input: $i) { dtu { id version } errors { code } } }",
    "publish": "mutation($id: ID!) "
    "{ publishDtu(id: $id, visibility: PUBLIC) { dtu { id } errors { code } } }",
    "merge": "mutation($t: ID!, $s: [ID!]!) "
    "{ mergeDtus(targetId: $t, sourceIds: $s) { dtu { id } errors { code } } }",
    "dedupe": "mutation { dedupeDtus { groups { kept merged } errors { code } } }",
    "export": "mutation($ids: [ID!]!) { exportDtus(ids: $ids) { artifact { id } errors { code } } }",
    "upload": "mutation($i: CreateArtifactInput!, $file: Upload!) "
    "{ createArtifact(input: $i, file: $file) { artifact { id } errors { code } } }",
    "new_version": "mutation($i: UploadArtifactVersionInput!, $file: Upload!) "
    "{ uploadArtifactVersion(input: $i, file: $file) { version { version } errors { code } } }",
    "publish_artifact": "mutation($id: ID!) "
    "{ publishArtifact(id: $id, visibility: UNLISTED) { artifact { id } errors { code } } }",
}


def mutate(client: TestClient, name: str, variables: dict[str, Any], request_id: str) -> dict[str, Any]:
    response = client.post(
        "/graphql",
        json={"query": MUTATIONS[name], "variables": variables},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    body = response.json()
    assert not body.get("errors"), body
    payload: dict[str, Any] = next(iter(body["data"].values()))
    return payload


def upload(
    client: TestClient, name: str, variables: dict[str, Any], content: bytes, request_id: str
) -> dict[str, Any]:
    operations = json.dumps({"query": MUTATIONS[name], "variables": {**variables, "file": None}})
    response = client.post(
        "/graphql",
        data={"operations": operations, "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("f.txt", content, "text/plain")},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    payload: dict[str, Any] = next(iter(response.json()["data"].values()))
    assert payload["errors"] == [], payload
    return payload


def last_seq(runtime: Runtime) -> int:
    with runtime.db.read() as session:
        return session.scalar(select(func.max(Event.seq))) or 0


def run_mix(client: TestClient) -> dict[str, str]:
    """One of every mutation, each under its own request id. Returns the ids of what it made."""
    a = mutate(client, "create", {"i": {"title": "A", "human": {"summary": "a"}}}, "rid-create-a")["dtu"]
    b = mutate(client, "create", {"i": {"title": "B"}}, "rid-create-b")["dtu"]
    dup = mutate(client, "create", {"i": {"title": "B"}}, "rid-create-dup")["dtu"]
    c = mutate(client, "create", {"i": {"title": "C"}}, "rid-create-c")["dtu"]
    mutate(client, "edit", {"i": {"id": a["id"], "expectedVersion": 1, "tags": ["x"]}}, "rid-edit")
    mutate(client, "publish", {"id": a["id"]}, "rid-publish")
    mutate(client, "merge", {"t": a["id"], "s": [c["id"]]}, "rid-merge")
    groups = mutate(client, "dedupe", {}, "rid-dedupe")["groups"]
    assert groups == [{"kept": b["id"], "merged": [dup["id"]]}]
    export = mutate(client, "export", {"ids": [a["id"], b["id"]]}, "rid-export")["artifact"]
    art = upload(client, "upload", {"i": {"name": "notes"}}, b"v1", "rid-upload")["artifact"]
    upload(
        client, "new_version", {"i": {"artifactId": art["id"], "label": "processed"}}, b"v2", "rid-version"
    )
    mutate(client, "publish_artifact", {"id": art["id"]}, "rid-publish-artifact")
    return {
        "a": a["id"],
        "b": b["id"],
        "c": c["id"],
        "dup": dup["id"],
        "artifact": art["id"],
        "export": export["id"],
    }


EXPECTED_EVENTS = {
    "rid-create-a": ["DTU_CREATED"],
    "rid-create-b": ["DTU_CREATED"],
    "rid-create-dup": ["DTU_CREATED"],
    "rid-create-c": ["DTU_CREATED"],
    "rid-edit": ["DTU_EDITED"],
    "rid-publish": ["DTU_PUBLISHED"],
    "rid-merge": ["DTU_MERGED", "DTU_MERGED_AWAY"],
    "rid-dedupe": ["DTU_MERGED", "DTU_MERGED_AWAY"],
    "rid-export": ["ARTIFACT_CREATED", "ARTIFACT_UPLOADED"],
    "rid-upload": ["ARTIFACT_CREATED", "ARTIFACT_UPLOADED"],
    "rid-version": ["ARTIFACT_UPLOADED"],
    "rid-publish-artifact": ["ARTIFACT_PUBLISHED"],
}
EXPECTED_AUDIT = {
    "rid-create-a": ("dtu.create", "dtu"),
    "rid-create-b": ("dtu.create", "dtu"),
    "rid-create-dup": ("dtu.create", "dtu"),
    "rid-create-c": ("dtu.create", "dtu"),
    "rid-edit": ("dtu.edit", "dtu"),
    "rid-publish": ("dtu.publish", "dtu"),
    "rid-merge": ("dtu.merge", "dtu"),
    "rid-dedupe": ("dtu.dedupe", "workspace"),
    "rid-export": ("dtu.export", "artifact"),
    "rid-upload": ("artifact.create", "artifact"),
    "rid-version": ("artifact.upload", "artifact"),
    "rid-publish-artifact": ("artifact.publish", "artifact"),
}


def test_every_mutation_records_events_and_audit_under_its_request_id(
    client: TestClient, runtime: Runtime
) -> None:
    start = last_seq(runtime)
    run_mix(client)
    # A refused mutation records nothing under its request id.
    refused = mutate(client, "edit", {"i": {"id": "bm90IGEgZHR1", "expectedVersion": 1}}, "rid-refused")
    assert refused["errors"] == [{"code": "NOT_FOUND"}]

    with runtime.db.read() as session:
        events = session.scalars(select(Event).where(Event.seq > start).order_by(Event.seq)).all()
        audit = session.scalars(select(AuditEntry).where(AuditEntry.request_id.like("rid-%"))).all()
        assert verify_chain(session).ok

    assert [e.seq for e in events] == list(range(start + 1, start + 1 + len(events)))
    by_request: dict[str, list[str]] = {}
    for event in events:
        assert event.request_id is not None
        by_request.setdefault(event.request_id, []).append(event.event_type)
        assert event.actor_id == runtime.local_owner_id
        assert event.workspace_id is not None
    assert by_request == EXPECTED_EVENTS

    assert {row.request_id: (row.action, row.target_type) for row in audit} == EXPECTED_AUDIT
    assert len(audit) == len(EXPECTED_AUDIT)  # one audit row per mutation, none for the refused one
    for row in audit:
        assert row.actor_id == runtime.local_owner_id
        assert row.outcome == "allowed"
        assert row.client_addr == "testclient:50000"
        assert row.target_id
        assert row.workspace_id
    # The audit target of an edit is the DTU that was edited, as its events say.
    edit_event = next(e for e in events if e.request_id == "rid-edit")
    edit_audit = next(r for r in audit if r.request_id == "rid-edit")
    assert edit_audit.target_id == edit_event.entity_id


@pytest.fixture
def concord(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path
) -> Callable[..., tuple[int, str]]:
    """Run the `concord` command in-process against the test database; returns (exit code, output)."""
    monkeypatch.setenv("CONCORD_DATABASE_URL", database_url)
    monkeypatch.setenv("CONCORD_STORAGE_URL", str(tmp_path / "objects"))
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path))

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def test_verify_and_replay_find_tampering(
    client: TestClient, runtime: Runtime, concord: Callable[..., tuple[int, str]], subtests: Any
) -> None:
    run_mix(client)
    code, out = concord("events", "verify")
    assert code == 0, out
    total = last_seq(runtime)
    assert f"intact: {total} events" in out
    table = Event.__table__
    with runtime.db.read() as session:
        originals = {row.seq: dict(row._mapping) for row in session.execute(select(table))}
    victim = total // 2

    def restore() -> None:
        with runtime.db.write() as session:
            session.execute(delete(table).where(table.c.seq.in_([victim, total])))
            session.execute(insert(table), [originals[victim], originals[total]])
        assert concord("events", "verify")[0] == 0

    cases: dict[str, tuple[Any, int, str]] = {
        "payload edited": (
            update(table).where(table.c.seq == victim).values(payload={"dtu": {"title": "forged"}}),
            victim,
            "altered",
        ),
        "actor edited": (
            update(table).where(table.c.seq == victim).values(actor_id="someone-else"),
            victim,
            "altered",
        ),
        "hash edited": (update(table).where(table.c.seq == victim).values(hash="f" * 64), victim, "altered"),
        "row deleted": (
            delete(table).where(table.c.seq == victim),
            victim + 1,
            f"expected sequence {victim}",
        ),
        "last row deleted": (delete(table).where(table.c.seq == total), total, "truncated"),
    }
    for name, (statement, broken_at, reason) in cases.items():
        with subtests.test(name):
            with runtime.db.write() as session:
                session.execute(statement)
            code, out = concord("events", "verify")
            assert code == 1, out
            assert f"BROKEN at sequence {broken_at}" in out
            assert reason in out
            restore()

    # `concord replay --verify` rebuilds the tables from the events and finds rows changed behind its back.
    code, out = concord("replay", "--verify")
    assert code == 0, out
    assert "replay matches the tables" in out
    assert concord("replay")[0] == 2  # without --verify it only explains itself

    versions = DtuVersion.__table__
    with runtime.db.read() as session:
        dtu_key = session.scalar(text("SELECT id FROM dtus WHERE title = 'B' AND status = 'active'"))
        first_version = dict(
            session.execute(select(versions).where(versions.c.dtu_id == dtu_key, versions.c.version == 1))
            .one()
            ._mapping
        )
        size = session.scalar(text("SELECT size FROM artifact_versions WHERE label = 'processed'"))

    def sql(statement: str) -> Callable[[Session], object]:
        return lambda session: session.execute(text(statement), {"id": dtu_key})

    replay_cases: dict[str, tuple[Callable[[Session], object], Callable[[Session], object], list[str]]] = {
        "dtu title changed": (
            sql("UPDATE dtus SET title = 'tampered' WHERE id = :id"),
            sql("UPDATE dtus SET title = 'B' WHERE id = :id"),
            [f"dtu:{dtu_key}: field 'title'", "'tampered'"],
        ),
        "dtu version row deleted": (
            sql("DELETE FROM dtu_versions WHERE dtu_id = :id AND version = 1"),
            lambda session: session.execute(insert(versions), [first_version]),
            [f"dtu_version:{dtu_key}:1", "the table has no such row"],
        ),
        "artifact version size changed": (
            sql("UPDATE artifact_versions SET size = size + 1 WHERE label = 'processed'"),
            sql("UPDATE artifact_versions SET size = size - 1 WHERE label = 'processed'"),
            ["artifact_version:", "field 'size'", f"table has {size + 1}"],
        ),
    }
    for name, (tamper, undo, expected) in replay_cases.items():
        with subtests.test(name):
            with runtime.db.write() as session:
                tamper(session)
            code, out = concord("replay", "--verify")
            assert code == 1, out
            assert "replay DIFFERS" in out
            for fragment in expected:
                assert fragment in out
            with runtime.db.write() as session:
                undo(session)
            assert concord("replay", "--verify")[0] == 0


def test_sequence_is_commit_order_under_concurrency(runtime: Runtime) -> None:
    ctx = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    threads, each = 8, 6
    start = last_seq(runtime)
    barrier = threading.Barrier(threads + 1)
    finished = threading.Event()
    failures: list[BaseException] = []
    gaps: list[tuple[int, list[int]]] = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(each):
                with bind(request_id=f"writer-{n}-{i}"):
                    dtu_ops.create_dtu(ctx, {"title": f"{n}-{i}", "tags": [f"w{n}"]})
        except BaseException as exc:
            failures.append(exc)

    def tail() -> None:
        # A reader following the log by sequence must never see a later event before an earlier one.
        cursor = start
        try:
            barrier.wait()
            while True:
                done = finished.is_set()
                with runtime.db.read() as session:
                    seqs = list(
                        session.scalars(select(Event.seq).where(Event.seq > cursor).order_by(Event.seq))
                    )
                if seqs:
                    if seqs != list(range(cursor + 1, cursor + 1 + len(seqs))):
                        gaps.append((cursor, seqs))
                    cursor = seqs[-1]
                if done:
                    break
                time.sleep(0.001)  # leave the writers the CPU; a gap would still show up on the next read
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    reader = threading.Thread(target=tail)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join(60)
    finished.set()
    reader.join(60)
    assert not any(t.is_alive() for t in [*workers, reader]), "deadlock"
    assert failures == []
    assert gaps == []

    with runtime.db.read() as session:
        events = session.scalars(select(Event).where(Event.seq > start).order_by(Event.seq)).all()
        assert verify_chain(session).ok
        assert verify_replay(session).ok
    assert [e.seq for e in events] == list(range(start + 1, start + 1 + threads * each))
    # Each event carries the request id of the thread that made it, not a neighbour's.
    for event in events:
        n, i = event.payload["dtu"]["title"].split("-")
        assert event.request_id == f"writer-{n}-{i}"


# --- events staged in the outbox (PostgreSQL) --------------------------------------------------------


#: SQLite serializes writers itself, so an event is never staged there: these tests run on PostgreSQL only.
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


@contextmanager
def chain_held(db: Database) -> Iterator[None]:
    """Hold the chain lock from a connection of the test's own: meanwhile every append is staged, and
    every seal waits."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": CHAIN_LOCK})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CHAIN_LOCK})


def outbox_size(db: Database) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(EventOutbox)) or 0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def dtu_version(db: Database, dtu_id: str) -> int:
    with db.read() as session:
        return int(session.scalar(text("SELECT version FROM dtus WHERE id = :id"), {"id": dtu_id}))


@postgres_only
def test_staged_edits_keep_their_order_and_are_in_the_log_when_the_write_returns(runtime: Runtime) -> None:
    db = runtime.db
    ctx = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    dtu = dtu_ops.create_dtu(ctx, {"title": "v1"})  # chain free, outbox empty: appended directly
    assert outbox_size(db) == 0
    failures: list[BaseException] = []
    logged_on_return: dict[str, bool] = {}

    def edit(version: int) -> None:
        request_id = f"edit-to-{version + 1}"
        try:
            with bind(request_id=request_id):
                dtu_ops.edit_dtu(ctx, {"id": dtu.id, "expected_version": version, "title": f"v{version + 1}"})
            with db.read() as session:
                logged_on_return[request_id] = (
                    session.scalar(select(func.count()).where(Event.request_id == request_id)) == 1
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=edit, args=(version,)) for version in (1, 2)]
    with chain_held(db):
        # The first edit commits (its event staged), then waits to seal; the second reads what the first
        # committed, before that is sealed, and stages its own event after it.
        threads[0].start()
        wait_until(lambda: dtu_version(db, dtu.id) == 2 and outbox_size(db) == 1, "the first edit's commit")
        threads[1].start()
        wait_until(lambda: dtu_version(db, dtu.id) == 3 and outbox_size(db) == 2, "the second edit's commit")
        # Neither write has returned: a write returns once its events are in the log.
        assert all(thread.is_alive() for thread in threads)
        with db.read() as session:
            assert session.scalar(select(func.count()).where(Event.entity_id == dtu.id)) == 1
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a write never returned"
    assert failures == []
    assert logged_on_return == {"edit-to-2": True, "edit-to-3": True}
    assert outbox_size(db) == 0
    with db.read() as session:
        events = session.scalars(select(Event).where(Event.entity_id == dtu.id).order_by(Event.seq)).all()
        assert [(e.event_type, e.payload["dtu"]["version"]) for e in events] == [
            ("DTU_CREATED", 1),
            ("DTU_EDITED", 2),
            ("DTU_EDITED", 3),
        ]
        assert verify_chain(session).ok
        assert verify_replay(session).ok


def test_concurrent_edits_of_one_dtu_appear_in_version_order(runtime: Runtime) -> None:
    """Writers edit the same DTUs as fast as they can, so appends go direct and staged at random; in the
    log every DTU's versions still come in order, and replay rebuilds the tables."""
    ctx = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    dtus = [dtu_ops.create_dtu(ctx, {"title": f"shared {n}"}).id for n in range(2)]
    threads, edits = 6, 8
    failures: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            done = 0
            while done < edits:
                dtu_id = dtus[(n + done) % len(dtus)]
                try:
                    version = dtu_version(runtime.db, dtu_id)
                    dtu_ops.edit_dtu(
                        ctx, {"id": dtu_id, "expected_version": version, "title": f"w{n} e{done}"}
                    )
                    done += 1
                except OperatorError:  # another writer got there first: reload and retry
                    continue
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    assert not any(thread.is_alive() for thread in workers), "deadlock"
    assert failures == []
    assert outbox_size(runtime.db) == 0
    with runtime.db.read() as session:
        for dtu_id in dtus:
            versions = [
                event.payload["dtu"]["version"]
                for event in session.scalars(
                    select(Event).where(Event.entity_id == dtu_id).order_by(Event.seq)
                )
            ]
            assert versions == list(range(1, len(versions) + 1)), versions
        assert sum(dtu_version(runtime.db, dtu_id) - 1 for dtu_id in dtus) == threads * edits
        assert verify_chain(session).ok
        assert verify_replay(session).ok


def stage_without_sealing(db: Database, n: int) -> None:
    """Commit an event into the outbox and never seal it, as a process killed right after its commit
    would (a session outside ``Database.write`` has no after-commit seal)."""
    with chain_held(db), Session(db.engine) as session, session.begin():
        staged = append_event(
            session, event_type="TEST_LEFT_BEHIND", entity_type="test", entity_id=str(n), payload={"n": n}
        )
        assert staged is None


@postgres_only
def test_events_left_in_the_outbox_are_sealed_before_checks_and_by_maintenance(
    runtime: Runtime, concord: Callable[..., tuple[int, str]]
) -> None:
    db = runtime.db
    dtu_ops.create_dtu(
        runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or "")), {"title": "x"}
    )
    before = last_seq(runtime)

    stage_without_sealing(db, 1)
    assert (outbox_size(db), last_seq(runtime)) == (1, before)
    code, out = concord("events", "verify")
    assert code == 0, out
    assert f"intact: {before + 1} events" in out
    assert outbox_size(db) == 0

    stage_without_sealing(db, 2)
    code, out = concord("replay", "--verify")
    assert code == 0, out
    assert (outbox_size(db), last_seq(runtime)) == (0, before + 2)

    stage_without_sealing(db, 3)
    stage_without_sealing(db, 4)
    runtime.jobs.maintenance.sweep()
    assert (outbox_size(db), last_seq(runtime)) == (0, before + 4)
    assert seal_pending(db) == 0  # nothing left
    with db.read() as session:
        tail = session.scalars(select(Event).where(Event.seq > before).order_by(Event.seq)).all()
        assert [event.payload["n"] for event in tail] == [1, 2, 3, 4]
        assert verify_chain(session).ok


@postgres_only
def test_a_write_inside_another_seals_after_the_outer_one(runtime: Runtime) -> None:
    """The outer transaction appends directly and keeps the chain lock until it ends; a write opened inside
    it stages, and its seal (which would wait for that lock forever) runs once the outer write is done."""
    db = runtime.db
    failures: list[BaseException] = []
    paths: list[str] = []

    def nested() -> None:
        try:
            with db.write() as outer:
                direct = append_event(
                    outer, event_type="TEST_OUTER", entity_type="test", entity_id="o", payload={}
                )
                paths.append("direct" if direct is not None else "staged")
                with db.write() as inner:
                    staged = append_event(
                        inner, event_type="TEST_INNER", entity_type="test", entity_id="i", payload={}
                    )
                    paths.append("direct" if staged is not None else "staged")
                assert outbox_size(db) == 1  # committed, not sealed yet
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=nested)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the inner write waited for the outer one's chain lock"
    assert failures == []
    assert paths == ["direct", "staged"]
    assert outbox_size(db) == 0
    with db.read() as session:
        types = session.scalars(
            select(Event.event_type).where(Event.entity_type == "test").order_by(Event.seq)
        )
        assert list(types) == ["TEST_OUTER", "TEST_INNER"]
        assert verify_chain(session).ok
