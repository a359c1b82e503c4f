"""``concord worker``: RQ worker processes plus the maintenance loop (reaper and relay), supervised.

The supervisor starts ``--processes`` RQ worker processes (:mod:`workers.rq_worker`) in its own process
group, so killing the group kills them all, and then loops every ``CONCORD_JOB_POLL_SECONDS``:

* it sweeps: re-queues jobs whose lease expired, and relays due jobs whose RQ message is missing;
* it replaces a worker process that died, and at once re-queues the jobs that process held (a job that
  crashed its worker is retried, or failed after ``maxAttempts``, without waiting for its lease to expire).

SIGTERM or SIGINT stops it warmly: the workers finish their current job (up to 30 seconds), then exit.
With ``--burst`` it instead works in this one process until no job is due, then exits.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from concord_core.api.runtime import Runtime
from concord_core.jobs.lease import has_due_job
from workers.rq_worker import run_worker

log = logging.getLogger("concord.worker")

STOP_TIMEOUT_SECONDS = 30.0
RESTART_DELAY_SECONDS = 0.5


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    started: float


class Supervisor:
    def __init__(self, runtime: Runtime, queues: Sequence[str], processes: int) -> None:
        self.runtime = runtime
        self.queues = list(queues)
        self.processes = processes
        self.children: list[Child] = []
        self.stopping = False

    def _spawn(self) -> Child:
        command = [sys.executable, "-m", "workers.rq_worker", "--queues", ",".join(self.queues)]
        return Child(subprocess.Popen(command, stdin=subprocess.DEVNULL), time.monotonic())

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("concord worker: %s received, stopping", signal.Signals(signum).name)
        self.stopping = True

    def _replace_dead(self) -> None:
        host = socket.gethostname()
        for index, child in enumerate(self.children):
            code = child.process.poll()
            if code is None:
                continue
            pid = child.process.pid
            log.warning("worker process %s exited with %s; re-queueing its jobs and replacing it", pid, code)
            self.runtime.jobs.maintenance.reap(f"{host}/{pid}/", f"exited with status {code}")
            if time.monotonic() - child.started < RESTART_DELAY_SECONDS:
                time.sleep(RESTART_DELAY_SECONDS)  # a process that dies at once: do not spin
            self.children[index] = self._spawn()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.children = [self._spawn() for _ in range(self.processes)]
        poll = self.runtime.settings.job_poll_seconds
        log.info("concord worker: %d processes on queues %s", self.processes, ", ".join(self.queues))
        while not self.stopping:
            try:
                self._replace_dead()
                self.runtime.jobs.maintenance.sweep()
            except Exception:  # the database or Redis is down for now: keep supervising
                log.exception("concord worker: maintenance sweep failed")
            deadline = time.monotonic() + poll
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.05, poll))
        self._stop_children()
        return 0

    def _stop_children(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def burst(runtime: Runtime, queues: Sequence[str]) -> int:
    """Relay and work until no job on ``queues`` is due (for scripts and tests)."""
    while True:
        runtime.jobs.maintenance.sweep(relay_grace=0.0)
        run_worker(runtime, queues, burst=True)
        if not has_due_job(runtime.db, list(queues)):
            return 0


def serve(runtime: Runtime, queues: Sequence[str] | None, processes: int, *, burst_mode: bool = False) -> int:
    """Run ``concord worker`` on ``runtime`` (whose settings must name Redis)."""
    chosen = list(queues) if queues else runtime.jobs.catalog.queues()
    if burst_mode:
        return burst(runtime, chosen)
    return Supervisor(runtime, chosen, processes).run()
