"""The real :class:`~concord_core.plugins.contract.JobContext`: what a running handler gets.

* ``checkpoint(state)`` commits the state (and renews the lease) before returning, so an attempt killed
  afterwards resumes from it; ``checkpoint_state`` is what the last committed call saved.
* ``progress(fraction, message)`` updates the job row (at most a few times a second) and publishes a live
  notification; it is not an event.
* Both raise :class:`JobCancelled` once a cancellation was requested, and :class:`JobTimedOut` past the job
  type's timeout; both raise :class:`LeaseLost` if the job was taken from this worker, and
  :class:`WorkerStopping` when this worker shuts down (the job goes back to the queue).
* ``write_artifact`` stores content-addressed output keyed by (job, step, role): a re-run returns the
  artifact version the first run recorded instead of writing a duplicate.
* ``operations`` is an operation context acting as the job's owner, so everything a handler reads or writes
  goes through the access policy and the write path.
"""

from __future__ import annotations

import io
import math
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from concord_core.db.models import JobArtifact
from concord_core.events.log import canonical_json
from concord_core.jobs.lease import Claim, LeaseLost, lock_held, renew
from concord_core.operators.artifacts import add_job_output
from concord_core.operators.base import OperationContext, write
from concord_core.plugins.contract import JobCancelled

if TYPE_CHECKING:
    from concord_core.jobs.service import JobService

#: The shortest interval between two progress writes of one job.
PROGRESS_INTERVAL = 0.25


class JobTimedOut(Exception):
    """The job ran past its type's ``timeoutSeconds``."""


class WorkerStopping(Exception):
    """This worker is shutting down; the job is put back in the queue (raised at a checkpoint or progress
    call, like cancellation)."""


class DurableJobContext:
    """One attempt's context; the process's heartbeat thread calls :meth:`beat`."""

    def __init__(self, service: JobService, held: Claim) -> None:
        self._service = service
        self._held = held
        self._state = held.checkpoint
        self._deadline = time.monotonic() + held.timeout_seconds
        self._lock = threading.Lock()
        self._cancel_requested = False
        self._lost = False
        self._pending: dict[str, Any] = {}
        self._last_write = 0.0
        self._operations: OperationContext | None = None

    # --- the JobContext protocol -------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self._held.job_id

    @property
    def attempt(self) -> int:
        return self._held.attempt

    @property
    def operations(self) -> OperationContext:
        if self._operations is None:
            self._operations = self._service.operations_for(self._held.owner_id, self._held.workspace_id)
        return self._operations

    @property
    def checkpoint_state(self) -> dict[str, Any] | None:
        return self._state

    @property
    def cancelled(self) -> bool:
        return self._cancel_requested

    def checkpoint(self, state: dict[str, Any]) -> None:
        self._check_running()
        canonical_json(state)  # refuse what cannot be stored, before anything is written
        self._write(checkpoint=state)
        self._state = state
        self._service.notifier.publish([f"job:{self.job_id}"])
        self._check_running()

    def progress(self, fraction: float, message: str | None = None) -> None:
        self._check_running()
        if not math.isfinite(fraction):
            raise ValueError("progress must be a finite number between 0 and 1")
        values = {"progress": min(max(fraction, 0.0), 1.0), "progress_message": message}
        with self._lock:
            self._pending.update(values)
            due = time.monotonic() - self._last_write >= PROGRESS_INTERVAL
        if due:
            self._write()
            self._service.notifier.publish([f"job:{self.job_id}"])
        self._check_running()

    def write_artifact(
        self,
        *,
        step: str,
        role: str,
        name: str,
        content: bytes | IO[bytes],
        media_type: str,
        label: str = "original",
        artifact_id: str | None = None,
    ) -> tuple[str, int]:
        self._check_running()
        recorded = self._recorded_artifact(step, role)
        if recorded is not None:
            return recorded
        ops = self.operations
        stream = io.BytesIO(content) if isinstance(content, bytes) else content
        blob = ops.store.put_stream(stream)
        try:
            with write(ops, "job.artifact") as change:
                lock_held(change.session, self._held)
                artifact, version = add_job_output(
                    change,
                    job_id=self.job_id,
                    workspace_id=self._held.workspace_id,
                    blob=blob,
                    name=name,
                    media_type=media_type,
                    label=label,
                    artifact_id=artifact_id,
                )
                change.session.add(
                    JobArtifact(
                        job_id=self.job_id,
                        step_key=step,
                        role=role,
                        artifact_id=artifact.id,
                        artifact_version=version.version,
                    )
                )
                change.audit("job", self.job_id, self._held.workspace_id, step=step, role=role)
        except IntegrityError:
            # A zombie of an earlier attempt linked the same (job, step, role) first: that one stands.
            recorded = self._recorded_artifact(step, role)
            if recorded is None:
                raise
            return recorded
        return artifact.id, version.version

    # --- for the runner ----------------------------------------------------------------------------

    def beat(self) -> None:
        """Renew the lease (flushing pending progress); learn about cancellation and lost leases. Past the
        deadline plus one lease the heartbeat stops renewing, so a handler stuck where it cannot be
        interrupted loses its lease and the reaper takes the job over."""
        if time.monotonic() > self._deadline + self._service.settings.job_lease_seconds:
            return
        try:
            self._write()
        except LeaseLost:
            self._lost = True

    # --- internals -------------------------------------------------------------------------------------

    def _write(self, **values: Any) -> None:
        with self._lock:
            values = {**self._pending, **values}
            self._pending = {}
            self._last_write = time.monotonic()
        state = renew(self._service.db, self._held, self._service.settings.job_lease_seconds, **values)
        self._cancel_requested = self._cancel_requested or state.cancel_requested

    def _recorded_artifact(self, step: str, role: str) -> tuple[str, int] | None:
        with self._service.db.read() as session:
            link = session.get(JobArtifact, (self.job_id, step, role))
            return (link.artifact_id, link.artifact_version) if link is not None else None

    def _check_running(self) -> None:
        if self._lost:
            raise LeaseLost(self.job_id)
        if self._cancel_requested:
            raise JobCancelled(self.job_id)
        if self._service.stopping.is_set():
            raise WorkerStopping(self.job_id)
        if time.monotonic() > self._deadline:
            raise JobTimedOut(f"timed out after {self._held.timeout_seconds} s")
