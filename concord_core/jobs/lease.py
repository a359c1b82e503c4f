"""Leases: how a worker claims a job, keeps it while running, and loses it when it goes silent.

A claim is one write transaction that moves a due ``queued`` job to ``running``, counts the attempt, opens
its ``job_runs`` row and records ``JOB_STARTED``. On PostgreSQL the row is selected ``FOR UPDATE SKIP
LOCKED``, so concurrent workers never wait on, or both take, one job; on SQLite the write transaction
(``BEGIN IMMEDIATE``) serializes claims.

The lease names its holder (``lease_owner``), the attempt and an expiry. Every later write of the run is
*fenced*: it applies only while the job is still running under that holder and attempt, so a worker that
was presumed dead (its lease expired and was reaped) can never overwrite what the next attempt does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from concord_core.db.engine import Database
from concord_core.db.models import Job, JobRun
from concord_core.db.types import utcnow
from concord_core.jobs.records import JobStatus, Journal

MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: everything the runner needs, read in the claiming transaction."""

    job_id: str
    attempt: int
    worker: str
    run_id: str
    job_type: str
    queue: str
    workspace_id: str
    owner_id: str | None
    input: dict[str, Any]
    checkpoint: dict[str, Any] | None
    timeout_seconds: int
    max_attempts: int


class LeaseLost(Exception):
    """This worker no longer holds the job (its lease expired and the job was reaped, or it was cancelled
    and finished elsewhere); whatever it was doing must not be recorded."""


def backoff_seconds(attempt: int, base: float) -> float:
    """The delay before retrying after attempt ``attempt`` failed: ``base * 2**(attempt-1)``, capped, with
    "equal jitter" (a random half of it), so a burst of failures does not retry in lockstep."""
    delay = min(MAX_BACKOFF_SECONDS, base * 2 ** max(attempt - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


def holds(claim: Claim) -> ColumnElement[bool]:
    """SQL: the job is still running under this claim (the fence on every write of a run)."""
    return and_(
        Job.id == claim.job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.lease_owner == claim.worker,
        Job.attempts == claim.attempt,
    )


def _due(now: datetime) -> ColumnElement[bool]:
    return and_(Job.status == JobStatus.QUEUED.value, Job.run_after <= now)


def has_due_job(db: Database, queues: list[str] | None = None) -> bool:
    """Whether any job is due (a cheap read, so an idle poller need not open a write transaction)."""
    query = select(Job.id).where(_due(utcnow()))
    if queues is not None:
        query = query.where(Job.queue.in_(queues))
    with db.read() as session:
        return session.scalar(query.limit(1)) is not None


def claim(
    db: Database,
    worker: str,
    lease_seconds: float,
    *,
    job_id: str | None = None,
    queues: list[str] | None = None,
) -> Claim | None:
    """Claim job ``job_id`` if it is due, or else the oldest due job on ``queues`` (any queue if None).
    Returns None when there is nothing to claim (the job is not queued, not due, or taken)."""
    now = utcnow()
    query = select(Job).where(_due(now))
    if job_id is not None:
        query = query.where(Job.id == job_id)
    else:
        if queues is not None:
            query = query.where(Job.queue.in_(queues))
        query = query.order_by(Job.run_after, Job.id).limit(1)
    with db.write() as session:
        job = session.scalar(query.with_for_update(skip_locked=True))
        if job is None:
            return None
        job.status = JobStatus.RUNNING.value
        job.attempts += 1
        job.lease_owner = worker
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        job.heartbeat_at = now
        job.dispatched_at = job.dispatched_at or now
        job.error = None
        job.updated_at = now
        run = JobRun(job_id=job.id, attempt=job.attempts, worker=worker, started_at=now)
        session.add(run)
        session.flush()
        journal = Journal(session)
        journal.job(job, "JOB_STARTED", action="job.start", detail={"worker": worker})
        journal.flush()
        return Claim(
            job_id=job.id,
            attempt=job.attempts,
            worker=worker,
            run_id=run.id,
            job_type=job.job_type,
            queue=job.queue,
            workspace_id=job.workspace_id,
            owner_id=job.owner_id,
            input=dict(job.input),
            checkpoint=job.checkpoint,
            timeout_seconds=job.timeout_seconds,
            max_attempts=job.max_attempts,
        )


@dataclass(frozen=True)
class LeaseState:
    cancel_requested: bool


def renew(db: Database, held: Claim, lease_seconds: float, **values: Any) -> LeaseState:
    """Extend the lease (and set ``values`` on the job, e.g. progress or checkpoint) in one fenced write.
    Raises :class:`LeaseLost` if the job is no longer ours."""
    now = utcnow()
    with db.write() as session:
        cancel = session.scalar(
            update(Job)
            .where(holds(held))
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds), **values)
            .returning(Job.cancel_requested)
        )
    if cancel is None:
        raise LeaseLost(held.job_id)
    return LeaseState(cancel_requested=bool(cancel))


def lock_held(session: Session, held: Claim) -> Job:
    """The job row, locked, if this claim still holds it; else :class:`LeaseLost`."""
    job = session.scalar(select(Job).where(holds(held)).with_for_update())
    if job is None:
        raise LeaseLost(held.job_id)
    return job


def close_run(session: Session, job_id: str, attempt: int, outcome: str, error: str | None) -> None:
    """Finish the attempt's ``job_runs`` row (if it is still open)."""
    session.execute(
        update(JobRun)
        .where(JobRun.job_id == job_id, JobRun.attempt == attempt, JobRun.finished_at.is_(None))
        .values(finished_at=utcnow(), outcome=outcome, error=error)
    )
