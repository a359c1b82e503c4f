"""How a run ends, and what the reaper does: every transition is one fenced transaction with its events.

* success: ``succeeded`` with the handler's output;
* failure: retried with exponential backoff while attempts remain and the error is retryable, else
  ``failed``; a job whose cancellation was requested is cancelled instead of retried;
* cancellation: ``cancelled``;
* release (the worker is shutting down): back to ``queued`` at once, the attempt not counted;
* lease expiry (the worker died): the reaper treats it as a failed attempt, with an error saying so.

Each closes the attempt's ``job_runs`` row. A terminal transition calls ``on_terminal`` in the same
transaction, so a workflow records a step's result, and enqueues its next step, atomically with it.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Integer, Select, String, Table, Update, bindparam, select, update

from concord_core.db.engine import Database
from concord_core.db.models import Job, JobRun
from concord_core.db.types import UtcDateTime, utcnow
from concord_core.jobs.lease import Claim, LeaseLost, backoff_seconds, close_run, lock_held
from concord_core.jobs.records import (
    STATE_COLUMNS,
    JobState,
    JobStatus,
    Journal,
    audit_from,
    request_params,
)

log = logging.getLogger("concord.jobs")

#: Called inside the transaction that makes a job succeeded, failed or cancelled.
OnTerminal = Callable[[Journal, JobState], None]


@dataclass(frozen=True)
class Succeeded:
    output: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    error: str
    retryable: bool = True
    run_outcome: str = "failed"  # failed | timed_out | lost


@dataclass(frozen=True)
class Cancelled:
    pass


@dataclass(frozen=True)
class Released:
    """The worker is shutting down: the job goes back to the queue and the attempt is given back."""


Outcome = Succeeded | Failed | Cancelled | Released


def _cancel(journal: Journal, job: Job, on_terminal: OnTerminal) -> None:
    now = utcnow()
    job.status = JobStatus.CANCELLED.value
    job.finished_at = now
    job.updated_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    journal.job(job, "JOB_CANCELLED", action="job.cancelled")
    on_terminal(journal, job)


def fail_attempt(
    journal: Journal, job: Job, failure: Failed, *, retry_base: float, on_terminal: OnTerminal
) -> None:
    """Record a failed attempt of a running job: schedule a retry, or fail (or cancel) it for good."""
    now = utcnow()
    close_run(journal.session, job.id, job.attempts, failure.run_outcome, failure.error)
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if job.cancel_requested:
        job.error = failure.error
        _cancel(journal, job, on_terminal)
        return
    if failure.retryable and job.attempts < job.max_attempts:
        delay = backoff_seconds(job.attempts, retry_base)
        job.status = JobStatus.QUEUED.value
        job.run_after = now + timedelta(seconds=delay)
        job.dispatched_at = None
        job.error = failure.error
        journal.job(
            job,
            "JOB_RETRY_SCHEDULED",
            action="job.retry_scheduled",
            detail={"error": failure.error, "retry_in_seconds": round(delay, 3)},
        )
        return
    job.status = JobStatus.FAILED.value
    job.finished_at = now
    job.error = (
        f"failed after {job.attempts} attempt{'s' if job.attempts != 1 else ''}: {failure.error}"
        if failure.retryable
        else failure.error
    )
    journal.job(job, "JOB_FAILED", action="job.failed", detail={"error": job.error}, outcome="failed")
    on_terminal(journal, job)


def _succeeding() -> Update:
    """``UPDATE jobs`` to succeeded, fenced on the claim (bind parameters ``held_job``, ``held_worker``,
    ``held_attempt``, never a column's name), returning its state."""
    jobs = typing.cast(Table, Job.__table__)
    now = bindparam("now", type_=UtcDateTime())
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("held_job", type_=String()),
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.lease_owner == bindparam("held_worker", type_=String()),
            jobs.c.attempts == bindparam("held_attempt", type_=Integer()),
        )
        .values(
            status=JobStatus.SUCCEEDED.value,
            output=bindparam("output", type_=jobs.c.output.type),
            progress=1.0,
            error=None,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(*(jobs.c[name] for name in STATE_COLUMNS))
    )


def _succeeding_in_one() -> Select[Any]:
    """PostgreSQL: succeed the job, close its run and write its audit row in one statement."""
    done = _succeeding().cte("done")
    runs = typing.cast(Table, JobRun.__table__)
    closed = (
        update(runs)
        .where(runs.c.job_id == done.c.id, runs.c.attempt == done.c.attempts, runs.c.finished_at.is_(None))
        .values(finished_at=bindparam("now", type_=UtcDateTime()), outcome="succeeded", error=None)
    )
    return select(done).add_cte(closed.cte("closed"), audit_from(done, "job.succeeded").cte("audited"))


# Built once, so every job reuses the compiled statements.
_SUCCEED = _succeeding()
_SUCCEED_IN_ONE = _succeeding_in_one()


def settle(
    db: Database,
    held: Claim,
    outcome: Outcome,
    *,
    retry_base: float,
    on_terminal: OnTerminal,
    then: Callable[[Journal], object] | None = None,
) -> Journal:
    """Record how a run ended, fenced on the claim (raises LeaseLost if the job is no longer ours).

    ``then``, for a success: more work for the same transaction, after the job's own (a draining worker
    claims its next job there, so one commit ends one job and starts the next; its events follow this
    job's)."""
    with db.write() as session:
        journal = Journal(session)
        now = utcnow()
        if isinstance(outcome, Succeeded):
            # The common case in one statement: fenced on the claim, returning the row for the event (on
            # PostgreSQL closing the run and writing the audit row in the same statement too).
            connection = session.connection()
            in_one = connection.dialect.name == "postgresql"
            done = connection.execute(
                _SUCCEED_IN_ONE if in_one else _SUCCEED,
                {
                    "held_job": held.job_id,
                    "held_worker": held.worker,
                    "held_attempt": held.attempt,
                    "output": outcome.output,
                    "now": now,
                    **request_params(),
                },
            ).first()
            if done is None:
                raise LeaseLost(held.job_id)
            if not in_one:
                close_run(session, done.id, held.attempt, "succeeded", None)
            journal.job(done, "JOB_SUCCEEDED", action="job.succeeded", audited=in_one)
            on_terminal(journal, done)
            if then is not None:
                then(journal)
            journal.flush()
            return journal
        job = lock_held(session, held)
        if isinstance(outcome, Cancelled):
            close_run(session, job.id, job.attempts, "cancelled", None)
            _cancel(journal, job, on_terminal)
        elif isinstance(outcome, Released):
            close_run(
                session, job.id, job.attempts, "interrupted", "the worker shut down; the job was re-queued"
            )
            job.status = JobStatus.QUEUED.value
            job.attempts -= 1
            job.lease_owner = None
            job.lease_expires_at = None
            job.run_after = now
            job.dispatched_at = None
            job.updated_at = now
            journal.job(job, "JOB_RETRY_SCHEDULED", action="job.released", detail={"worker_stopped": True})
        else:
            fail_attempt(journal, job, outcome, retry_base=retry_base, on_terminal=on_terminal)
        journal.flush()
    return journal


def _lost(job: Job, reason: str | None) -> Failed:
    if reason is None:
        expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
        reason = f"stopped responding; its lease expired at {expired}"
    return Failed(
        f"the worker running attempt {job.attempts} ({job.lease_owner}) {reason}", run_outcome="lost"
    )


def _reapable(job: Job | None, worker_prefix: str | None) -> bool:
    if job is None or job.status != JobStatus.RUNNING.value:
        return False
    if worker_prefix is not None:
        return (job.lease_owner or "").startswith(worker_prefix)
    return job.lease_expires_at is not None and job.lease_expires_at < utcnow()


def reap_expired(
    db: Database,
    *,
    retry_base: float,
    on_terminal: OnTerminal,
    worker_prefix: str | None = None,
    reason: str | None = None,
    limit: int = 100,
) -> list[Journal]:
    """Treat running jobs whose lease expired (or, with ``worker_prefix``, that a dead worker process held)
    as failed attempts (``reason`` says what happened to the worker): re-queue them with backoff until
    ``max_attempts``, then fail them. One transaction
    per job; a job locked by someone settling it right now is skipped, and everything is re-checked under
    the lock."""
    query = select(Job.id).where(Job.status == JobStatus.RUNNING.value)
    if worker_prefix is not None:
        query = query.where(Job.lease_owner.startswith(worker_prefix, autoescape=True))
    else:
        query = query.where(Job.lease_expires_at < utcnow())
    with db.read() as session:
        ids = list(session.scalars(query.order_by(Job.lease_expires_at).limit(limit)))
    journals = []
    for job_id in ids:
        with db.write() as session:
            job = session.scalar(select(Job).where(Job.id == job_id).with_for_update(skip_locked=True))
            if job is None or not _reapable(job, worker_prefix):
                continue
            journal = Journal(session)
            failure = _lost(job, reason)
            fail_attempt(journal, job, failure, retry_base=retry_base, on_terminal=on_terminal)
            journal.flush()
        log.warning("reaped job %s (attempt %s): %s", job_id, job.attempts, failure.error)
        journals.append(journal)
    return journals
