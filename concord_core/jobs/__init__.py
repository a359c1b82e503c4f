"""Durable jobs and workflows: the database is the truth, RQ (or in-process threads) carries the work.

* :mod:`.catalog`: job types (handler, queue, timeout, attempts) from lens manifests and the kernel.
* :mod:`.enqueue`: the outbox: a job row, its ``JOB_QUEUED`` event and audit, in the caller's transaction;
  idempotency keys.
* :mod:`.lease`: claiming by lease (``FOR UPDATE SKIP LOCKED``), renewing it, fencing every write of a run.
* :mod:`.context`: the real ``JobContext`` a handler gets (checkpoints, progress, artifacts, operations).
* :mod:`.runner`: runs a claimed job with a heartbeat and maps how it ended to an outcome.
* :mod:`.transitions`: recording outcomes (success, retry with backoff, failure, cancellation), the reaper.
* :mod:`.control`: reading, cancelling and retrying jobs.
* :mod:`.dispatch` and :mod:`.redis_queue`: waking runners, in-process or through RQ; the relay.
* :mod:`.maintenance`: the reaper and relay loop.
* :mod:`.notify`: live-update wake-ups across processes (Redis, PostgreSQL, in-process).
* :mod:`.workflows`: resumable chains of job and review steps; :mod:`.dtu_import` (with
  :mod:`.dtu_bundle`) is the Import → Clean → Tag → Sync workflow.
* :mod:`.service`: the jobs runtime of one process, wiring the above together.
"""

from concord_core.jobs.catalog import JobCatalog, JobSpec
from concord_core.jobs.records import JobStatus
from concord_core.jobs.service import JobService

__all__ = ["JobCatalog", "JobService", "JobSpec", "JobStatus"]
