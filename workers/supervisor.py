"""``concord worker``: RQ worker processes plus the maintenance loop (reaper and relay), supervised.

The supervisor starts ``--processes`` RQ worker processes (:mod:`workers.rq_worker`) in its own process
group, so killing the group kills them all. They are forked from a multiprocessing fork server that has
imported Concord and the installed lenses once (:mod:`workers.preload`), so a worker, and the replacement
of one that died, is ready in milliseconds rather than seconds. Then it loops every
``CONCORD_JOB_POLL_SECONDS``:

* it sweeps: re-queues jobs whose lease expired, and wakes workers for due jobs whose wake-up is missing;
* it replaces a worker process that died, and at once re-queues the jobs that process held (a job that
  crashed its worker is retried, or failed after ``maxAttempts``, without waiting for its lease to expire).

SIGTERM or SIGINT stops it warmly: the workers finish their current job (up to 30 seconds), then exit.
With ``--burst`` it instead works in this one process until no job is due, then exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily, so the fork server starts (and loads them) without waiting for us
    from concord_core.api.runtime import Runtime

log = logging.getLogger("concord.worker")

STOP_TIMEOUT_SECONDS = 30.0
RESTART_DELAY_SECONDS = 0.5


def _work(queues: list[str] | None) -> None:
    """A worker process's main (run in a child of the fork server)."""
    from workers.rq_worker import main

    sys.exit(main(["--queues", ",".join(queues)] if queues else []))


@dataclass
class Child:
    process: BaseProcess
    started: float


class Supervisor:
    def __init__(self, queues: Sequence[str] | None, processes: int) -> None:
        self.queues = list(queues) if queues else None  # None: each worker takes every queue it knows
        self.processes = processes
        self.children: list[Child] = []
        self.stopping = False
        self._processes = multiprocessing.get_context("forkserver")
        self._processes.set_forkserver_preload(["workers.preload"])

    def _spawn(self) -> Child:
        process = self._processes.Process(target=_work, args=(self.queues,), name="concord-rq-worker")
        process.start()
        return Child(process, time.monotonic())

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("concord worker: %s received, stopping", signal.Signals(signum).name)
        self.stopping = True

    def _replace_dead(self, runtime: Runtime) -> None:
        host = socket.gethostname()
        for index, child in enumerate(self.children):
            code = child.process.exitcode
            if code is None:
                continue
            pid = child.process.pid
            log.warning("worker process %s exited with %s; re-queueing its jobs and replacing it", pid, code)
            runtime.jobs.maintenance.reap(f"{host}/{pid}/", f"exited with status {code}")
            if time.monotonic() - child.started < RESTART_DELAY_SECONDS:
                time.sleep(RESTART_DELAY_SECONDS)  # a process that dies at once: do not spin
            self.children[index] = self._spawn()

    def start(self) -> None:
        """Start the worker processes (first, so they load while the supervisor opens its runtime)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.children = [self._spawn() for _ in range(self.processes)]

    def run(self, runtime: Runtime) -> int:
        """Supervise and sweep until asked to stop."""
        poll = runtime.settings.job_poll_seconds
        queues = ", ".join(self.queues or runtime.jobs.catalog.queues())
        log.info("concord worker: %d processes on queues %s", self.processes, queues)
        while not self.stopping:
            try:
                self._replace_dead(runtime)
                # A child that dies during the sweep is reaped by the next _replace_dead, with its status.
                runtime.jobs.maintenance.sweep(children={child.process.pid or 0 for child in self.children})
            except Exception:  # the database or Redis is down for now: keep supervising
                log.exception("concord worker: maintenance sweep failed")
            deadline = time.monotonic() + poll
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.05, poll))
        self._stop_children()
        return 0

    def _stop_children(self) -> None:
        for child in self.children:
            if child.process.exitcode is None:
                child.process.terminate()  # SIGTERM: RQ's warm shutdown
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join()


def burst(runtime: Runtime, queues: Sequence[str]) -> int:
    """Relay and work until no job on ``queues`` is due (for scripts and tests)."""
    from concord_core.jobs.lease import has_due_job
    from workers.rq_worker import run_worker

    while True:
        runtime.jobs.maintenance.sweep(relay_grace=0.0)
        run_worker(runtime, queues, burst=True)
        if not has_due_job(runtime.db, list(queues)):
            return 0


def serve(
    open_runtime: Callable[[], Runtime],
    queues: Sequence[str] | None,
    processes: int,
    *,
    burst_mode: bool = False,
) -> int:
    """Run ``concord worker``: its worker processes start at once; ``open_runtime`` (whose settings name
    Redis) is called for the maintenance loop meanwhile."""
    if burst_mode:
        runtime = open_runtime()
        try:
            return burst(runtime, list(queues) if queues else runtime.jobs.catalog.queues())
        finally:
            runtime.close()
    supervisor = Supervisor(queues, processes)
    supervisor.start()
    try:
        runtime = open_runtime()
    except BaseException:
        supervisor._stop_children()
        raise
    try:
        return supervisor.run(runtime)
    finally:
        runtime.close()
