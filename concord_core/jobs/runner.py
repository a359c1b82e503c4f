"""The one runner both dispatchers share: run a claimed job's handler and record how it ended.

While the handler runs, the process's heartbeat thread renews its lease every third of its length. How the
handler ended is mapped to an outcome: its return value (a JSON object) is success; :class:`JobCancelled`
is cancellation; :class:`PermanentJobError`, an operator's refusal of bad input, or an unknown job type
fail at once; a timeout or any other exception is retried with backoff until ``max_attempts``; a worker
shutting down puts the job back in the queue. If the lease was lost meanwhile nothing is recorded: the job
belongs to someone else now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from concord_core.events.log import canonical_json
from concord_core.jobs.context import DurableJobContext, JobTimedOut, WorkerStopping
from concord_core.jobs.lease import Claim, LeaseLost
from concord_core.jobs.records import Journal
from concord_core.jobs.transitions import Cancelled, Failed, Outcome, Released, Succeeded
from concord_core.observability.context import bind, new_request_id
from concord_core.operators.errors import ErrorCode, OperatorError
from concord_core.plugins.contract import JobCancelled, PermanentJobError

if TYPE_CHECKING:
    from concord_core.jobs.service import JobService

log = logging.getLogger("concord.jobs")

#: Operator refusals that a retry may get past; any other code is final (bad input, no access).
RETRYABLE_CODES = frozenset({ErrorCode.CONFLICT, ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL})
MAX_ERROR_CHARS = 4000


class Heartbeats:
    """One thread per process renewing the lease of every job running in it, every ``interval`` seconds
    (a thread per job would cost more than a short job itself)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._contexts: set[DurableJobContext] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def keep(self, context: DurableJobContext) -> Iterator[None]:
        """Renew ``context``'s lease while the block runs."""
        with self._lock:
            self._contexts.add(context)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="concord-heartbeats", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._contexts.discard(context)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                running = list(self._contexts)
            for context in running:
                try:
                    context.beat()
                except Exception:  # a database hiccup: the next beat tries again
                    log.warning("heartbeat of job %s failed", context.job_id, exc_info=True)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


def _is_timeout(exc: BaseException) -> bool:
    """Our own cooperative timeout, or RQ's death penalty (which interrupts the handler in an RQ worker)."""
    return isinstance(exc, JobTimedOut) or type(exc).__name__ == "JobTimeoutException"


def run_handler(service: JobService, held: Claim, context: DurableJobContext) -> Outcome:
    """Call the handler and map how it ended to an outcome (LeaseLost propagates)."""
    spec = service.catalog.get(held.job_type)
    if spec is None:
        return Failed(f"no handler for job type {held.job_type!r} in this worker", retryable=False)
    try:
        output: Any = spec.handler(context, dict(held.input))
    except LeaseLost:
        raise
    except JobCancelled:
        return Cancelled()
    except WorkerStopping:
        return Released()
    except PermanentJobError as exc:
        return Failed(_error_text(exc), retryable=False)
    except OperatorError as exc:
        return Failed(_error_text(exc), retryable=exc.code in RETRYABLE_CODES)
    except Exception as exc:
        if _is_timeout(exc):
            return Failed(f"timed out after {held.timeout_seconds} s", run_outcome="timed_out")
        log.warning("job %s (%s) attempt %s raised", held.job_id, held.job_type, held.attempt, exc_info=True)
        return Failed(_error_text(exc))
    if output is None:
        output = {}
    if not isinstance(output, dict):
        return Failed(f"the handler returned {type(output).__name__}, not a JSON object", retryable=False)
    try:
        canonical_json(output)
    except (TypeError, ValueError) as exc:
        return Failed(f"the handler's output is not JSON: {exc}", retryable=False)
    return Succeeded(output)


def execute(
    service: JobService, held: Claim, *, then: Callable[[Journal], object] | None = None
) -> Outcome | None:
    """Run a claimed job to its end and record the outcome; None if the lease was lost on the way.
    ``then``: what else the transaction recording a success does (see :func:`.transitions.settle`)."""
    context = DurableJobContext(service, held)
    with bind(request_id=new_request_id(), user_id=held.owner_id, operation=f"job:{held.job_type}"):
        try:
            with service.heartbeats.keep(context):
                outcome = run_handler(service, held, context)
        except LeaseLost:
            log.warning(
                "job %s attempt %s lost its lease; its result is discarded", held.job_id, held.attempt
            )
            return None
        try:
            service.settle(held, outcome, then=then)
        except LeaseLost:
            log.warning("job %s attempt %s lost its lease before it finished", held.job_id, held.attempt)
            return None
    return outcome
