"""One RQ worker process, and :func:`drain`, the function every Concord RQ message calls.

A message names only a Concord queue: it wakes one worker, which claims the due jobs of that queue in the
database one after another and runs them (see :mod:`concord_core.jobs.redis_queue` for the message model,
and for why a lost message never loses a job). The jobs table decides what runs, never Redis. The worker
is RQ's ``SimpleWorker`` (the job runs in the worker process itself), so there is no fork per job;
``concord worker`` supervises several of these processes and replaces any that dies.

    python -m workers.rq_worker --queues default,render
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis
from rq.timeouts import JobTimeoutException, get_default_death_penalty_class
from rq.worker import SimpleWorker

from concord_core.api.runtime import Runtime, freeze_startup_heap
from concord_core.jobs.dispatch import worker_name
from concord_core.jobs.lease import Claim
from concord_core.jobs.redis_queue import (
    DRAIN_MAX_JOBS,
    DRAIN_SECONDS,
    RESULT_TTL_SECONDS,
    TIMEOUT_MARGIN_SECONDS,
)
from concord_core.jobs.service import JobService
from concord_core.settings import Settings, load_settings

log = logging.getLogger("concord.worker")

_service: JobService | None = None


def _jobs() -> JobService:
    """This process's jobs runtime (opened on first use when RQ was started some other way)."""
    global _service
    if _service is None:
        _service = Runtime.open(load_settings()).jobs
    return _service


class ConcordWorker(SimpleWorker):
    """RQ's SimpleWorker; on a warm shutdown (SIGTERM, SIGINT) it also tells the running job to hand itself
    back to the queue at its next checkpoint or progress call, instead of running on to the end."""

    def request_stop(self, signum: Any, frame: Any) -> None:
        if _service is not None:
            _service.stopping.set()
        super().request_stop(signum, frame)


def _job_deadline(held: Claim) -> AbstractContextManager[object]:
    """RQ's death penalty for one drained job: its type's timeout plus room to record the outcome, as RQ
    gave a message of its own (a handler that ignores its cooperative timeout is interrupted with RQ's
    ``JobTimeoutException``, which the runner records as a timeout)."""
    penalty = get_default_death_penalty_class()
    return penalty(held.timeout_seconds + TIMEOUT_MARGIN_SECONDS, JobTimeoutException, job_id=held.job_id)


def drain(queue: str) -> int:
    """Run the due jobs of Concord queue ``queue`` here, one after another, up to the drain's bounds; if it
    stopped at a bound, wake a worker for the queue again. Returns how many jobs ran."""
    service = _jobs()
    # Each job gets its own death penalty (RQ's alarm for this message is replaced by the first job's).
    ran, bounded = service.drain(
        queue, worker_name("rq"), max_jobs=DRAIN_MAX_JOBS, max_seconds=DRAIN_SECONDS, guard=_job_deadline
    )
    if bounded and service.rq is not None:
        try:
            service.rq.wake(queue)
        except redis.RedisError as exc:
            log.warning("could not wake a worker for the rest of queue %s (%s); the relay will", queue, exc)
    return ran


def perform(job_id: str) -> bool:
    """Run Concord job ``job_id`` here if it is claimable; returns whether it ran. What the per-job messages
    of older versions call (this version sends :func:`drain` wake-ups only)."""
    return _jobs().run_job(job_id, worker_name("rq"))


def run_worker(runtime: Runtime, queues: Sequence[str], *, burst: bool = False) -> bool:
    """Work ``queues`` with an RQ SimpleWorker in this process until stopped (or, with ``burst``, until they
    are empty). Returns whether any job ran."""
    global _service
    _service = runtime.jobs
    rq = runtime.jobs.rq
    if rq is None:
        raise RuntimeError("RQ workers need CONCORD_REDIS_URL")
    worker = ConcordWorker(
        [rq.queue(queue) for queue in queues],
        connection=rq.connection,
        name=f"{rq.namespace}:{socket.gethostname()}:{os.getpid()}",
        default_result_ttl=RESULT_TTL_SECONDS,
    )
    return bool(worker.work(burst=burst, logging_level=runtime.settings.log_level))


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.rq_worker", description=__doc__)
    parser.add_argument("--queues", help="comma-separated queue names (default: every known queue)")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    args = parser.parse_args(argv)
    from concord_core.observability.logging import configure_logging

    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_json)
    runtime = Runtime.open(settings)
    freeze_startup_heap()
    queues = args.queues.split(",") if args.queues else runtime.jobs.catalog.queues()
    try:
        run_worker(runtime, queues, burst=args.burst)
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
