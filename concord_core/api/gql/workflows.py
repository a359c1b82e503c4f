"""GraphQL for workflows: ``workflow``, ``workflows``, ``workflowTypes``, starting one (``startWorkflow``,
``importDtus``), deciding a review (``approveWorkflowStep``/``rejectWorkflowStep``), ``cancelWorkflow``,
``resumeWorkflow``, and the ``workflowUpdated`` subscription."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, cast

import strawberry
from sqlalchemy import select
from sqlalchemy.orm import Session
from strawberry.scalars import JSON

from concord_core.api.gql.browse import TimeRange, browse_connection, browse_request
from concord_core.api.gql.connections import Connection
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, to_global_id
from concord_core.api.gql.jobs import Job, load_job
from concord_core.api.gql.nodes import Node, register_node
from concord_core.auth.policy import Visibility, readable_workspace_filter
from concord_core.browse.source import Browsable, Facet, Filter, FilterKind
from concord_core.db import models
from concord_core.jobs import workflows as ops
from concord_core.jobs.notify import Subscription
from concord_core.operators.errors import OperatorError

strawberry.enum(
    ops.WorkflowStatus, description="running, waiting (for a review), succeeded, failed, cancelled."
)
strawberry.enum(ops.StepStatus)
strawberry.enum(ops.StepKind, description="job: runs as a job; review: waits for a person.")

WORKFLOWS = Browsable(
    name="workflows",
    model=models.Workflow,
    node_type="Workflow",
    sorts={"created": "created_at", "updated": "updated_at"},
    filters={
        "owner": Filter("owner", "owner_id"),
        "workspace": Filter("workspace", "workspace_id"),
        "created": Filter("created", "created_at", FilterKind.RANGE),
        "updated": Filter("updated", "updated_at", FilterKind.RANGE),
        "type": Filter("type", "workflow_type"),
        "status": Filter("status", "status"),
    },
    facets={
        "type": Facet("type", "workflow_type", counted=False),
        "status": Facet("status", "status", counted=False),
    },
    access=readable_workspace_filter,
)


@strawberry.type(description="One step of a workflow.")
class WorkflowStep:
    position: int
    name: str
    kind: ops.StepKind
    status: ops.StepStatus
    job_key: strawberry.Private[str | None]
    output: JSON | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    decided_by: strawberry.ID | None = strawberry.field(description="Who approved or rejected a review.")
    note: str | None

    @strawberry.field(description="The job a job step runs as (the latest, if it was resumed).")
    async def job(self, info: GqlInfo) -> Job | None:
        return await load_job(info, self.job_key) if self.job_key else None

    @classmethod
    def from_row(cls, row: models.WorkflowStep) -> WorkflowStep:
        return cls(
            position=row.position,
            name=row.name,
            kind=ops.StepKind(row.kind),
            status=ops.StepStatus(row.status),
            job_key=row.job_id,
            output=cast(JSON, row.output),
            error=row.error,
            started_at=row.started_at,
            finished_at=row.finished_at,
            decided_by=strawberry.ID(to_global_id("User", row.decided_by)) if row.decided_by else None,
            note=row.note,
        )


@strawberry.type(description="A resumable chain of steps. Readable by its owner and its workspace's members.")
class Workflow(Node):
    key: strawberry.Private[str]
    type: str
    status: ops.WorkflowStatus
    input: JSON
    output: JSON | None
    error: str | None
    current_step: int = strawberry.field(description="The position of the step running or waiting (or last).")
    step_count: int
    idempotency_key: str | None
    owner_id: strawberry.ID | None
    workspace_id: strawberry.ID
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: models.Workflow) -> Workflow:
        return cls(
            id=strawberry.ID(to_global_id("Workflow", row.id)),
            key=row.id,
            type=row.workflow_type,
            status=ops.WorkflowStatus(row.status),
            input=cast(JSON, row.input),
            output=cast(JSON, row.output),
            error=row.error,
            current_step=row.current_step,
            step_count=row.step_count,
            idempotency_key=row.idempotency_key,
            owner_id=strawberry.ID(to_global_id("User", row.owner_id)) if row.owner_id else None,
            workspace_id=strawberry.ID(to_global_id("Workspace", row.workspace_id)),
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )

    @strawberry.field(description="Every step, in order.")
    async def steps(self, info: GqlInfo) -> list[WorkflowStep]:
        return [WorkflowStep.from_row(row) for row in await info.context.read(ops.steps_of, self.key)]

    @strawberry.field(description="From 0 to 1: finished steps, plus the running step's own progress.")
    async def progress(self, info: GqlInfo) -> float:
        def load(session: Session) -> float:
            if self.status == ops.WorkflowStatus.SUCCEEDED:
                return 1.0
            steps = ops.steps_of(session, self.key)
            done = sum(1 for step in steps if step.status == ops.StepStatus.SUCCEEDED)
            running = next((s for s in steps if s.status == ops.StepStatus.RUNNING and s.job_id), None)
            partial = 0.0
            if running is not None:
                partial = (
                    session.scalar(select(models.Job.progress).where(models.Job.id == running.job_id)) or 0.0
                )
            return min(1.0, (done + partial) / max(len(steps), 1))

        return await info.context.read(load)


async def load_workflow(info: GqlInfo, key: str) -> Workflow | None:
    try:
        row = await info.context.read(lambda s: ops.get_workflow(info.context.ops, s, key))
    except OperatorError:
        return None
    return Workflow.from_row(row)


register_node("Workflow", load_workflow)


@strawberry.type(description="A kind of workflow Concord can run, and its steps.")
class WorkflowType:
    type: str
    title: str
    steps: list[str]


@strawberry.input
class WorkflowFilter:
    type: list[str] | None = None
    status: list[ops.WorkflowStatus] | None = None
    owner: list[strawberry.ID] | None = None
    workspace: list[strawberry.ID] | None = None
    created: TimeRange | None = None
    updated: TimeRange | None = None


@strawberry.input(description="Import DTUs from an uploaded bundle (.zip of .md/.json files, or one file).")
class ImportDtusInput:
    artifact_id: strawberry.ID
    version: int | None = strawberry.field(default=None, description="Default: the artifact's newest.")
    lens_id: str = strawberry.field(default="knowledge", description="The lens to sync the DTUs into.")
    tags: list[str] | None = strawberry.field(default=None, description="Tags to add to every DTU.")
    visibility: Visibility = Visibility.PRIVATE
    review: bool = strawberry.field(default=False, description="Wait for a person to approve before syncing.")
    idempotency_key: str | None = None
    workspace_id: strawberry.ID | None = None


@strawberry.type
class WorkflowPayload:
    workflow: Workflow | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


def workflow_key(workflow_id: str) -> str:
    return expect_global_id(workflow_id, "Workflow", "workflow", "id")


async def _mutation(info: GqlInfo, work: Any) -> WorkflowPayload:
    try:
        row = await info.context.run(work)
    except OperatorError as exc:
        return WorkflowPayload(errors=payload_errors(exc))
    return WorkflowPayload(workflow=Workflow.from_row(row))


@strawberry.type
class WorkflowQueries:
    @strawberry.field(
        description="A workflow by ID; null when it does not exist or you cannot read it. "
        "Needs: its owner, a member of its workspace, or an administrator."
    )
    async def workflow(self, info: GqlInfo, id: strawberry.ID) -> Workflow | None:
        try:
            key = workflow_key(id)
        except OperatorError:
            return None
        return await load_workflow(info, key)

    @strawberry.field(description="Workflows you can read, newest first by default. Needs: nothing.")
    async def workflows(
        self,
        info: GqlInfo,
        filter: WorkflowFilter | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Workflow]:
        request = browse_request(filter, None, None)
        return await browse_connection(
            info, WORKFLOWS, request, Workflow.from_row, first=first, after=after, last=last, before=before
        )

    @strawberry.field(description="The kinds of workflow this instance runs. Needs: nothing.")
    def workflow_types(self) -> list[WorkflowType]:
        return [
            WorkflowType(type=d.workflow_type, title=d.title, steps=[s.name for s in d.steps])
            for d in ops.definitions().values()
        ]


@strawberry.type
class WorkflowMutations:
    @strawberry.mutation(
        description="Start a workflow of `type` with `input` (IDs in it are plain keys); the same "
        "idempotencyKey with the same input returns the workflow it started. Needs: editor or owner "
        "of the workspace."
    )
    async def start_workflow(
        self,
        info: GqlInfo,
        type: str,
        input: JSON,
        idempotency_key: str | None = None,
        workspace_id: strawberry.ID | None = None,
    ) -> WorkflowPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog

        def work() -> models.Workflow:
            data: dict[str, Any] = {"workflow_type": type, "input": input, "idempotency_key": idempotency_key}
            if workspace_id:
                data["workspace_id"] = expect_global_id(workspace_id, "Workspace", "workspace", "workspaceId")
            return ops.start_workflow(ctx, catalog, data)

        return await _mutation(info, work)

    @strawberry.mutation(
        description="Import DTUs: Import → Clean → Tag → (Review) → Sync into a lens, from a bundle "
        "uploaded as an artifact. Needs: read on the artifact, editor or owner of the workspace."
    )
    async def import_dtus(self, info: GqlInfo, input: ImportDtusInput) -> WorkflowPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog

        def work() -> models.Workflow:
            payload = {
                "artifactId": expect_global_id(input.artifact_id, "Artifact", "artifact", "input.artifactId"),
                "version": input.version,
                "lensId": input.lens_id,
                "tags": input.tags or [],
                "visibility": input.visibility.value,
                "review": input.review,
            }
            data: dict[str, Any] = {
                "workflow_type": "dtu_import",
                "input": payload,
                "idempotency_key": input.idempotency_key,
            }
            if input.workspace_id:
                data["workspace_id"] = expect_global_id(
                    input.workspace_id, "Workspace", "workspace", "input.workspaceId"
                )
            return ops.start_workflow(ctx, catalog, data)

        return await _mutation(info, work)

    @strawberry.mutation(
        description="Approve the review step a workflow waits on; it goes on with the next step. "
        "Needs: its owner, or an editor of its workspace."
    )
    async def approve_workflow_step(
        self, info: GqlInfo, id: strawberry.ID, note: str | None = None
    ) -> WorkflowPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog
        return await _mutation(
            info, lambda: ops.decide_step(ctx, catalog, workflow_key(id), approve=True, note=note)
        )

    @strawberry.mutation(
        description="Reject the review step a workflow waits on; the workflow fails (resume it to review "
        "again). Needs: its owner, or an editor of its workspace."
    )
    async def reject_workflow_step(
        self, info: GqlInfo, id: strawberry.ID, note: str | None = None
    ) -> WorkflowPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog
        return await _mutation(
            info, lambda: ops.decide_step(ctx, catalog, workflow_key(id), approve=False, note=note)
        )

    @strawberry.mutation(description="Cancel a workflow. Needs: its owner, or an editor of its workspace.")
    async def cancel_workflow(self, info: GqlInfo, id: strawberry.ID) -> WorkflowPayload:
        ctx = info.context.ops
        return await _mutation(info, lambda: ops.cancel_workflow(ctx, workflow_key(id)))

    @strawberry.mutation(
        description="Resume a failed or cancelled workflow from its last completed step. "
        "Needs: its owner, or an editor of its workspace."
    )
    async def resume_workflow(self, info: GqlInfo, id: strawberry.ID) -> WorkflowPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog
        return await _mutation(info, lambda: ops.resume_workflow(ctx, catalog, workflow_key(id)))


@strawberry.type
class WorkflowSubscriptions:
    @strawberry.subscription(
        description="The workflow now, then again whenever it or its running step's job changes, until it "
        "finishes. Needs: read on the workflow (else NOT_FOUND)."
    )
    async def workflow_updated(self, info: GqlInfo, id: strawberry.ID) -> AsyncGenerator[Workflow, None]:
        key = workflow_key(id)
        ctx = info.context.ops
        runtime = info.context.runtime
        poll = runtime.settings.job_poll_seconds

        def state(session: Session) -> tuple[models.Workflow, tuple[Any, ...], list[str]]:
            row = ops.get_workflow(ctx, session, key)
            steps = ops.steps_of(session, key)
            job_ids = [step.job_id for step in steps if step.job_id]
            jobs = session.execute(
                select(models.Job.id, models.Job.status, models.Job.progress).where(
                    models.Job.id.in_(job_ids)
                )
            ).all()
            job_states = tuple(sorted(tuple(job) for job in jobs))
            marker = (row.status, row.current_step, tuple(s.status for s in steps), job_states)
            return row, marker, job_ids

        last: tuple[Any, ...] | None = None
        wakeups: Subscription | None = None
        try:
            while True:
                row, marker, job_ids = await info.context.read(state)
                topics = frozenset({f"workflow:{key}", *(f"job:{job_id}" for job_id in job_ids)})
                if wakeups is None or wakeups.topics != topics:
                    if wakeups is not None:
                        wakeups.close()
                    wakeups = runtime.jobs.notifier.subscribe(topics)
                    continue  # read again, now subscribed, so no change between the two is missed
                if marker != last:
                    last = marker
                    yield Workflow.from_row(row)
                if row.status in ops.FINISHED:
                    return
                await wakeups.wait(poll)
        finally:
            if wakeups is not None:
                wakeups.close()
