"""Operators people use on jobs they did not write: read, cancel, retry.

Access is the policy's (:func:`concord_core.auth.policy.authorize`) on a job seen as a ``workspace``-visible
thing: its workspace's members read it; its owner and the workspace's editors cancel or retry it.

* Cancelling a queued job cancels it at once; a running one is asked to stop, and stops at its next
  checkpoint or progress call (``JOB_CANCEL_REQUESTED``, then ``JOB_CANCELLED``).
* Retrying a failed or cancelled job queues it again with a fresh budget of attempts; it resumes from its
  last checkpoint. A workflow step's job retried this way resumes its workflow too.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.auth.policy import Action, can_read_in_workspace
from concord_core.db.models import Job
from concord_core.db.types import utcnow
from concord_core.jobs.catalog import DEFAULT_MAX_ATTEMPTS, JobCatalog
from concord_core.jobs.records import TERMINAL, JobAccess, JobStatus, Journal
from concord_core.jobs.transitions import OnTerminal
from concord_core.operators.base import Change, OperationContext, write
from concord_core.operators.errors import ErrorCode, OperatorError, not_found


def get_job(ctx: OperationContext, session: Session, job_id: str) -> Job:
    """A job the principal may read; unknown and unreadable ids get the same NOT_FOUND."""
    job = session.get(Job, job_id)
    if job is None or not can_read_in_workspace(ctx.principal, job.workspace_id, job.owner_id):
        raise not_found("job")
    return job


def _load_for_edit(change: Change, job_id: str) -> Job:
    job = change.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise not_found("job")
    change.authorize(Action.EDIT, JobAccess(job.workspace_id, job.owner_id), "job", job.id)
    return job


def cancel_in(journal: Journal, job: Job, *, on_terminal: OnTerminal) -> None:
    """Cancel a queued job now, or ask a running one to stop (inside the caller's transaction)."""
    now = utcnow()
    job.updated_at = now
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.CANCELLED.value
        job.finished_at = now
        journal.job(job, "JOB_CANCELLED", action="job.cancel")
        on_terminal(journal, job)
    elif not job.cancel_requested:
        job.cancel_requested = True
        journal.job(job, "JOB_CANCEL_REQUESTED", action="job.cancel")


def cancel_job(ctx: OperationContext, catalog: JobCatalog, job_id: str) -> Job:
    from concord_core.jobs.workflows import advance_after_job

    with write(ctx, "job.cancel") as change:
        job = _load_for_edit(change, job_id)
        if job.status in TERMINAL:
            raise OperatorError.single(ErrorCode.CONFLICT, f"the job already {job.status}", "id")
        journal = Journal(change.session, change)
        cancel_in(journal, job, on_terminal=lambda j, done: advance_after_job(j, done, catalog))
        journal.flush()
        change.audit("job", job.id, job.workspace_id, status=job.status)
    return job


def requeue_in(journal: Journal, job: Job, catalog: JobCatalog) -> None:
    """Queue a failed or cancelled job again, with a fresh budget of attempts and its checkpoint kept."""
    spec = catalog.get(job.job_type)
    now = utcnow()
    job.status = JobStatus.QUEUED.value
    job.max_attempts = job.attempts + (spec.max_attempts if spec else DEFAULT_MAX_ATTEMPTS)
    job.run_after = now
    job.dispatched_at = None
    job.cancel_requested = False
    job.finished_at = None
    job.output = None
    job.error = None
    job.updated_at = now
    journal.job(job, "JOB_RETRY_SCHEDULED", action="job.retry", detail={"manual": True})


def retry_job(ctx: OperationContext, catalog: JobCatalog, job_id: str) -> Job:
    from concord_core.jobs.workflows import resume_for_job

    with write(ctx, "job.retry") as change:
        job = _load_for_edit(change, job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise OperatorError.single(
                ErrorCode.CONFLICT,
                f"only a failed or cancelled job can be retried; this one is {job.status}",
                "id",
            )
        journal = Journal(change.session, change)
        requeue_in(journal, job, catalog)
        resume_for_job(journal, job)
        journal.flush()
        change.audit("job", job.id, job.workspace_id, max_attempts=job.max_attempts)
    return job
