"""RQ as the carrier of wake-ups: a message names a queue, never a job, and wakes one worker to drain it.

The message is an RQ job on the RQ queue ``<namespace>:<queue>`` that calls
``workers.rq_worker.drain(queue)``. The worker that takes it claims the due jobs of that queue from the
database one after another (``FOR UPDATE SKIP LOCKED``, oldest first) and runs each, until none is due or a
bound is reached (:data:`DRAIN_MAX_JOBS`, :data:`DRAIN_SECONDS`, or the worker is shutting down); then, if
it stopped at the bound, it sends a wake-up for the queue again before going back to RQ, so the rest of the
queue is never left without one. A wake-up that finds nothing due is a cheap no-op. The jobs table decides
what runs, never Redis; RQ only decides which worker looks next, and when.

So a commit that queued jobs needs *one* pending wake-up for their queue to get them run; more only buy
parallelism. :meth:`RqDispatcher.dispatch` sends, per queue, as many as there are jobs, but no more than
there are RQ workers listening on the queue, less the wake-ups already waiting there (one RQ round trip
to count them, one to send). A batch of 50 jobs costs 2 messages with 2 workers instead of 50: RQ's own
work per message (dequeue, registries, result) is most of what plain RQ spends per job.

Messages get lost (a Redis restart without persistence, a ``FLUSHALL``, a crash between commit and
enqueue), or end without draining (the database was unreachable). :meth:`RqDispatcher.relay` repairs that
from the jobs table: for every queue with a due job that has waited past a grace period, it sends a
wake-up unless one is already waiting on that queue; and when a queue's oldest due job has waited
``verify_seconds``, it sends one whatever Redis says (a message listed in the queue could still be one
that will never run). Older versions sent one message per job attempt (``concord-<id>-<attempts>``,
calling ``workers.rq_worker.perform(job_id)``); :func:`workers.rq_worker.perform` still runs those.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import redis
from rq import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY
from sqlalchemy import and_, func, or_, select

from concord_core.db.engine import Database
from concord_core.db.models import Job
from concord_core.db.types import utcnow
from concord_core.jobs.dispatch import JobRef
from concord_core.jobs.records import JobStatus

log = logging.getLogger("concord.jobs.rq")

#: What a wake-up message calls, with the Concord queue's name.
RQ_FUNCTION = "workers.rq_worker.drain"
#: What the per-job messages of older versions call, with a job id (still run, never sent).
RQ_JOB_FUNCTION = "workers.rq_worker.perform"
#: Room, beyond a job type's own timeout, for claiming it and recording its outcome.
TIMEOUT_MARGIN_SECONDS = 30
#: A worker woken by one message runs at most this many jobs, or starts none after this many seconds,
#: before sending the queue's wake-up again and going back to RQ (which then checks for a shutdown,
#: suspension and its other queues).
DRAIN_MAX_JOBS = 200
DRAIN_SECONDS = 10.0
#: RQ's timeout of a wake-up whose jobs' timeouts are not known (a relayed or continued one): RQ's death
#: penalty never hits a drain (each job runs under its own, see ``workers.rq_worker.drain``); RQ's
#: bookkeeping (its started registry, the worker's heartbeat) uses it.
DEFAULT_WAKE_TIMEOUT_SECONDS = 3600
FAILURE_TTL_SECONDS = 24 * 3600
RESULT_TTL_SECONDS = 60


def wake_timeout(job_timeout: int) -> int:
    """RQ's timeout for a wake-up whose first job has timeout ``job_timeout``: that job, the margin, and the
    drain's time bound for claiming more."""
    return job_timeout + TIMEOUT_MARGIN_SECONDS + int(DRAIN_SECONDS)


class RqDispatcher:
    """Enqueue wake-ups on RQ queues, and relay queues whose wake-up is missing."""

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

    def _counts(self, queues: Sequence[str]) -> list[tuple[int, int]]:
        """(wake-ups waiting, workers listening) of each queue, in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        for queue in queues:
            rq_queue = self.queue(queue)
            pipe.llen(rq_queue.key)
            pipe.scard(WORKERS_BY_QUEUE_KEY % rq_queue.name)
        replies = pipe.execute()
        return [(int(replies[i]), int(replies[i + 1])) for i in range(0, len(replies), 2)]

    def _enqueue(self, queue: str, count: int, timeout: int) -> None:
        """``count`` wake-ups for ``queue``, in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        rq_queue = self.queue(queue)
        for _ in range(count):
            rq_queue.enqueue_call(
                RQ_FUNCTION,
                args=(queue,),
                timeout=timeout,
                result_ttl=RESULT_TTL_SECONDS,
                failure_ttl=FAILURE_TTL_SECONDS,
                description=f"concord wake-up for queue {queue}",
                pipeline=pipe,
            )
        pipe.execute()

    def wake(self, queue: str, count: int = 1, timeout: int = DEFAULT_WAKE_TIMEOUT_SECONDS) -> None:
        """Send ``count`` wake-ups for ``queue`` (raises ``redis.RedisError``; the relay covers a failure)."""
        self._enqueue(queue, count, timeout)

    def dispatch(self, refs: Sequence[JobRef]) -> None:
        now = utcnow()
        due = [ref for ref in refs if ref.run_after <= now]
        if not due:
            return  # a retry that is not due yet: the relay sends its wake-up when it is
        jobs = Counter(ref.queue for ref in due)
        timeouts: dict[str, int] = {}
        for ref in due:
            timeouts[ref.queue] = max(timeouts.get(ref.queue, 0), ref.timeout_seconds)
        queues = sorted(jobs)
        try:
            for queue, (waiting, workers) in zip(queues, self._counts(queues), strict=True):
                # Each waiting wake-up drains the queue: more than one per worker is never useful.
                wanted = min(jobs[queue], max(workers, 1)) - waiting
                if wanted > 0:
                    self._enqueue(queue, wanted, wake_timeout(timeouts[queue]))
        except redis.RedisError as exc:
            log.warning("could not wake RQ workers for %d job(s) (%s); the relay will", len(due), exc)

    def relay(self, db: Database, *, grace_seconds: float, verify_seconds: float) -> int:
        """Wake a worker for every queue with a due queued job that has waited ``grace_seconds`` (the API's
        own wake-up usually beats that; a retry falling due has none coming, so it counts at once), unless
        a wake-up is already waiting on that queue and its oldest such job has waited less than
        ``verify_seconds``. Returns how many wake-ups it sent."""
        now = utcnow()
        waiting = (
            select(Job.queue, func.count(), func.min(Job.run_after), func.max(Job.timeout_seconds))
            .where(
                Job.status == JobStatus.QUEUED.value,
                or_(
                    Job.run_after <= now - timedelta(seconds=grace_seconds),
                    and_(Job.attempts > 0, Job.run_after <= now),
                ),
            )
            .group_by(Job.queue)
        )
        with db.read() as session:
            rows = session.execute(waiting).all()
        if not rows:
            return 0
        queues = [row[0] for row in rows]
        sent = 0
        for (queue, jobs, oldest, longest), (pending, workers) in zip(
            rows, self._counts(queues), strict=True
        ):
            if pending and oldest > now - timedelta(seconds=verify_seconds):
                continue  # a wake-up waits on the queue, and it is not late yet
            count = max(1, min(jobs, max(workers, 1)) - pending)
            self._enqueue(queue, count, wake_timeout(longest))
            sent += count
        if sent:
            log.info("relay: sent %d wake-up(s) for due jobs that had none", sent)
        return sent
