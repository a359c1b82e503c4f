"""RQ as the carrier of wake-ups: one message per job attempt, naming only the job.

The message is an RQ job ``concord-<job id>-<attempts>`` on the queue ``<namespace>:<queue>`` that calls
``workers.rq_worker.perform(job_id)``; that function claims the job in the database and does nothing if it
is not claimable (already taken, cancelled, finished, or a duplicate message). The outcome lives in the
jobs table; RQ lets its own record of a message expire a minute after it ran (``result_ttl``: deleting it
at once, ``result_ttl=0``, costs RQ more round trips per job than keeping it).

Messages get lost (a Redis restart without persistence, a ``FLUSHALL``, a crash between commit and
enqueue), or end without running the job (the worker shut down and gave the job back, or the database
was unreachable). :meth:`RqDispatcher.relay` repairs that from the jobs table: every due queued job
without a *pending* message (queued or started in RQ) gets one, both for jobs that were never dispatched
and, periodically, for jobs whose message should be there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job as RqJob
from sqlalchemy import and_, or_, select, update

from concord_core.db.engine import Database
from concord_core.db.models import Job
from concord_core.db.types import utcnow
from concord_core.jobs.dispatch import JobRef
from concord_core.jobs.records import JobStatus

log = logging.getLogger("concord.jobs.rq")

RQ_FUNCTION = "workers.rq_worker.perform"
#: RQ's own timeout is the job type's, plus room for recording the outcome.
TIMEOUT_MARGIN_SECONDS = 30
FAILURE_TTL_SECONDS = 24 * 3600
RESULT_TTL_SECONDS = 60
#: RQ statuses of a message that will still run its job (any other, or none, means it needs a new one).
PENDING_STATUSES = frozenset({b"queued", b"started", b"scheduled", b"deferred"})


def rq_job_id(ref: JobRef) -> str:
    return f"concord-{ref.id}-{ref.attempts}"


class RqDispatcher:
    """Enqueue wake-ups on RQ queues, and relay jobs whose wake-up is missing."""

    def __init__(self, url: str, namespace: str) -> None:
        self.connection = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.namespace = namespace
        self._queues: dict[str, Queue] = {}

    def queue_name(self, queue: str) -> str:
        return f"{self.namespace}:{queue}"

    def queue(self, queue: str) -> Queue:
        name = self.queue_name(queue)
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.connection)
        return self._queues[name]

    def start(self) -> None:
        """Nothing runs here: ``concord worker`` processes run the jobs."""

    def stop(self) -> None:
        """Nothing to stop (see :meth:`start`)."""

    def _enqueue(self, ref: JobRef, pipeline: Any = None, *, unique: bool = False) -> None:
        self.queue(ref.queue).enqueue_call(
            RQ_FUNCTION,
            args=(ref.id,),
            job_id=rq_job_id(ref),
            timeout=ref.timeout_seconds + TIMEOUT_MARGIN_SECONDS,
            result_ttl=RESULT_TTL_SECONDS,
            failure_ttl=FAILURE_TTL_SECONDS,
            description=f"concord job {ref.id}",
            pipeline=pipeline,
            unique=unique,
        )

    def dispatch(self, refs: Sequence[JobRef]) -> None:
        now = utcnow()
        due = [ref for ref in refs if ref.run_after <= now]
        if not due:
            return  # a retry that is not due yet: the relay sends it when it is
        try:
            pipe = self.connection.pipeline(transaction=False)
            for ref in due:
                self._enqueue(ref, pipe)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not enqueue %d job(s) on RQ (%s); the relay will", len(due), exc)

    def relay(self, db: Database, *, grace_seconds: float, verify_seconds: float, limit: int = 500) -> int:
        """Give every due queued job without a pending message in Redis a new one. Considers new jobs never
        marked dispatched once they are ``grace_seconds`` overdue (the API's own wake-up usually beats
        that), retries as soon as they are due, and re-checks dispatched ones every ``verify_seconds``.
        Returns how many it enqueued."""
        now = utcnow()
        query = (
            select(Job.id, Job.queue, Job.attempts, Job.timeout_seconds, Job.run_after)
            .where(
                Job.status == JobStatus.QUEUED.value,
                or_(
                    and_(
                        Job.dispatched_at.is_(None), Job.run_after <= now - timedelta(seconds=grace_seconds)
                    ),
                    # A retry falling due has no wake-up coming from anywhere else: send it at once.
                    and_(Job.dispatched_at.is_(None), Job.attempts > 0, Job.run_after <= now),
                    Job.dispatched_at <= now - timedelta(seconds=verify_seconds),
                ),
            )
            .order_by(Job.dispatched_at.is_not(None), Job.dispatched_at, Job.run_after)
            .limit(limit)
        )
        with db.read() as session:
            refs = [JobRef(*row) for row in session.execute(query)]
        if not refs:
            return 0
        pipe = self.connection.pipeline(transaction=False)
        for ref in refs:
            pipe.hget(RqJob.key_for(rq_job_id(ref)), "status")
        statuses = pipe.execute()
        sent = 0
        for ref, status in zip(refs, statuses, strict=True):
            if status in PENDING_STATUSES:
                continue
            try:
                # A message that ended without running the job is replaced; a missing one is created
                # unless the API's wake-up arrives meanwhile.
                self._enqueue(ref, unique=status is None)
                sent += 1
            except DuplicateJobError:
                pass
        with db.write() as session:
            session.execute(
                update(Job)
                .where(Job.id.in_([ref.id for ref in refs]), Job.status == JobStatus.QUEUED.value)
                .values(dispatched_at=utcnow())
            )
        if sent:
            log.info("relay: enqueued %d job(s) whose RQ message was missing", sent)
        return sent
