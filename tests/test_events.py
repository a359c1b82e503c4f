"""The event log and the audit log: request ids carried from the HTTP header into events and audit rows,
the hash chain (and `concord events verify` finding tampering), `concord replay --verify`, and sequence =
commit order when many threads write at once. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from concord_core.api.runtime import Runtime
from concord_core.cli.main import main
from concord_core.db.models import AuditEntry, DtuVersion, Event
from concord_core.events.log import verify_chain
from concord_core.events.replay import verify_replay
from concord_core.observability.context import bind
from concord_core.operators import dtus as dtu_ops

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
