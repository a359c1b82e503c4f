"""Workflows (plan D2): resumable chains of steps, each a job, or a review that waits for a person.

A workflow's steps are rows (``workflow_steps``) written when it starts. A ``job`` step runs as a job; the
transaction that ends that job also records the step's result and queues the next step's job (or, for a
``review`` step, pauses the workflow), so a step's result is always recorded before the next step starts
and nothing is lost between them. A step's input is built from the workflow's input and the outputs of
the steps before it, so a workflow that failed resumes (:func:`resume_workflow`) from its last completed
step, and the failed step's job keeps its checkpoint.

Transitions record ``WORKFLOW_STARTED``, ``WORKFLOW_STEP_SUCCEEDED``, ``WORKFLOW_WAITING``,
``WORKFLOW_STEP_APPROVED``, ``WORKFLOW_STEP_REJECTED``, ``WORKFLOW_SUCCEEDED``, ``WORKFLOW_FAILED``,
``WORKFLOW_CANCELLED`` and ``WORKFLOW_RESUMED`` events.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from concord_core.auth.policy import Action, WorkspaceTarget, can_read_in_workspace
from concord_core.db.models import Job, Workflow, WorkflowStep
from concord_core.db.types import utcnow
from concord_core.jobs.catalog import JobCatalog
from concord_core.jobs.enqueue import IdempotencyKey, new_job
from concord_core.jobs.records import TERMINAL, JobAccess, JobState, JobStatus, Journal, input_hash
from concord_core.operators.base import Change, OperationContext, validate, write
from concord_core.operators.errors import ErrorCode, OperatorError, not_found


class WorkflowStatus(enum.StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # for a person to review a step
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class StepKind(enum.StrEnum):
    JOB = "job"
    REVIEW = "review"


#: The input key naming the workflow a step's job belongs to.
STEP_MARK = "workflowId"

FINISHED = frozenset({WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})

#: ``build(workflow_input, outputs_by_step_name) -> job input``
InputBuilder = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class StepDef:
    name: str
    kind: StepKind
    title: str
    job_type: str | None = None
    build_input: InputBuilder | None = None
    #: Whether the step is part of a workflow started with this input (e.g. an optional review).
    included: Callable[[dict[str, Any]], bool] = lambda _input: True


@dataclass(frozen=True)
class WorkflowDef:
    workflow_type: str
    title: str
    input_model: type[BaseModel]
    steps: tuple[StepDef, ...]
    #: Checks a validated input against the database as the starting principal (raises OperatorError).
    check: Callable[[OperationContext, dict[str, Any]], None] = lambda _ctx, _input: None
    #: The workflow's output, from the outputs of its steps.
    output: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda outputs: outputs)


def definitions() -> Mapping[str, WorkflowDef]:
    """Every workflow type Concord ships."""
    # Imported here: the DTU import defines its steps with the types above.
    from concord_core.jobs.dtu_import import DTU_IMPORT

    return {DTU_IMPORT.workflow_type: DTU_IMPORT}


def _definition(workflow_type: str) -> WorkflowDef:
    definition = definitions().get(workflow_type)
    if definition is None:
        raise OperatorError.single(ErrorCode.VALIDATION, f"unknown workflow type {workflow_type!r}", "type")
    return definition


# --- state and events ---------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def steps_of(session: Session, workflow_id: str) -> list[WorkflowStep]:
    return list(
        session.scalars(
            select(WorkflowStep)
            .where(WorkflowStep.workflow_id == workflow_id)
            .order_by(WorkflowStep.position)
        )
    )


def workflow_snapshot(workflow: Workflow, steps: list[WorkflowStep]) -> dict[str, Any]:
    return {
        "id": workflow.id,
        "workspace_id": workflow.workspace_id,
        "owner_id": workflow.owner_id,
        "workflow_type": workflow.workflow_type,
        "status": workflow.status,
        "input_hash": workflow.input_hash,
        "current_step": workflow.current_step,
        "output": workflow.output,
        "error": workflow.error,
        "finished_at": _time(workflow.finished_at),
        "steps": [
            {
                "position": step.position,
                "name": step.name,
                "kind": step.kind,
                "status": step.status,
                "job_id": step.job_id,
                "error": step.error,
                "decided_by": step.decided_by,
            }
            for step in steps
        ],
    }


def _record(journal: Journal, workflow: Workflow, event_type: str, action: str, **detail: Any) -> None:
    steps = steps_of(journal.session, workflow.id)
    journal.event(
        event_type,
        "workflow",
        workflow.id,
        {"workflow": workflow_snapshot(workflow, steps), **detail},
        workflow.workspace_id,
        workflow.owner_id,
    )
    journal.topics.add(f"workflow:{workflow.id}")
    if workflow.owner_id is not None:
        journal.audit(workflow.owner_id, action, "workflow", workflow.id, workflow.workspace_id, dict(detail))


def _touch(workflow: Workflow, status: WorkflowStatus | None = None) -> None:
    now = utcnow()
    workflow.updated_at = now
    if status is not None:
        workflow.status = status.value
        if status in FINISHED:
            workflow.finished_at = now


# --- moving through the steps -------------------------------------------------------------------------------


def _outputs(steps: list[WorkflowStep]) -> dict[str, Any]:
    return {step.name: step.output for step in steps if step.status == StepStatus.SUCCEEDED}


def _start_step(journal: Journal, workflow: Workflow, step: WorkflowStep, catalog: JobCatalog) -> None:
    """Start ``step``: queue its job, or pause the workflow for its review."""
    definition = _definition(workflow.workflow_type)
    step_def = next(s for s in definition.steps if s.name == step.name)
    now = utcnow()
    workflow.current_step = step.position
    step.started_at = now
    if step.kind == StepKind.REVIEW:
        step.status = StepStatus.WAITING.value
        _touch(workflow, WorkflowStatus.WAITING)
        journal.session.flush()
        _record(journal, workflow, "WORKFLOW_WAITING", "workflow.waiting", step=step.name)
        return
    assert step_def.job_type is not None and step_def.build_input is not None
    spec = catalog.get(step_def.job_type)
    if spec is None:  # a worker without the handler: fail the workflow rather than the transaction
        step.status = StepStatus.FAILED.value
        step.error = workflow.error = f"no handler for job type {step_def.job_type!r}"
        _touch(workflow, WorkflowStatus.FAILED)
        journal.session.flush()
        _record(journal, workflow, "WORKFLOW_FAILED", "workflow.failed", step=step.name)
        return
    payload = step_def.build_input(dict(workflow.input), _outputs(steps_of(journal.session, workflow.id)))
    job = new_job(
        journal.session,
        spec,
        workspace_id=workflow.workspace_id,
        owner_id=workflow.owner_id,
        payload={**payload, STEP_MARK: workflow.id, "step": step.name},
    )
    step.job_id = job.id
    step.status = StepStatus.RUNNING.value
    step.error = None
    _touch(workflow, WorkflowStatus.RUNNING)
    journal.session.flush()
    journal.job(
        job, "JOB_QUEUED", action="job.enqueue", detail={"workflow_id": workflow.id, "step": step.name}
    )


def _continue_after(journal: Journal, workflow: Workflow, done: WorkflowStep, catalog: JobCatalog) -> None:
    """``done`` succeeded: start the next step, or finish the workflow."""
    steps = steps_of(journal.session, workflow.id)
    following = [step for step in steps if step.position > done.position]
    if following:
        _start_step(journal, workflow, following[0], catalog)
        return
    definition = _definition(workflow.workflow_type)
    workflow.output = definition.output(_outputs(steps))
    workflow.error = None
    _touch(workflow, WorkflowStatus.SUCCEEDED)
    journal.session.flush()
    _record(journal, workflow, "WORKFLOW_SUCCEEDED", "workflow.succeeded")


def _lock_workflow(session: Session, workflow_id: str) -> Workflow | None:
    return session.scalar(select(Workflow).where(Workflow.id == workflow_id).with_for_update())


def advance_after_job(journal: Journal, job: JobState, catalog: JobCatalog) -> None:
    """Inside the transaction that ended ``job``: if it is a workflow step, record the step's result and
    move the workflow on (next step, review, success, failure or cancellation)."""
    if STEP_MARK not in job.input:
        return  # not a workflow step (saves a query on every job)
    step = journal.session.scalar(select(WorkflowStep).where(WorkflowStep.job_id == job.id))
    if step is None:
        return
    workflow = _lock_workflow(journal.session, step.workflow_id)
    assert workflow is not None
    step.finished_at = utcnow()
    if job.status == JobStatus.SUCCEEDED:
        step.status = StepStatus.SUCCEEDED.value
        step.output = job.output
        step.error = None
    elif job.status == JobStatus.CANCELLED:
        step.status = StepStatus.CANCELLED.value
    else:
        step.status = StepStatus.FAILED.value
        step.error = job.error
    if workflow.status in FINISHED or workflow.current_step != step.position:
        journal.session.flush()  # a cancelled workflow's step wound down: nothing more to do
        return
    if job.status == JobStatus.SUCCEEDED:
        journal.session.flush()
        _record(journal, workflow, "WORKFLOW_STEP_SUCCEEDED", "workflow.step_succeeded", step=step.name)
        _continue_after(journal, workflow, step, catalog)
    elif job.status == JobStatus.CANCELLED:
        workflow.error = f"step {step.name!r} was cancelled"
        _touch(workflow, WorkflowStatus.CANCELLED)
        journal.session.flush()
        _record(journal, workflow, "WORKFLOW_CANCELLED", "workflow.cancelled", step=step.name)
    else:
        workflow.error = f"step {step.name!r} failed: {job.error}"
        _touch(workflow, WorkflowStatus.FAILED)
        journal.session.flush()
        _record(journal, workflow, "WORKFLOW_FAILED", "workflow.failed", step=step.name)


# --- operators ----------------------------------------------------------------------------------------------


class StartWorkflowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow_type: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    input: dict[str, Any] = {}
    idempotency_key: IdempotencyKey | None = None
    workspace_id: str | None = None


def get_workflow(ctx: OperationContext, session: Session, workflow_id: str) -> Workflow:
    """A workflow the principal may read (its workspace's members may); else NOT_FOUND."""
    workflow = session.get(Workflow, workflow_id)
    if workflow is None or not can_read_in_workspace(ctx.principal, workflow.workspace_id, workflow.owner_id):
        raise not_found("workflow")
    return workflow


def start_workflow(ctx: OperationContext, catalog: JobCatalog, data: dict[str, Any]) -> Workflow:
    """Start a workflow: its row, all its step rows and its first step, in one transaction. The same
    idempotency key with the same input returns the workflow it started; with another input, CONFLICT."""
    request = validate(StartWorkflowInput, data)
    definition = _definition(request.workflow_type)
    payload = validate(definition.input_model, request.input, "input.").model_dump(mode="json", by_alias=True)
    workspace_id = ctx.workspace_for(request.workspace_id, "workflow.start")
    digest = input_hash(payload)
    existing_id: str | None = None
    try:
        with write(ctx, "workflow.start") as change:
            change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
            existing = (
                _existing(change.session, workspace_id, request.idempotency_key, digest)
                if request.idempotency_key is not None
                else None
            )
            if existing is not None:
                change.dry_run = True  # a repeated request: nothing to write or record
                existing_id = existing.id
            else:
                workflow = _begin(change, catalog, definition, workspace_id, payload, request.idempotency_key)
    except IntegrityError:
        if request.idempotency_key is None:
            raise
        with ctx.db.read() as session:
            winner = _existing(session, workspace_id, request.idempotency_key, digest)
        if winner is None:
            raise
        return winner
    if existing_id is not None:
        with ctx.db.read() as session:
            again = session.get(Workflow, existing_id)
            assert again is not None
            return again
    return workflow


def _begin(
    change: Change,
    catalog: JobCatalog,
    definition: WorkflowDef,
    workspace_id: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
) -> Workflow:
    definition.check(change.ctx, payload)
    workflow = _create(change.session, change.ctx, definition, workspace_id, payload, idempotency_key)
    journal = Journal(change.session, change)
    _record(journal, workflow, "WORKFLOW_STARTED", "workflow.start", workflow_type=definition.workflow_type)
    _start_step(journal, workflow, steps_of(change.session, workflow.id)[0], catalog)
    journal.flush()
    change.audit("workflow", workflow.id, workspace_id, workflow_type=definition.workflow_type)
    return workflow


def _existing(session: Session, workspace_id: str, key: str, digest: str) -> Workflow | None:
    workflow = session.scalar(
        select(Workflow).where(Workflow.workspace_id == workspace_id, Workflow.idempotency_key == key)
    )
    if workflow is not None and workflow.input_hash != digest:
        raise OperatorError.single(
            ErrorCode.CONFLICT, "this idempotency key was used with a different input", "idempotencyKey"
        )
    return workflow


def _create(
    session: Session,
    ctx: OperationContext,
    definition: WorkflowDef,
    workspace_id: str,
    payload: dict[str, Any],
    idempotency_key: str | None,
) -> Workflow:
    now = utcnow()
    included = [step for step in definition.steps if step.included(payload)]
    workflow = Workflow(
        workspace_id=workspace_id,
        owner_id=ctx.principal.user_id,
        workflow_type=definition.workflow_type,
        status=WorkflowStatus.RUNNING.value,
        input=payload,
        input_hash=input_hash(payload),
        idempotency_key=idempotency_key,
        current_step=0,
        step_count=len(included),
        created_at=now,
        updated_at=now,
    )
    session.add(workflow)
    session.flush()
    for position, step in enumerate(included):
        session.add(
            WorkflowStep(
                workflow_id=workflow.id,
                position=position,
                name=step.name,
                kind=step.kind.value,
                job_type=step.job_type,
                status=StepStatus.PENDING.value,
            )
        )
    session.flush()
    return workflow


def _current_step(session: Session, workflow: Workflow) -> WorkflowStep:
    step = session.get(WorkflowStep, (workflow.id, workflow.current_step))
    assert step is not None
    return step


def decide_step(
    ctx: OperationContext, catalog: JobCatalog, workflow_id: str, *, approve: bool, note: str | None = None
) -> Workflow:
    """Approve (the workflow goes on) or reject (it fails) the review step the workflow waits on. Needs:
    edit on the workflow (its owner, or an editor of its workspace)."""
    if note is not None and len(note) > 5000:
        raise OperatorError.single(ErrorCode.VALIDATION, "a note has at most 5,000 characters", "note")
    action = "workflow.approve" if approve else "workflow.reject"
    with write(ctx, action) as change:
        workflow = _lock_workflow(change.session, workflow_id)
        if workflow is None:
            raise not_found("workflow")
        change.authorize(
            Action.EDIT, JobAccess(workflow.workspace_id, workflow.owner_id), "workflow", workflow.id
        )
        step = _current_step(change.session, workflow)
        if workflow.status != WorkflowStatus.WAITING or step.status != StepStatus.WAITING:
            raise OperatorError.single(ErrorCode.CONFLICT, "the workflow is not waiting for a review", "id")
        step.decided_by = ctx.principal.user_id
        step.note = note
        step.finished_at = utcnow()
        journal = Journal(change.session, change)
        if approve:
            step.status = StepStatus.SUCCEEDED.value
            step.output = {"approved": True, "note": note}
            change.session.flush()
            _record(journal, workflow, "WORKFLOW_STEP_APPROVED", action, step=step.name)
            _continue_after(journal, workflow, step, catalog)
        else:
            step.status = StepStatus.REJECTED.value
            workflow.error = f"step {step.name!r} was rejected" + (f": {note}" if note else "")
            _touch(workflow, WorkflowStatus.FAILED)
            change.session.flush()
            _record(journal, workflow, "WORKFLOW_STEP_REJECTED", action, step=step.name)
        journal.flush()
        change.audit("workflow", workflow.id, workflow.workspace_id, step=step.name, note=note)
    return workflow


def cancel_workflow(ctx: OperationContext, workflow_id: str) -> Workflow:
    """Cancel a workflow now; its running step's job is cancelled (at its next checkpoint if running)."""
    from concord_core.jobs.control import cancel_in

    with write(ctx, "workflow.cancel") as change:
        workflow = _lock_workflow(change.session, workflow_id)
        if workflow is None:
            raise not_found("workflow")
        change.authorize(
            Action.EDIT, JobAccess(workflow.workspace_id, workflow.owner_id), "workflow", workflow.id
        )
        if workflow.status in FINISHED:
            raise OperatorError.single(ErrorCode.CONFLICT, f"the workflow already {workflow.status}", "id")
        journal = Journal(change.session, change)
        step = _current_step(change.session, workflow)
        workflow.error = "cancelled"
        _touch(workflow, WorkflowStatus.CANCELLED)
        if step.status == StepStatus.WAITING:
            step.status = StepStatus.CANCELLED.value
        change.session.flush()
        if step.job_id is not None:
            job = change.session.scalar(select(Job).where(Job.id == step.job_id).with_for_update())
            if job is not None and job.status not in TERMINAL:
                cancel_in(journal, job, on_terminal=lambda _journal, _job: None)
                if job.status == JobStatus.CANCELLED:
                    step.status = StepStatus.CANCELLED.value
                    step.finished_at = utcnow()
        _record(journal, workflow, "WORKFLOW_CANCELLED", "workflow.cancel")
        journal.flush()
        change.audit("workflow", workflow.id, workflow.workspace_id)
    return workflow


def resume_workflow(ctx: OperationContext, catalog: JobCatalog, workflow_id: str) -> Workflow:
    """Resume a failed or cancelled workflow from its last completed step: the step that did not complete
    runs again (a job step's job is retried, keeping its checkpoint; a rejected review waits again)."""
    from concord_core.jobs.control import requeue_in

    with write(ctx, "workflow.resume") as change:
        workflow = _lock_workflow(change.session, workflow_id)
        if workflow is None:
            raise not_found("workflow")
        change.authorize(
            Action.EDIT, JobAccess(workflow.workspace_id, workflow.owner_id), "workflow", workflow.id
        )
        if workflow.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
            raise OperatorError.single(
                ErrorCode.CONFLICT,
                f"only a failed or cancelled workflow resumes; this one is {workflow.status}",
                "id",
            )
        journal = Journal(change.session, change)
        step = _current_step(change.session, workflow)
        workflow.error = None
        workflow.finished_at = None
        job = (
            change.session.scalar(select(Job).where(Job.id == step.job_id).with_for_update())
            if step.job_id
            else None
        )
        if job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            requeue_in(journal, job, catalog)
            step.status = StepStatus.RUNNING.value
            step.error = None
            step.finished_at = None
            _touch(workflow, WorkflowStatus.RUNNING)
        elif job is not None and job.status == JobStatus.SUCCEEDED:
            # The job finished after the workflow was cancelled: take its result and go on.
            step.status = StepStatus.SUCCEEDED.value
            step.output = job.output
            _touch(workflow, WorkflowStatus.RUNNING)
            change.session.flush()
            _continue_after(journal, workflow, step, catalog)
        elif job is not None:  # still queued or running (a cancel was requested): let it finish
            job.cancel_requested = False
            step.status = StepStatus.RUNNING.value
            _touch(workflow, WorkflowStatus.RUNNING)
        else:
            _start_step(journal, workflow, step, catalog)
        change.session.flush()
        _record(journal, workflow, "WORKFLOW_RESUMED", "workflow.resume", step=step.name)
        journal.flush()
        change.audit("workflow", workflow.id, workflow.workspace_id, step=step.name)
    return workflow


def resume_for_job(journal: Journal, job: Job) -> None:
    """A workflow step's job was retried by hand: its failed or cancelled workflow runs again."""
    step = journal.session.scalar(select(WorkflowStep).where(WorkflowStep.job_id == job.id))
    if step is None:
        return
    workflow = _lock_workflow(journal.session, step.workflow_id)
    if (
        workflow is None
        or workflow.current_step != step.position
        or workflow.status
        not in (
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELLED,
        )
    ):
        return
    step.status = StepStatus.RUNNING.value
    step.error = None
    step.finished_at = None
    workflow.error = None
    workflow.finished_at = None
    _touch(workflow, WorkflowStatus.RUNNING)
    journal.session.flush()
    _record(journal, workflow, "WORKFLOW_RESUMED", "workflow.resume", step=step.name)
