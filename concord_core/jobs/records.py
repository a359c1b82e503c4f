"""What a job transition leaves: an event with the job's state and, if a person started it, an audit row.

Only state transitions are events (``JOB_QUEUED``, ``JOB_STARTED``, ``JOB_SUCCEEDED``, ``JOB_FAILED``,
``JOB_RETRY_SCHEDULED``, ``JOB_CANCEL_REQUESTED``, ``JOB_CANCELLED``); progress and heartbeats update the row
and publish a live notification, so they never flood the hash-chained log.
"""

from __future__ import annotations

import enum
import hashlib
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Insert,
    String,
    Table,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from concord_core.auth.policy import Visibility
from concord_core.db.models import AuditEntry, Job
from concord_core.db.types import utcnow
from concord_core.events.log import append_event, canonical_json
from concord_core.observability.context import current
from concord_core.operators.base import Change


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A Core insert on the session's connection: the ORM's bulk-insert path costs more than the row itself.
_AUDIT_TABLE = typing.cast(Table, AuditEntry.__table__)
_AUDIT = insert(_AUDIT_TABLE)
_AUDIT_COLUMNS = [
    "created_at",
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "workspace_id",
    "request_id",
    "client_addr",
    "outcome",
    "detail",
]

#: A job as a transition sees it: the ORM row, or a Core row of :data:`STATE_COLUMNS` (the hot paths of
#: claiming and succeeding read it from ``UPDATE ... RETURNING``); only its attributes are read.
JobState = Job | Row[Any]

#: The ``jobs`` columns a transition reads from a :data:`JobState`: its event's snapshot
#: (:func:`job_snapshot`), the input (a workflow step is recognised by it) and the checkpoint (a claim hands
#: it to the handler).
#: ``UPDATE ... RETURNING`` returns these, not every column: each returned column costs the driver and
#: SQLAlchemy a description and a conversion on every job.
STATE_COLUMNS = (
    "id",
    "workspace_id",
    "owner_id",
    "job_type",
    "queue",
    "input",
    "input_hash",
    "idempotency_key",
    "status",
    "attempts",
    "max_attempts",
    "timeout_seconds",
    "run_after",
    "checkpoint",
    "output",
    "error",
    "finished_at",
)

#: The live-update topic published whenever events were appended.
EVENTS_TOPIC = "events"

TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobAccess:
    """A job as the access policy sees it: readable by its workspace's members, editable by its owner and
    the workspace's editors (visibility ``workspace``)."""

    visibility = Visibility.WORKSPACE.value

    def __init__(self, workspace_id: str, owner_id: str | None) -> None:
        self.workspace_id = workspace_id
        self.owner_id = owner_id or ""


def input_hash(value: Any) -> str:
    """SHA-256 of the canonical JSON of a job's input: what "the same input" means for idempotency keys."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_snapshot(job: JobState) -> dict[str, Any]:
    """The job's state as events carry it (the input is named by its hash; the output is included)."""
    return {
        "id": job.id,
        "workspace_id": job.workspace_id,
        "owner_id": job.owner_id,
        "job_type": job.job_type,
        "queue": job.queue,
        "input_hash": job.input_hash,
        "idempotency_key": job.idempotency_key,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout_seconds": job.timeout_seconds,
        "run_after": _time(job.run_after),
        "output": job.output,
        "error": job.error,
        "finished_at": _time(job.finished_at),
    }


@dataclass
class _Pending:
    event_type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any]
    workspace_id: str | None
    actor_id: str | None


@dataclass
class Journal:
    """The events and audit rows of one transaction of job or workflow transitions, appended at its end
    (events last, so the event-log lock is held briefly), plus what to do once it commits: jobs to dispatch
    and live-update topics to publish."""

    session: Session
    #: Inside an operator's change, events go through it (its after-commit hook dispatches and publishes)
    #: and its own audit row records the action, so the journal writes no audit rows of its own.
    change: Change | None = None
    events: list[_Pending] = field(default_factory=list)
    dispatch: list[JobState] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)

    def job(
        self,
        job: JobState,
        event_type: str,
        *,
        action: str,
        detail: dict[str, Any] | None = None,
        outcome: str = "allowed",
        audited: bool = False,
    ) -> None:
        """Record a job transition: its event and, when a person started the job, an audit row. The actor is
        the job's owner: a running job acts on their behalf. ``audited``: the statement that made the
        transition wrote the audit row already (see :func:`audit_from`)."""
        extra = detail or {}
        if job.owner_id is not None and self.change is None and not audited:
            self.audit(
                job.owner_id,
                action,
                "job",
                job.id,
                job.workspace_id,
                {"job_type": job.job_type, "attempt": job.attempts, **extra},
                outcome,
            )
        self.event(
            event_type, "job", job.id, {"job": job_snapshot(job), **extra}, job.workspace_id, job.owner_id
        )
        self.topics.add(f"job:{job.id}")
        if job.status == JobStatus.QUEUED:
            self.dispatch.append(job)

    def event(
        self,
        event_type: str,
        entity_type: str,
        entity_id: str,
        payload: dict[str, Any],
        workspace_id: str | None,
        actor_id: str | None,
    ) -> None:
        self.events.append(_Pending(event_type, entity_type, entity_id, payload, workspace_id, actor_id))

    def audit(
        self,
        actor_id: str | None,
        action: str,
        target_type: str,
        target_id: str,
        workspace_id: str | None,
        detail: dict[str, Any],
        outcome: str = "allowed",
    ) -> None:
        if self.change is not None:
            return
        request = current()
        self.session.connection().execute(
            _AUDIT,
            {
                "created_at": utcnow(),
                "actor_id": actor_id,
                "action": action,
                "target_type": target_type,
                "target_id": target_id,
                "workspace_id": workspace_id,
                "request_id": request.request_id,
                "client_addr": request.client_addr,
                "outcome": outcome,
                "detail": detail,
            },
        )

    def flush(self) -> None:
        """Append the recorded events (or hand them to the change); call it last in the transaction."""
        request_id = current().request_id
        for pending in self.events:
            if self.change is not None:
                self.change.emit(
                    pending.event_type,
                    pending.entity_type,
                    pending.entity_id,
                    pending.payload,
                    pending.workspace_id,
                )
                continue
            append_event(
                self.session,
                event_type=pending.event_type,
                entity_type=pending.entity_type,
                entity_id=pending.entity_id,
                payload=pending.payload,
                workspace_id=pending.workspace_id,
                actor_id=pending.actor_id,
                request_id=request_id,
            )
        if self.events:
            self.topics.add(EVENTS_TOPIC)
        self.events = []


def audit_from(
    source: FromClause, action: str, detail: dict[str, ColumnElement[Any]] | None = None
) -> Insert:
    """PostgreSQL: ``INSERT INTO audit_log ... SELECT`` the audit row :meth:`Journal.job` writes for a job
    transition, from ``source`` (a CTE of ``jobs`` rows an ``UPDATE ... RETURNING`` changed), so the
    transition and its audit row take one statement. Bind parameters: ``now`` and :func:`request_params`
    (and whatever ``detail`` uses); none is named like a column, or an ``UPDATE`` would also set it."""
    pairs: list[Any] = ["job_type", source.c.job_type, "attempt", source.c.attempts]
    for key, value in (detail or {}).items():
        pairs += [key, value]
    text = String()
    return insert(_AUDIT_TABLE).from_select(
        _AUDIT_COLUMNS,
        select(
            bindparam("now", type_=_AUDIT_TABLE.c.created_at.type),
            source.c.owner_id,
            literal(action, text),
            literal("job", text),
            source.c.id,
            source.c.workspace_id,
            cast(bindparam("audit_request", type_=text), text),
            cast(bindparam("audit_client", type_=text), text),
            literal("allowed", text),
            func.jsonb_build_object(*[literal(p, text) if isinstance(p, str) else p for p in pairs]),
        ).where(source.c.owner_id.is_not(None)),
    )


def request_params() -> dict[str, Any]:
    """The bind parameters of :func:`audit_from` saying which request (if any) made the transition."""
    request = current()
    return {"audit_request": request.request_id, "audit_client": request.client_addr}
