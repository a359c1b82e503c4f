"""The jobs runtime of one process: catalog, dispatcher, notifier and maintenance, wired together.

:class:`JobService` is what the rest of Concord talks to. The API's after-commit hook
(:meth:`JobService.after_commit`) wakes the dispatcher for the jobs a change queued and publishes live
updates; :meth:`start` runs in-process runner threads and the maintenance loop when there is no Redis;
:meth:`run_job` is what an RQ worker calls with a job id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

from concord_core.auth.accounts import load_principal
from concord_core.auth.principal import Principal
from concord_core.db.engine import Database
from concord_core.jobs.catalog import JobCatalog, JobSpec
from concord_core.jobs.dispatch import Dispatcher, InlineDispatcher, JobRef, worker_name
from concord_core.jobs.lease import Claim, claim, claim_in
from concord_core.jobs.maintenance import Maintenance
from concord_core.jobs.notify import Notifier, open_notifier
from concord_core.jobs.records import EVENTS_TOPIC, JobState, JobStatus, Journal
from concord_core.jobs.runner import Heartbeats, execute
from concord_core.jobs.transitions import Outcome, settle
from concord_core.operators.base import AfterCommit, Change, OperationContext
from concord_core.plugins.registry import LensRegistry
from concord_core.settings import Settings
from concord_core.storage import BlobStore

log = logging.getLogger("concord.jobs")

#: Test-only (documented in tests/test_jobs_crash.py): when set, the process exits right after a change
#: that queued a job commits and before the dispatcher hears of it: the crash the outbox exists for.
CRASH_AFTER_COMMIT = "CONCORD_TEST_CRASH_AFTER_COMMIT"

#: Events whose payload carries a queued job to dispatch.
_QUEUEING_EVENTS = frozenset({"JOB_QUEUED", "JOB_RETRY_SCHEDULED"})


class JobService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        lenses: LensRegistry | None,
        after_commit: list[AfterCommit],
        *,
        extra_job_types: Iterable[JobSpec] = (),
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.lenses = lenses
        self._after_commit = after_commit
        self.catalog = JobCatalog.build(lenses, extra_job_types)
        self.notifier: Notifier = open_notifier(settings, db)
        self.rq = None
        if settings.redis_url:
            from concord_core.jobs.redis_queue import RqDispatcher

            self.rq = RqDispatcher(settings.redis_url, settings.redis_namespace)
        self.dispatcher: Dispatcher = self.rq or InlineDispatcher(self, settings.job_threads)
        self.maintenance = Maintenance(self, relay=self.rq is not None)
        self.heartbeats = Heartbeats(settings.job_lease_seconds / 3)
        #: Set while this process shuts down: running handlers hand their jobs back at their next call.
        self.stopping = threading.Event()
        self._running = False

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def inline(self) -> bool:
        """Whether jobs run in this process (no Redis)."""
        return self.rq is None

    def start(self) -> None:
        """Serve jobs from this process: in-process runners and the maintenance loop when there is no Redis
        (with Redis, ``concord worker`` does both). Idempotent."""
        if self._running or not self.inline or self.settings.job_threads == 0:
            return
        self._running = True
        self.stopping.clear()
        self.maintenance.start()
        self.dispatcher.start()

    def stop(self) -> None:
        """Stop this process's runners and maintenance loop; running handlers hand their jobs back to the
        queue at their next checkpoint or progress call (or keep them until their lease expires)."""
        self.stopping.set()
        self.maintenance.stop()
        self.dispatcher.stop()
        self._running = False

    def close(self) -> None:
        """Stop, and close the connections to Redis and the notification listener."""
        self.stop()
        self.notifier.close()
        if self.rq is not None:
            self.rq.connection.close()

    # --- wiring -----------------------------------------------------------------------------------

    def operations_for(self, owner_id: str | None, workspace_id: str) -> OperationContext:
        """An operation context acting as a job's owner (or, for a job nobody started, as the system)."""
        principal: Principal | None = None
        if owner_id is not None:
            with self.db.read() as session:
                principal = load_principal(session, owner_id)
            if principal is None:
                principal = Principal(
                    user_id=owner_id, scopes=frozenset()
                )  # disabled or gone: may do nothing
        else:
            principal = Principal(user_id=None, is_admin=True, default_workspace_id=workspace_id)
        return OperationContext(
            db=self.db,
            store=self.store,
            principal=principal,
            settings=self.settings,
            lenses=self.lenses,
            after_commit=self._after_commit,
        )

    def after_commit(self, change: Change) -> None:
        """The runtime's after-commit hook: dispatch the jobs the change queued, publish live updates."""
        refs = [
            JobRef.from_snapshot(event.payload["job"])
            for event in change.events
            if event.event_type in _QUEUEING_EVENTS and event.payload["job"]["status"] == JobStatus.QUEUED
        ]
        if refs and os.environ.get(CRASH_AFTER_COMMIT):
            os._exit(70)
        if refs:
            self.dispatcher.dispatch(refs)
        if change.events:
            topics = {EVENTS_TOPIC}
            for event in change.events:
                if event.entity_type in ("job", "workflow"):
                    topics.add(f"{event.entity_type}:{event.entity_id}")
            self.notifier.publish(topics)

    def after_transition(self, journal: Journal) -> None:
        """After a worker-side transaction commits: dispatch what it queued, publish what changed."""
        if journal.dispatch:
            self.dispatcher.dispatch([JobRef.of(job) for job in journal.dispatch])
        if journal.topics:
            self.notifier.publish(journal.topics)

    def on_terminal(self, journal: Journal, job: JobState) -> None:
        """Inside the transaction that ends a job: advance the workflow it is a step of, if any."""
        from concord_core.jobs.workflows import advance_after_job

        advance_after_job(journal, job, self.catalog)

    # --- running ----------------------------------------------------------------------------------

    def settle(
        self, held: Claim, outcome: Outcome, *, then: Callable[[Journal], object] | None = None
    ) -> None:
        journal = settle(
            self.db,
            held,
            outcome,
            retry_base=self.settings.job_retry_base_seconds,
            on_terminal=self.on_terminal,
            then=then,
        )
        self.after_transition(journal)

    def run_job(self, job_id: str, worker: str | None = None) -> bool:
        """Claim job ``job_id`` and run it here; False if it is not claimable (not queued, or not due)."""
        held = claim(self.db, worker or worker_name("rq"), self.settings.job_lease_seconds, job_id=job_id)
        return self._run(held)

    def run_next(self, worker: str, queues: Sequence[str] | None = None) -> bool:
        """Claim the oldest due job (on ``queues``) and run it here. False if there was none."""
        held = claim(
            self.db, worker, self.settings.job_lease_seconds, queues=list(queues) if queues else None
        )
        return self._run(held)

    def drain(
        self,
        queue: str,
        worker: str,
        *,
        max_jobs: int,
        max_seconds: float,
        guard: Callable[[Claim], AbstractContextManager[object]] | None = None,
    ) -> tuple[int, bool]:
        """Claim and run the due jobs of ``queue`` one after another until none is due, ``max_jobs`` ran,
        ``max_seconds`` passed or this process is stopping. Each job runs inside ``guard(claim)`` if given
        (an RQ worker's death penalty for the job's timeout). Returns how many ran and whether it stopped
        at a bound (jobs may still be due: the caller must see that something wakes a worker for them).

        The transaction that records a job's success also claims the next job, when the drain goes on: one
        commit instead of two between jobs. Any other outcome is recorded on its own, and the next job is
        claimed in a transaction of its own."""
        deadline = time.monotonic() + max_seconds
        lease = self.settings.job_lease_seconds
        ran = 0
        chained: list[Claim] = []  # the claim made by the last success's transaction, if any

        def going_on() -> bool:
            return ran < max_jobs and not self.stopping.is_set() and (not ran or time.monotonic() < deadline)

        def claim_next(journal: Journal) -> None:
            # Decided as the job ends (counting it): a bound reached while it ran stops the drain here.
            if ran + 1 < max_jobs and not self.stopping.is_set() and time.monotonic() < deadline:
                taken = claim_in(journal, worker, lease, queues=[queue])
                if taken is not None:
                    chained.append(taken)

        while True:
            if chained:
                # Its topics went out with the transaction that made it.
                held, published = chained.pop(), True
            else:
                if not going_on():
                    return ran, True
                taken = claim(self.db, worker, lease, queues=[queue])
                if taken is None:
                    return ran, False
                held, published = taken, False
            with guard(held) if guard is not None else nullcontext():
                self._run(held, then=claim_next, published=published)
            ran += 1

    def _run(
        self,
        held: Claim | None,
        *,
        then: Callable[[Journal], object] | None = None,
        published: bool = False,
    ) -> bool:
        if held is None:
            return False
        if not published:
            self.notifier.publish([f"job:{held.job_id}", EVENTS_TOPIC])
        execute(self, held, then=then)
        return True

    def relay(self, *, grace_seconds: float) -> int:
        """With RQ: wake a worker for every queue whose due jobs have no wake-up waiting (see
        ``RqDispatcher.relay``)."""
        if self.rq is None:
            return 0
        # A waiting wake-up is presumed lost when its queue's oldest due job has waited ten sweeps.
        return self.rq.relay(
            self.db, grace_seconds=grace_seconds, verify_seconds=max(1.0, 10 * self.settings.job_poll_seconds)
        )
