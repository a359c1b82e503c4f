"""Dispatchers: how committed jobs reach a runner. Both only *wake* runners; the jobs table stays the truth.

* :class:`InlineDispatcher` (no Redis): threads in this process claim due jobs straight from the database,
  woken after each commit that queued one, by a timer when a retry falls due, and by a poll otherwise.
* :class:`~concord_core.jobs.redis_queue.RqDispatcher` (with ``CONCORD_REDIS_URL``): puts wake-up messages
  naming the job's queue on its RQ queue (one per idle worker at most, not one per job); the
  ``concord worker`` process that takes one claims and runs the queue's due jobs until none is left.

A wake-up that never arrives costs latency, not the job: the relay and the poll find it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from concord_core.db.types import utcnow
from concord_core.jobs.lease import has_due_job
from concord_core.jobs.records import JobState

if TYPE_CHECKING:
    from concord_core.jobs.service import JobService

log = logging.getLogger("concord.jobs")

#: A timer wake-up for a retry further away than this is left to the poll.
MAX_TIMER_SECONDS = 3600.0


def worker_name(role: str) -> str:
    """``host/pid/role``: who holds a lease (the maintenance loop reaps a dead local pid's leases early)."""
    return f"{socket.gethostname()}/{os.getpid()}/{role}"


@dataclass(frozen=True)
class JobRef:
    """What a dispatcher needs to know about a queued job."""

    id: str
    queue: str
    attempts: int
    timeout_seconds: int
    run_after: datetime

    @classmethod
    def of(cls, job: JobState) -> JobRef:
        return cls(job.id, job.queue, job.attempts, job.timeout_seconds, job.run_after)

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> JobRef:
        return cls(
            snapshot["id"],
            snapshot["queue"],
            int(snapshot["attempts"]),
            int(snapshot["timeout_seconds"]),
            datetime.fromisoformat(snapshot["run_after"]),
        )


class Dispatcher(Protocol):
    def dispatch(self, refs: Sequence[JobRef]) -> None:
        """Wake a runner for each job (after its transaction committed). Never raises."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class InlineDispatcher:
    """Runner threads in this process (the embedded deployment)."""

    def __init__(self, service: JobService, threads: int) -> None:
        self._service = service
        self._count = threads
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timers: list[threading.Timer] = []
        self._timers_lock = threading.Lock()

    def dispatch(self, refs: Sequence[JobRef]) -> None:
        now = utcnow()
        for ref in refs:
            delay = (ref.run_after - now).total_seconds()
            if 0 < delay < MAX_TIMER_SECONDS and self._threads:
                self._wake_later(delay)
        self._wake.set()

    def _wake_later(self, delay: float) -> None:
        timer = threading.Timer(delay + 0.01, self._wake.set)
        timer.daemon = True
        with self._timers_lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        for number in range(self._count):
            thread = threading.Thread(
                target=self._run, args=(worker_name(f"inline-{number}"),), name=f"concord-job-{number}"
            )
            thread.daemon = True
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: str) -> None:
        service = self._service
        while not self._stopping.is_set():
            self._wake.wait(service.settings.job_poll_seconds)
            self._wake.clear()
            while not self._stopping.is_set():
                try:
                    if not (has_due_job(service.db) and service.run_next(worker)):
                        break
                except Exception:  # the database is unavailable for now: keep polling
                    log.exception("job runner %s: could not claim or settle a job", worker)
                    break

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to ``timeout`` for running handlers (a job still running after that keeps
        its lease until it expires, then the reaper re-queues it)."""
        self._stopping.set()
        self._wake.set()
        with self._timers_lock:
            for timer in self._timers:
                timer.cancel()
            self._timers = []
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
