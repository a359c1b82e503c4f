"""Leases: how a worker claims a job, keeps it while running, and loses it when it goes silent.

A claim is one write transaction that moves a due ``queued`` job to ``running``, counts the attempt, opens
its ``job_runs`` row and records ``JOB_STARTED``. On PostgreSQL the row is selected ``FOR UPDATE SKIP
LOCKED``, so concurrent workers never wait on, or both take, one job; on SQLite the write transaction
(``BEGIN IMMEDIATE``) serializes claims. A draining worker's claim of its next job shares the transaction
that records its last job's success (:func:`claim_in`, see ``JobService.drain``).

The lease names its holder (``lease_owner``), the attempt and an expiry. Every later write of the run is
*fenced*: it applies only while the job is still running under that holder and attempt, so a worker that
was presumed dead (its lease expired and was reaped) can never overwrite what the next attempt does.
"""

from __future__ import annotations

import random
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Table,
    Update,
    and_,
    bindparam,
    cast,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from concord_core.db.engine import Database
from concord_core.db.models import Job, JobRun
from concord_core.db.types import UtcDateTime, new_id, utcnow
from concord_core.jobs.records import STATE_COLUMNS, JobStatus, Journal, audit_from, request_params

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


_JOBS = typing.cast(Table, Job.__table__)
_RUNS = typing.cast(Table, JobRun.__table__)
_NOW = bindparam("now", type_=UtcDateTime())
_WORKER = bindparam("claim_worker", type_=String())


def _taking(chosen: Any) -> Update:
    """``UPDATE jobs`` taking the job ``chosen`` (an id or a subquery) if it is due, returning its state;
    bind parameters ``now``, ``claim_worker`` and ``expires`` (never a column's name: Core would take a
    parameter named like a column for a value to set)."""
    return (
        update(_JOBS)
        .where(_JOBS.c.id == chosen, _JOBS.c.status == JobStatus.QUEUED.value, _JOBS.c.run_after <= _NOW)
        .values(
            status=JobStatus.RUNNING.value,
            attempts=_JOBS.c.attempts + 1,
            lease_owner=_WORKER,
            lease_expires_at=bindparam("expires", type_=UtcDateTime()),
            heartbeat_at=_NOW,
            dispatched_at=func.coalesce(_JOBS.c.dispatched_at, _NOW),
            error=None,
            updated_at=_NOW,
        )
        .returning(*(_JOBS.c[name] for name in STATE_COLUMNS))
    )


def _next_due(queues: bool) -> Any:
    """The oldest due job (on the queues bound as ``queues``), locked, skipping jobs others hold locked."""
    pick = select(_JOBS.c.id).where(_JOBS.c.status == JobStatus.QUEUED.value, _JOBS.c.run_after <= _NOW)
    if queues:
        pick = pick.where(_JOBS.c.queue.in_(bindparam("queues", expanding=True)))
    # Ordered by ``run_after`` alone, the order of the ``(status, run_after)`` index: the scan stops at the
    # first due row it can lock. A tie-break on ``id`` (a random UUID, so no order worth keeping) made
    # PostgreSQL read and sort every due row for each claim, a cost growing with the backlog.
    return pick.order_by(_JOBS.c.run_after).limit(1).with_for_update(skip_locked=True)


def _claiming_in_one(taking: Update) -> Select[Any]:
    """PostgreSQL: take the job, open its ``job_runs`` row and write its audit row in one statement (one
    round trip instead of three); the ``JOB_STARTED`` event follows, last, in the same transaction."""
    taken = taking.cte("taken")
    opened = insert(_RUNS).from_select(
        ["id", "job_id", "attempt", "worker", "started_at"],
        select(bindparam("run_id", type_=String()), taken.c.id, taken.c.attempts, _WORKER, _NOW),
    )
    audited = audit_from(taken, "job.start", {"worker": cast(_WORKER, String())})
    return select(taken).add_cte(opened.cte("opened"), audited.cte("audited"))


# Built once: the statements every job runs are compiled and cached once, not rebuilt per job. The key
# is (by id, with a queue filter, in one statement).
_CLAIMS: dict[tuple[bool, bool, bool], Any] = {}
for _by_id in (True, False):
    for _queues in (False, True):
        _chosen = bindparam("claim_job", type_=String()) if _by_id else _next_due(_queues).scalar_subquery()
        _take = _taking(_chosen)
        _CLAIMS[(_by_id, _queues, False)] = _take
        _CLAIMS[(_by_id, _queues, True)] = _claiming_in_one(_take)
_OPEN_RUN = insert(_RUNS)


def claim(
    db: Database,
    worker: str,
    lease_seconds: float,
    *,
    job_id: str | None = None,
    queues: list[str] | None = None,
) -> Claim | None:
    """Claim job ``job_id`` if it is due, or else the oldest due job on ``queues`` (any queue if None).
    Returns None when there is nothing to claim (the job is not queued, not due, or taken).

    One ``UPDATE ... RETURNING`` takes the job: by id (a concurrent claimer waits for the row and then finds
    it no longer queued), or through a ``FOR UPDATE SKIP LOCKED`` subquery for the next due job. On
    PostgreSQL the same statement opens the run and writes the audit row; then the event, then commit."""
    with db.write() as session:
        journal = Journal(session)
        held = claim_in(journal, worker, lease_seconds, job_id=job_id, queues=queues)
        journal.flush()
        return held


def claim_in(
    journal: Journal,
    worker: str,
    lease_seconds: float,
    *,
    job_id: str | None = None,
    queues: list[str] | None = None,
) -> Claim | None:
    """:func:`claim` inside the caller's write transaction (``journal``'s session): the ``JOB_STARTED``
    event is recorded in ``journal``, to be appended by its :meth:`~Journal.flush` before the commit."""
    session = journal.session
    now = utcnow()
    run_id = new_id()
    params: dict[str, Any] = {
        "now": now,
        "claim_worker": worker,
        "expires": now + timedelta(seconds=lease_seconds),
        "run_id": run_id,
        **request_params(),
    }
    if job_id is not None:
        params["claim_job"] = job_id
    elif queues is not None:
        params["queues"] = list(queues)
    connection = session.connection()
    in_one = connection.dialect.name == "postgresql"
    key = (job_id is not None, job_id is None and queues is not None, in_one)
    job = connection.execute(_CLAIMS[key], params).first()
    if job is None:
        return None
    if not in_one:
        connection.execute(
            _OPEN_RUN,
            {
                "id": run_id,
                "job_id": job.id,
                "attempt": job.attempts,
                "worker": worker,
                "started_at": now,
            },
        )
    journal.job(job, "JOB_STARTED", action="job.start", detail={"worker": worker}, audited=in_one)
    return Claim(
        job_id=job.id,
        attempt=job.attempts,
        worker=worker,
        run_id=run_id,
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


_CLOSE_RUN = (
    update(JobRun)
    .where(
        JobRun.job_id == bindparam("run_job_id"),
        JobRun.attempt == bindparam("run_attempt"),
        JobRun.finished_at.is_(None),
    )
    .values(
        finished_at=bindparam("finished_at", type_=UtcDateTime()),
        outcome=bindparam("outcome"),
        error=bindparam("error"),
    )
)


def close_run(session: Session, job_id: str, attempt: int, outcome: str, error: str | None) -> None:
    """Finish the attempt's ``job_runs`` row (if it is still open)."""
    session.execute(
        _CLOSE_RUN,
        {
            "run_job_id": job_id,
            "run_attempt": attempt,
            "finished_at": utcnow(),
            "outcome": outcome,
            "error": error,
        },
    )
