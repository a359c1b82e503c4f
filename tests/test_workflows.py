"""Workflows (plan D2), on SQLite and PostgreSQL: the DTU import (Import → Clean → Tag → (Review) → Sync),
a JSON export that round-trips through it, review steps, resuming from the last completed step, a sync
killed halfway that creates no duplicates, access, and the workflowUpdated subscription."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL, make_settings
from fastapi.testclient import TestClient
from jobs_support import new_user, open_runtime, owner_ops, wait_for
from sqlalchemy import func, select

from concord_core.api.app import create_app
from concord_core.api.gql.ids import to_global_id
from concord_core.api.runtime import Runtime
from concord_core.db.models import ArtifactVersion, Dtu, JobRun, LensItem, Workflow, WorkflowStep
from concord_core.jobs import dtu_import
from concord_core.jobs.catalog import JobCatalog, JobSpec
from concord_core.jobs.workflows import decide_step, get_workflow, resume_workflow, start_workflow
from concord_core.operators.artifacts import create_artifact, export_dtus
from concord_core.operators.base import OperationContext
from concord_core.operators.dtus import create_dtu, edit_dtu
from concord_core.operators.errors import ErrorCode, OperatorError
from concord_core.plugins.contract import JobContext, PermanentJobError

IMPORT = """
mutation Import($input: ImportDtusInput!) {
  importDtus(input: $input) { workflow { id status stepCount } errors { field code message } }
}"""
WORKFLOW = """
query W($id: ID!) {
  workflow(id: $id) {
    status error output progress currentStep
    steps { name kind status error job { status attempts artifacts { step role } } }
  }
}"""
NOTES = {
    "notes/alpha.md": "---\ntitle: Alpha\ntags: [greek, first]\n---\n"
    "The first letter. #letters\n\n- one\n- two",
    "notes/beta.md": "# Beta\n\nThe second letter, #letters and #Greek.\n",
    "notes/beta-copy.md": "# Beta\n\nThe second letter, #letters and #Greek.\n",
    "notes/broken.json": '[{"human": {"summary": "no title"}}, 7]',
    "notes/picture.png": "not a note",
    ".hidden/skip.md": "# skipped",
}
COMPARED = ("title", "human", "core", "machine", "tags", "tier", "dtu_type", "citation_mode")


@pytest.fixture
def rt(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    settings = make_settings(tmp_path, database_url, job_poll_seconds=0.1, job_retry_base_seconds=0.05)
    with open_runtime(settings) as runtime:
        yield runtime


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def upload(ops: OperationContext, data: bytes, filename: str, media_type: str) -> str:
    artifact, _ = create_artifact(
        ops, {"name": filename, "filename": filename, "media_type": media_type}, io.BytesIO(data)
    )
    return artifact.id


def start_import(runtime: Runtime, ops: OperationContext, artifact_id: str, **options: Any) -> Workflow:
    return start_workflow(
        ops,
        runtime.jobs.catalog,
        {"workflow_type": "dtu_import", "input": {"artifactId": artifact_id, **options}},
    )


def finished(runtime: Runtime, workflow_id: str, *statuses: str, timeout: float = 30.0) -> Workflow:
    wanted = statuses or ("succeeded", "failed", "cancelled")

    def check() -> Workflow | None:
        with runtime.db.read() as session:
            row = session.get(Workflow, workflow_id)
            return row if row is not None and row.status in wanted else None

    return wait_for(check, timeout)


def steps(runtime: Runtime, workflow_id: str) -> list[WorkflowStep]:
    with runtime.db.read() as session:
        return list(
            session.scalars(
                select(WorkflowStep)
                .where(WorkflowStep.workflow_id == workflow_id)
                .order_by(WorkflowStep.position)
            )
        )


def test_import_a_zip_of_markdown_notes_through_graphql(rt: Runtime) -> None:
    ops = owner_ops(rt)
    artifact_id = upload(ops, zipped(NOTES), "notes.zip", "application/zip")
    with TestClient(create_app(rt)) as client:
        gql = GraphQL(client)
        started = gql.run(
            IMPORT,
            {
                "input": {
                    "artifactId": to_global_id("Artifact", artifact_id),
                    "tags": ["Imported"],
                    "idempotencyKey": "n",
                }
            },
        )["importDtus"]
        assert started["errors"] == [] and started["workflow"]["stepCount"] == 4
        workflow_id = started["workflow"]["id"]
        again = gql.run(
            IMPORT,
            {
                "input": {
                    "artifactId": to_global_id("Artifact", artifact_id),
                    "tags": ["Imported"],
                    "idempotencyKey": "n",
                }
            },
        )["importDtus"]
        assert again["workflow"]["id"] == workflow_id  # the same request starts nothing new

        updates = []
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json({"type": "connection_init"})
            assert ws.receive_json()["type"] == "connection_ack"
            ws.send_json(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {
                        "query": "subscription S($id: ID!) { workflowUpdated(id: $id) "
                        "{ status currentStep progress steps { status } } }",
                        "variables": {"id": workflow_id},
                    },
                }
            )
            while (message := ws.receive_json())["type"] != "complete":
                assert message["type"] == "next", message
                updates.append(message["payload"]["data"]["workflowUpdated"])
        assert updates[-1]["status"] == "SUCCEEDED" and updates[-1]["progress"] == 1.0
        assert [u["progress"] for u in updates] == sorted(u["progress"] for u in updates)

        done = gql.run(WORKFLOW, {"id": workflow_id})["workflow"]
    assert [(s["name"], s["status"]) for s in done["steps"]] == [
        ("import", "SUCCEEDED"),
        ("clean", "SUCCEEDED"),
        ("tag", "SUCCEEDED"),
        ("sync", "SUCCEEDED"),
    ]
    assert all(s["job"]["attempts"] == 1 for s in done["steps"])
    assert {(a["step"], a["role"]) for a in done["steps"][0]["job"]["artifacts"]} == {("import", "records")}
    output = done["output"]
    assert output["created"] == 2 and output["reused"] == 0 and output["lensId"] == "knowledge"
    problems = "\n".join(output["problems"])
    assert "notes/picture.png: skipped" in problems
    assert "notes/broken.json#0: no title; skipped" in problems
    assert "notes/broken.json#1: not a DTU object" in problems
    assert "notes/beta.md: the same content as notes/beta-copy.md; skipped" in problems
    with rt.db.read() as session:
        dtus = {row.title: row for row in session.scalars(select(Dtu).where(Dtu.id.in_(output["dtuIds"])))}
        items = session.scalar(
            select(func.count()).where(
                LensItem.source_id.in_(output["dtuIds"]), LensItem.lens_id == "knowledge"
            )
        )
    assert set(dtus) == {"Alpha", "Beta"} and items == 2
    assert dtus["Alpha"].tags == ["first", "greek", "imported", "letters"]
    assert dtus["Alpha"].human["bullets"] == ["one", "two"]
    assert dtus["Alpha"].human["summary"] == "The first letter. #letters"
    assert dtus["Beta"].tags == ["greek", "imported", "letters"]


def _content(dtu: Dtu | dict[str, Any]) -> dict[str, Any]:
    get = dtu.get if isinstance(dtu, dict) else lambda key: getattr(dtu, key)
    return {key: get(key) for key in COMPARED}


def test_a_concord_json_export_round_trips(rt: Runtime) -> None:
    ops = owner_ops(rt)
    base = create_dtu(
        ops,
        {
            "title": "Base",
            "human": {"summary": "s", "bullets": ["b"], "examples": ["e"]},
            "core": {"definitions": ["d"], "claims": ["c"]},
            "machine": {"score": 0.5, "nested": {"k": [1, 2]}},
            "tags": ["x", "y"],
            "tier": "mega",
            "dtu_type": "concept",
        },
    )
    derived = create_dtu(
        ops, {"title": "Derived", "citation_mode": "derivative", "citations": [base.id], "tags": ["z"]}
    )
    # A cycle: Base cites Derived too, so the import has to add a citation after both exist.
    base = edit_dtu(
        ops, {"id": base.id, "expected_version": 1, "citation_mode": "citing", "citations": [derived.id]}
    )
    exported, _version = export_dtus(ops, [base.id, derived.id])
    workflow = start_import(rt, ops, exported.id, lensId="knowledge")
    done = finished(rt, workflow.id)
    assert done.status == "succeeded", done.error
    assert done.output is not None and done.output["created"] == 2 and done.output["problems"] == []
    new_base, new_derived = done.output["dtuIds"]
    with rt.db.read() as session:
        imported = {
            row.id: row for row in session.scalars(select(Dtu).where(Dtu.id.in_(done.output["dtuIds"])))
        }
    assert _content(imported[new_base]) == _content(base)
    assert _content(imported[new_derived]) == _content(derived)
    assert imported[new_base].citations == [new_derived]
    assert imported[new_derived].citations == [new_base]
    # Exporting the imported DTUs gives the same document, but for ids, times and versions.
    again, _ = export_dtus(ops, [new_base, new_derived])
    with rt.db.read() as session:
        first = json.loads(rt.store.read_bytes(session.get(ArtifactVersion, (exported.id, 1)).blob_sha256))  # type: ignore[union-attr]
        second = json.loads(rt.store.read_bytes(session.get(ArtifactVersion, (again.id, 1)).blob_sha256))  # type: ignore[union-attr]
    assert [_content(e["dtu"]) for e in first["dtus"]] == [_content(e["dtu"]) for e in second["dtus"]]


def test_a_review_step_waits_for_a_person(rt: Runtime) -> None:
    ops = owner_ops(rt)
    artifact_id = upload(ops, b"# Gamma\n\nThird.\n", "gamma.md", "text/markdown")
    workflow = start_import(rt, ops, artifact_id, review=True)
    waiting = finished(rt, workflow.id, "waiting")
    assert waiting.current_step == 3 and [s.status for s in steps(rt, workflow.id)] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "waiting",
        "pending",
    ]
    rejected = decide_step(ops, rt.jobs.catalog, workflow.id, approve=False, note="not yet")
    assert rejected.status == "failed" and rejected.error == "step 'review' was rejected: not yet"
    with pytest.raises(OperatorError) as not_waiting:
        decide_step(ops, rt.jobs.catalog, workflow.id, approve=True)
    assert not_waiting.value.code is ErrorCode.CONFLICT
    assert resume_workflow(ops, rt.jobs.catalog, workflow.id).status == "waiting"
    approved = decide_step(ops, rt.jobs.catalog, workflow.id, approve=True, note="fine")
    assert approved.status == "running"
    done = finished(rt, workflow.id)
    assert done.status == "succeeded" and done.output is not None and done.output["created"] == 1
    review = steps(rt, workflow.id)[3]
    assert (
        review.status == "succeeded" and review.decided_by == ops.principal.user_id and review.note == "fine"
    )


def test_a_failed_workflow_resumes_from_its_last_completed_step(rt: Runtime) -> None:
    ops = owner_ops(rt)
    calls = {"sync": 0}

    def failing_once(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        calls["sync"] += 1
        if calls["sync"] == 1:
            raise PermanentJobError("the lens was down")
        return dtu_import.sync_step(ctx, payload)

    rt.jobs.catalog = JobCatalog.build(
        rt.lenses, [JobSpec(dtu_import.SYNC, failing_once, timeout_seconds=60)]
    )
    workflow = start_import(rt, ops, upload(ops, b"# Delta\n", "delta.md", "text/markdown"))
    failed = finished(rt, workflow.id)
    assert (
        failed.status == "failed"
        and failed.error == "step 'sync' failed: PermanentJobError: the lens was down"
    )
    resumed = resume_workflow(ops, rt.jobs.catalog, workflow.id)
    assert resumed.status == "running"
    done = finished(rt, workflow.id)
    assert done.status == "succeeded"
    with rt.db.read() as session:
        runs = {
            step.name: session.scalar(select(func.count()).where(JobRun.job_id == step.job_id))
            for step in steps(rt, workflow.id)
        }
    assert runs == {"import": 1, "clean": 1, "tag": 1, "sync": 2}  # only the failed step ran again


def test_a_sync_killed_halfway_creates_no_duplicates(rt: Runtime) -> None:
    ops = owner_ops(rt)
    bundle = [{"title": f"Note {n}", "human": {"summary": f"number {n}"}} for n in range(45)]
    artifact_id = upload(ops, json.dumps(bundle).encode(), "bundle.json", "application/json")

    class DiesAtSecondCheckpoint:
        """Proxies the real context, but the attempt "dies" before its second checkpoint is committed."""

        def __init__(self, inner: JobContext) -> None:
            self._inner = inner
            self._checkpoints = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def checkpoint(self, state: dict[str, Any]) -> None:
            self._checkpoints += 1
            if self._checkpoints == 2:
                raise RuntimeError("killed")
            self._inner.checkpoint(state)

    def sync(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        wrapped: Any = DiesAtSecondCheckpoint(ctx) if ctx.attempt == 1 else ctx
        return dtu_import.sync_step(wrapped, payload)

    rt.jobs.catalog = JobCatalog.build(rt.lenses, [JobSpec(dtu_import.SYNC, sync, timeout_seconds=60)])
    done = finished(rt, start_import(rt, ops, artifact_id).id)
    assert done.status == "succeeded", done.error
    assert (
        done.output is not None and len(done.output["dtuIds"]) == 45 and len(set(done.output["dtuIds"])) == 45
    )
    assert done.output["created"] == 5  # 40 were made by the attempt that died (20 checkpointed, 20 found)
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Dtu)) == 45


def test_workflow_access(rt: Runtime) -> None:
    ops = owner_ops(rt)
    artifact_id = upload(ops, b"# Mine\n", "mine.md", "text/markdown")
    workflow = start_import(rt, ops, artifact_id)
    stranger = rt.operation_context(new_user(rt, "mallory"))
    with pytest.raises(OperatorError) as hidden:
        start_import(rt, stranger, artifact_id)
    assert hidden.value.errors[0].field == "input.artifactId" and hidden.value.code is ErrorCode.NOT_FOUND
    with rt.db.read() as session, pytest.raises(OperatorError) as unreadable:
        get_workflow(stranger, session, workflow.id)
    assert unreadable.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(OperatorError) as bad_lens:
        start_import(rt, ops, artifact_id, lensId="nope")
    assert bad_lens.value.errors[0].field == "input.lensId"
    with pytest.raises(OperatorError) as bad_input:
        start_import(rt, ops, artifact_id, surprise=True)
    assert bad_input.value.code is ErrorCode.VALIDATION
    finished(rt, workflow.id)
