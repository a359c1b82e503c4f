"""GraphQL for durable jobs: ``job``, the ``jobs`` connection, ``enqueueJob``/``enqueueJobs``/``cancelJob``/
``retryJob``, and the live subscriptions ``jobUpdated`` and ``events`` (a tail of the event log from the
client's cursor).

Subscriptions are woken by :mod:`concord_core.jobs.notify` and always re-read the database; without a
wake-up they re-read every ``CONCORD_JOB_POLL_SECONDS`` anyway.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, cast

import strawberry
from sqlalchemy import select
from sqlalchemy.orm import Session
from strawberry.scalars import JSON

from concord_core.api.gql.artifacts import Artifact, load_artifact
from concord_core.api.gql.browse import TimeRange, browse_connection, browse_request
from concord_core.api.gql.connections import Connection
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, to_global_id
from concord_core.api.gql.nodes import Node, register_node
from concord_core.browse.sources import JOBS
from concord_core.db import models
from concord_core.events import tail
from concord_core.jobs import control
from concord_core.jobs.enqueue import MAX_BATCH, enqueue_job, enqueue_jobs
from concord_core.jobs.records import EVENTS_TOPIC, TERMINAL, JobStatus
from concord_core.operators.errors import ErrorCode, OperatorError

strawberry.enum(JobStatus, description="queued → running → succeeded | failed | cancelled (or queued again).")

#: Event entity types whose ids the events subscription shows as global ids of these node types.
NODE_TYPES = {
    "dtu": "Dtu",
    "artifact": "Artifact",
    "lens_item": "LensItem",
    "job": "Job",
    "workflow": "Workflow",
    "workspace": "Workspace",
    "user": "User",
}
MAX_EVENT_TYPES = 50


def _global(type_name: str, key: str | None) -> strawberry.ID | None:
    return strawberry.ID(to_global_id(type_name, key)) if key else None


@strawberry.type(description="One attempt at a job: who ran it, when, and how it ended.")
class JobRun:
    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None = strawberry.field(description="succeeded, failed, timed_out, lost or cancelled.")
    error: str | None


@strawberry.type(description="An artifact version a job wrote, under the step and role it wrote it as.")
class JobArtifactLink:
    step: str
    role: str
    version: int
    artifact_key: strawberry.Private[str]

    @strawberry.field(description="The artifact, if you can read it.")
    async def artifact(self, info: GqlInfo) -> Artifact | None:
        return await load_artifact(info, self.artifact_key)


@strawberry.type(description="A durable background job. Readable by its owner and its workspace's members.")
class Job(Node):
    key: strawberry.Private[str]
    type: str
    queue: str
    status: JobStatus
    attempts: int
    max_attempts: int
    progress: float = strawberry.field(description="From 0 to 1.")
    progress_message: str | None
    input: JSON
    output: JSON | None
    error: str | None = strawberry.field(description="Why the last attempt failed (kept while retrying).")
    idempotency_key: str | None
    cancel_requested: bool
    run_after: datetime = strawberry.field(
        description="When it may run next (later than now while backing off)."
    )
    owner_id: strawberry.ID | None
    workspace_id: strawberry.ID
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: models.Job) -> Job:
        return cls(
            id=strawberry.ID(to_global_id("Job", row.id)),
            key=row.id,
            type=row.job_type,
            queue=row.queue,
            status=JobStatus(row.status),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            progress=row.progress,
            progress_message=row.progress_message,
            input=cast(JSON, row.input),
            output=cast(JSON, row.output),
            error=row.error,
            idempotency_key=row.idempotency_key,
            cancel_requested=row.cancel_requested,
            run_after=row.run_after,
            owner_id=_global("User", row.owner_id),
            workspace_id=strawberry.ID(to_global_id("Workspace", row.workspace_id)),
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )

    @strawberry.field(description="Every attempt, oldest first.")
    async def runs(self, info: GqlInfo) -> list[JobRun]:
        def load(session: Session) -> list[models.JobRun]:
            query = select(models.JobRun).where(models.JobRun.job_id == self.key)
            return list(session.scalars(query.order_by(models.JobRun.attempt, models.JobRun.started_at)))

        return [
            JobRun(
                attempt=row.attempt,
                worker=row.worker,
                started_at=row.started_at,
                finished_at=row.finished_at,
                outcome=row.outcome,
                error=row.error,
            )
            for row in await info.context.read(load)
        ]

    @strawberry.field(description="What the job wrote, by step and role.")
    async def artifacts(self, info: GqlInfo) -> list[JobArtifactLink]:
        def load(session: Session) -> list[models.JobArtifact]:
            query = select(models.JobArtifact).where(models.JobArtifact.job_id == self.key)
            return list(session.scalars(query.order_by(models.JobArtifact.step_key, models.JobArtifact.role)))

        return [
            JobArtifactLink(
                step=row.step_key, role=row.role, version=row.artifact_version, artifact_key=row.artifact_id
            )
            for row in await info.context.read(load)
        ]


async def load_job(info: GqlInfo, key: str) -> Job | None:
    try:
        row = await info.context.read(lambda s: control.get_job(info.context.ops, s, key))
    except OperatorError:
        return None
    return Job.from_row(row)


register_node("Job", load_job)


@strawberry.input
class JobFilter:
    type: list[str] | None = None
    status: list[JobStatus] | None = None
    owner: list[strawberry.ID] | None = None
    workspace: list[strawberry.ID] | None = None
    created: TimeRange | None = None
    updated: TimeRange | None = None


@strawberry.type
class JobPayload:
    job: Job | None = None
    created: bool = strawberry.field(
        default=False, description="False when an idempotency key returned an existing job."
    )
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type(description="One entry of the event log.")
class EventRecord:
    cursor: str = strawberry.field(description="Pass it as `after` to continue from here.")
    type: str
    entity_type: str
    entity_id: strawberry.ID = strawberry.field(description="A global ID for kinds that are nodes.")
    workspace_id: strawberry.ID | None
    actor_id: strawberry.ID | None
    request_id: str | None
    payload: JSON
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.Event) -> EventRecord:
        node_type = NODE_TYPES.get(row.entity_type)
        return cls(
            cursor=str(row.seq),
            type=row.event_type,
            entity_type=row.entity_type,
            entity_id=strawberry.ID(to_global_id(node_type, row.entity_id) if node_type else row.entity_id),
            workspace_id=_global("Workspace", row.workspace_id),
            actor_id=_global("User", row.actor_id),
            request_id=row.request_id,
            payload=cast(JSON, row.payload),
            created_at=row.created_at,
        )


def job_key(job_id: str) -> str:
    return expect_global_id(job_id, "Job", "job", "id")


@strawberry.input(description="One job of an enqueueJobs batch.")
class JobRequest:
    type: str
    input: JSON | None = None
    idempotency_key: str | None = None


@strawberry.type
class EnqueueJobsPayload:
    jobs: list[Job] = strawberry.field(
        default_factory=list, description="The jobs, in the order they were requested."
    )
    created: list[bool] = strawberry.field(
        default_factory=list,
        description="Per job: false when an idempotency key returned an existing job.",
    )
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


async def _job_mutation(info: GqlInfo, work: Any) -> JobPayload:
    try:
        row, created = await info.context.run(work)
    except OperatorError as exc:
        return JobPayload(errors=payload_errors(exc))
    return JobPayload(job=Job.from_row(row), created=created)


@strawberry.type
class JobQueries:
    @strawberry.field(
        description="A job by ID; null when it does not exist or you cannot read it. "
        "Needs: its owner, a member of its workspace, or an administrator."
    )
    async def job(self, info: GqlInfo, id: strawberry.ID) -> Job | None:
        try:
            key = job_key(id)
        except OperatorError:
            return None
        return await load_job(info, key)

    @strawberry.field(
        description="Jobs you can read (yours, and your workspaces'), newest first by default. "
        "Needs: nothing; you see what the workspace rules allow."
    )
    async def jobs(
        self,
        info: GqlInfo,
        filter: JobFilter | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Job]:
        request = browse_request(filter, None, None)
        return await browse_connection(
            info, JOBS, request, Job.from_row, first=first, after=after, last=last, before=before
        )


@strawberry.type
class JobMutations:
    @strawberry.mutation(
        description="Queue a job of a type some lens (or the kernel) declares. The same idempotencyKey "
        "with the same input returns the job it created; with another input, CONFLICT. "
        "Needs: editor or owner of the workspace."
    )
    async def enqueue_job(
        self,
        info: GqlInfo,
        type: str,
        input: JSON | None = None,
        idempotency_key: str | None = None,
        workspace_id: strawberry.ID | None = None,
    ) -> JobPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog

        def work() -> tuple[models.Job, bool]:
            if input is not None and not isinstance(input, dict):
                raise OperatorError.single(ErrorCode.VALIDATION, "input must be a JSON object", "input")
            data: dict[str, Any] = {
                "job_type": type,
                "input": input or {},
                "idempotency_key": idempotency_key,
            }
            if workspace_id:
                data["workspace_id"] = expect_global_id(workspace_id, "Workspace", "workspace", "workspaceId")
            return enqueue_job(ctx, catalog, data)

        return await _job_mutation(info, work)

    @strawberry.mutation(
        description=f"Queue up to {MAX_BATCH} jobs in one transaction, all or none: each gets its own event "
        "and audit entry, and idempotency keys work as in enqueueJob. Errors name the job by its index "
        "(`jobs.3.input`). Needs: editor or owner of the workspace."
    )
    async def enqueue_jobs(
        self, info: GqlInfo, jobs: list[JobRequest], workspace_id: strawberry.ID | None = None
    ) -> EnqueueJobsPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog

        def work() -> list[tuple[models.Job, bool]]:
            items: list[dict[str, Any]] = []
            for index, job in enumerate(jobs):
                if job.input is not None and not isinstance(job.input, dict):
                    raise OperatorError.single(
                        ErrorCode.VALIDATION, "input must be a JSON object", f"jobs.{index}.input"
                    )
                items.append(
                    {"job_type": job.type, "input": job.input or {}, "idempotency_key": job.idempotency_key}
                )
            data: dict[str, Any] = {"jobs": items}
            if workspace_id:
                data["workspace_id"] = expect_global_id(workspace_id, "Workspace", "workspace", "workspaceId")
            return enqueue_jobs(ctx, catalog, data)

        try:
            results = await info.context.run(work)
        except OperatorError as exc:
            return EnqueueJobsPayload(errors=payload_errors(exc))
        return EnqueueJobsPayload(
            jobs=[Job.from_row(row) for row, _ in results], created=[created for _, created in results]
        )

    @strawberry.mutation(
        description="Cancel a queued job at once, or ask a running one to stop at its next checkpoint. "
        "Needs: its owner, or an editor of its workspace."
    )
    async def cancel_job(self, info: GqlInfo, id: strawberry.ID) -> JobPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog
        return await _job_mutation(info, lambda: (control.cancel_job(ctx, catalog, job_key(id)), False))

    @strawberry.mutation(
        description="Queue a failed or cancelled job again, with a fresh budget of attempts; it resumes from "
        "its last checkpoint. Needs: its owner, or an editor of its workspace."
    )
    async def retry_job(self, info: GqlInfo, id: strawberry.ID) -> JobPayload:
        ctx = info.context.ops
        catalog = info.context.runtime.jobs.catalog
        return await _job_mutation(info, lambda: (control.retry_job(ctx, catalog, job_key(id)), False))


def _parse_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit() or len(after) > 19:
        raise OperatorError.single(ErrorCode.VALIDATION, "not an event cursor", "after")
    return int(after)


@strawberry.type
class JobSubscriptions:
    @strawberry.subscription(
        description="The job now, then again whenever its status or progress changes, until it finishes. "
        "Needs: read on the job (else NOT_FOUND)."
    )
    async def job_updated(self, info: GqlInfo, id: strawberry.ID) -> AsyncGenerator[Job, None]:
        key = job_key(id)
        ctx = info.context.ops
        runtime = info.context.runtime
        poll = runtime.settings.job_poll_seconds
        with runtime.jobs.notifier.subscribe([f"job:{key}"]) as wakeups:
            last: tuple[Any, ...] | None = None
            while True:
                row = await info.context.read(lambda s: control.get_job(ctx, s, key))
                state = (row.status, row.attempts, row.progress, row.progress_message, row.cancel_requested)
                if state != last:
                    last = state
                    yield Job.from_row(row)
                if row.status in TERMINAL:
                    return
                await wakeups.wait(poll)

    @strawberry.subscription(
        description="A tail of the event log: every event after `after` (a cursor from an earlier event; "
        "default: from now) that you may see, optionally only of `types`, then each new one as it is "
        "committed. Reconnect with the last cursor you got and you miss nothing. Needs: membership of an "
        "event's workspace (all, for administrators), and read on the thing it carries; others are left out."
    )
    async def events(
        self, info: GqlInfo, after: str | None = None, types: list[str] | None = None
    ) -> AsyncGenerator[EventRecord, None]:
        cursor = _parse_cursor(after)
        if types is not None and len(types) > MAX_EVENT_TYPES:
            raise OperatorError.single(ErrorCode.VALIDATION, f"at most {MAX_EVENT_TYPES} types", "types")
        principal = info.context.principal
        runtime = info.context.runtime
        poll = runtime.settings.job_poll_seconds
        with runtime.jobs.notifier.subscribe([EVENTS_TOPIC]) as wakeups:
            start = cursor if cursor is not None else await info.context.read(tail.head)
            cursor = start
            while True:
                page = await info.context.read(tail.read_after, principal, cursor, types)
                for row in page.events:
                    yield EventRecord.from_row(row)
                if page.cursor == cursor:  # caught up: wait for a commit (or the poll)
                    await wakeups.wait(poll)
                cursor = page.cursor
