"""The maintenance loop: the reaper and (with RQ) the relay, every ``CONCORD_JOB_POLL_SECONDS``.

* The reaper re-queues running jobs whose lease expired (their worker died) until ``max_attempts``, then
  fails them with an error naming the lost worker. A lease held by a process on this host that no longer
  exists is reaped at once, without waiting for it to expire.
* The relay (RQ only) wakes a worker for every queue with due jobs and no wake-up waiting: jobs committed
  but never dispatched (the process died between commit and enqueue), jobs whose wake-up was lost (Redis
  flushed or restarted) and retries falling due.

Both are safe to run in any number of processes at once: each job is moved in its own locked, re-checked
transaction, and a needless RQ wake-up only finds nothing to claim.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from concord_core.db.models import Job
from concord_core.events.log import seal_pending
from concord_core.jobs.records import JobStatus, Journal
from concord_core.jobs.transitions import reap_expired

if TYPE_CHECKING:
    from concord_core.jobs.service import JobService

log = logging.getLogger("concord.jobs.maintenance")

#: How long a never-dispatched job waits for its own wake-up before the relay sends one.
RELAY_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class SweepReport:
    reaped: int
    relayed: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_local_workers(service: JobService, skip: Collection[int] = ()) -> list[str]:
    """Lease-owner prefixes (``host/pid/``) of running jobs held by processes of this host that are gone,
    but for the processes ``skip`` names (a supervisor's own children: it reaps their jobs itself, naming
    their exit status)."""
    host = socket.gethostname()
    with service.db.read() as session:
        owners = session.scalars(
            select(Job.lease_owner)
            .where(
                Job.status == JobStatus.RUNNING.value, Job.lease_owner.startswith(f"{host}/", autoescape=True)
            )
            .distinct()
        ).all()
    dead = set()
    for owner in owners:
        parts = (owner or "").split("/")
        if (
            len(parts) >= 3
            and parts[1].isdigit()
            and int(parts[1]) not in skip
            and not _pid_alive(int(parts[1]))
        ):
            dead.add(f"{host}/{parts[1]}/")
    return sorted(dead)


class Maintenance:
    """Sweeps on demand (:meth:`sweep`) or in a background thread (:meth:`start`)."""

    def __init__(self, service: JobService, *, relay: bool) -> None:
        self._service = service
        self._relay = relay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reap(self, worker_prefix: str | None = None, reason: str | None = None) -> list[Journal]:
        """Reap expired leases, or every lease held by workers named ``worker_prefix...`` (gone, for
        ``reason``)."""
        service = self._service
        journals = reap_expired(
            service.db,
            retry_base=service.settings.job_retry_base_seconds,
            on_terminal=service.on_terminal,
            worker_prefix=worker_prefix,
            reason=reason,
        )
        for journal in journals:
            service.after_transition(journal)
        return journals

    def sweep(
        self, *, relay_grace: float = RELAY_GRACE_SECONDS, children: Collection[int] = ()
    ) -> SweepReport:
        """One round of maintenance. ``children``: worker processes the caller supervises, whose death it
        reports itself (a child that died since the caller last looked is left to it)."""
        seal_pending(self._service.db)  # events a process committed but died before sealing
        reaped = len(self.reap())
        for prefix in dead_local_workers(self._service, skip=children):
            reaped += len(self.reap(prefix, "exited (its process is gone)"))
        relayed = 0
        if self._relay:
            relayed = self._service.relay(grace_seconds=relay_grace)
        return SweepReport(reaped, relayed)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="concord-jobs-maintenance", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # a database or Redis outage: try again next time
                log.exception("job maintenance sweep failed")
            self._stop.wait(self._service.settings.job_poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
