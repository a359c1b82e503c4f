"""Enqueueing: a job row written in the caller's transaction (the outbox), its ``JOB_QUEUED`` event and audit.

Nothing is sent anywhere here. After the transaction commits, the runtime's after-commit hook wakes the
dispatcher for every ``JOB_QUEUED`` event the change carried; if the process dies first, the relay finds the
committed job anyway (see :mod:`concord_core.jobs.maintenance`).

An idempotency key is unique per workspace: the same key with the same input (compared by the SHA-256 of
its canonical JSON) returns the existing job and writes nothing; with a different input it is a CONFLICT.
Concurrent requests with one key race on the unique index, and the losers return the winner's job.

:func:`enqueue_jobs` queues up to :data:`MAX_BATCH` jobs in one transaction, for a client that has many
to start at once: each job still gets its row, its ``JOB_QUEUED`` event and its own ``job.enqueue`` audit
row, but the batch shares one authorization, one commit and one round trip to RQ.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from concord_core.auth.policy import Action, WorkspaceTarget
from concord_core.db.models import Job
from concord_core.db.types import new_id, utcnow
from concord_core.events.log import canonical_json
from concord_core.jobs.catalog import JobCatalog, JobSpec
from concord_core.jobs.records import JobStatus, input_hash, job_snapshot
from concord_core.operators.base import Change, OperationContext, audit_row, insert_audit, validate, write
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError

MAX_INPUT_CHARS = 256_000
#: The most jobs one :func:`enqueue_jobs` call queues.
MAX_BATCH = 100

JobType = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=100, pattern=r"^[a-z][\w.-]*$")
]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class EnqueueInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_type: JobType
    input: dict[str, Any] = {}
    idempotency_key: IdempotencyKey | None = None
    workspace_id: str | None = None


class EnqueueItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_type: JobType
    input: dict[str, Any] = {}
    idempotency_key: IdempotencyKey | None = None


class EnqueueManyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: Annotated[list[EnqueueItem], Field(min_length=1, max_length=MAX_BATCH)]
    workspace_id: str | None = None


def _spec(catalog: JobCatalog, job_type: str) -> JobSpec:
    spec = catalog.get(job_type)
    if spec is None:
        raise OperatorError.single(ErrorCode.VALIDATION, f"unknown job type {job_type!r}", "type")
    return spec


def _check_input(value: dict[str, Any]) -> None:
    try:
        size = len(canonical_json(value))
    except ValueError:
        raise OperatorError.single(ErrorCode.VALIDATION, "input must be finite JSON", "input") from None
    if size > MAX_INPUT_CHARS:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"input is larger than {MAX_INPUT_CHARS} characters", "input"
        )


def _existing(session: Session, workspace_id: str, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.workspace_id == workspace_id, Job.idempotency_key == key))
    if job is not None and job.input_hash != digest:
        raise OperatorError.single(
            ErrorCode.CONFLICT,
            "this idempotency key was used with a different input",
            "idempotencyKey",
        )
    return job


def new_job(
    session: Session,
    spec: JobSpec,
    *,
    workspace_id: str,
    owner_id: str | None,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
    run_after: datetime | None = None,
    flush: bool = True,
) -> Job:
    """Insert a queued job row (no event: the caller records its ``JOB_QUEUED``). With ``flush`` False the
    row is only added to the session, to be inserted by its next flush (its id is known already)."""
    now = utcnow()
    job = Job(
        id=new_id(),
        workspace_id=workspace_id,
        owner_id=owner_id,
        job_type=spec.job_type,
        queue=spec.queue,
        input=payload,
        input_hash=input_hash(payload),
        idempotency_key=idempotency_key,
        status=JobStatus.QUEUED.value,
        attempts=0,
        max_attempts=spec.max_attempts,
        timeout_seconds=spec.timeout_seconds,
        run_after=run_after or now,
        progress=0.0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    if flush:
        session.flush()
    return job


def _queue(
    change: Change,
    catalog: JobCatalog,
    job_type: str,
    payload: dict[str, Any],
    *,
    workspace_id: str,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Add a queued job and its ``JOB_QUEUED`` event to ``change`` (its audit row is the caller's)."""
    spec = _spec(catalog, job_type)
    _check_input(payload)
    if idempotency_key is not None:
        existing = _existing(change.session, workspace_id, idempotency_key, input_hash(payload))
        if existing is not None:
            return existing, False
    job = new_job(
        change.session,
        spec,
        workspace_id=workspace_id,
        owner_id=change.ctx.principal.user_id,
        payload=payload,
        idempotency_key=idempotency_key,
        flush=False,  # the change's own flush (before its events are appended) inserts it
    )
    change.emit("JOB_QUEUED", "job", job.id, {"job": job_snapshot(job)}, workspace_id)
    return job, True


def enqueue_in(
    change: Change,
    catalog: JobCatalog,
    job_type: str,
    payload: dict[str, Any],
    *,
    workspace_id: str,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Enqueue inside an operator's change (the outbox). Returns (job, created); an existing job for the
    idempotency key comes back with ``created`` False. The caller has authorized the change."""
    job, created = _queue(
        change, catalog, job_type, payload, workspace_id=workspace_id, idempotency_key=idempotency_key
    )
    if created:
        change.audit("job", job.id, workspace_id, job_type=job_type, idempotency_key=idempotency_key)
    return job, created


def enqueue_job(ctx: OperationContext, catalog: JobCatalog, data: dict[str, Any]) -> tuple[Job, bool]:
    """The ``enqueueJob`` operator: validate, authorize (editor or owner of the workspace), insert the job
    with its event and audit row in one transaction. Returns (job, created)."""
    request = validate(EnqueueInput, data)
    _spec(catalog, request.job_type)
    _check_input(request.input)
    workspace_id = ctx.workspace_for(request.workspace_id, "job.enqueue")
    try:
        with write(ctx, "job.enqueue") as change:
            change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
            job, created = enqueue_in(
                change,
                catalog,
                request.job_type,
                request.input,
                workspace_id=workspace_id,
                idempotency_key=request.idempotency_key,
            )
            # A repeated request changes nothing, so it records nothing either (the rollback of this
            # dry run expires the row, so it is read again below).
            change.dry_run = not created
            job_id = job.id
    except IntegrityError:
        if request.idempotency_key is None:
            raise
        # Another request with the same key committed between our check and our insert.
        with ctx.db.read() as session:
            winner = _existing(session, workspace_id, request.idempotency_key, input_hash(request.input))
        if winner is None:
            raise
        return winner, False
    if not created:
        with ctx.db.read() as session:
            existing = session.get(Job, job_id)
            assert existing is not None
            return existing, False
    return job, created


def _item_error(exc: OperatorError, index: int) -> OperatorError:
    """``exc`` with its fields as paths into the batch (``jobs.3.input``)."""
    return OperatorError(
        [
            FieldError(
                f"jobs.{index}.{error.field}" if error.field else f"jobs.{index}", error.code, error.message
            )
            for error in exc.errors
        ]
    )


def _queue_batch(
    change: Change, catalog: JobCatalog, request: EnqueueManyInput, workspace_id: str
) -> list[tuple[Job, bool]]:
    """Add every job of ``request`` to ``change``: (job, created) in order. A key repeated within the batch
    returns the job its first use queued (or CONFLICT with another input), as a repeated request would."""
    results: list[tuple[Job, bool]] = []
    by_key: dict[str, tuple[Job, str]] = {}
    for index, item in enumerate(request.jobs):
        key = item.idempotency_key
        try:
            if key is not None and key in by_key:
                job, digest = by_key[key]
                if digest != input_hash(item.input):
                    raise OperatorError.single(
                        ErrorCode.CONFLICT,
                        "this idempotency key was used with a different input",
                        "idempotencyKey",
                    )
                results.append((job, False))
                continue
            job, created = _queue(
                change, catalog, item.job_type, item.input, workspace_id=workspace_id, idempotency_key=key
            )
        except OperatorError as exc:
            raise _item_error(exc, index) from None
        if key is not None:
            by_key[key] = (job, job.input_hash)
        results.append((job, created))
    return results


def enqueue_jobs(ctx: OperationContext, catalog: JobCatalog, data: dict[str, Any]) -> list[tuple[Job, bool]]:
    """The ``enqueueJobs`` operator: validate every job, authorize once (editor or owner of the workspace),
    and insert them all, each with its event and its ``job.enqueue`` audit row, in one transaction; all or
    nothing. Returns (job, created) per requested job, in order (idempotency keys as in :func:`enqueue_job`).
    """
    request = validate(EnqueueManyInput, data)
    for index, item in enumerate(request.jobs):
        try:
            _spec(catalog, item.job_type)
            _check_input(item.input)
        except OperatorError as exc:
            raise _item_error(exc, index) from None
    workspace_id = ctx.workspace_for(request.workspace_id, "job.enqueue")
    keyed = any(item.idempotency_key is not None for item in request.jobs)
    for last_try in (not keyed, True):
        try:
            with write(ctx, "job.enqueue_batch") as change:
                change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
                results = _queue_batch(change, catalog, request, workspace_id)
                created = [job for job, new in results if new]
                change.dry_run = not created  # every job existed: nothing to write or record
                change.audit("workspace", workspace_id, workspace_id, jobs=len(created))
                if created:
                    insert_audit(
                        change.connection,
                        [
                            audit_row(
                                actor_id=ctx.principal.user_id,
                                action="job.enqueue",
                                target=("job", job.id, workspace_id),
                                outcome="allowed",
                                detail={"job_type": job.job_type, "idempotency_key": job.idempotency_key},
                                created_at=job.created_at,
                            )
                            for job in created
                        ],
                    )
                ids = [(job.id, new) for job, new in results]
            break
        except IntegrityError:
            # Another request with one of the keys committed between our check and our insert: once more,
            # and this time the check finds its job.
            if last_try:
                raise
    if not created:
        with ctx.db.read() as session:
            found = {
                job.id: job for job in session.scalars(select(Job).where(Job.id.in_([i for i, _ in ids])))
            }
        return [(found[job_id], False) for job_id, _ in ids]
    return results
