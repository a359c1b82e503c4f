"""The write path (DESIGN.md): validate, authorize, blob first, one transaction with state, version,
event and audit rows, typed result.

An operator opens :func:`write`; inside it, it checks access with :meth:`Change.authorize`, writes its rows,
and records events and the audit entry with :meth:`Change.emit` and :meth:`Change.audit`. They are
flushed at the end of the same transaction (events last, so the event-log lock is held briefly), so there
is never an event without its state or state without its event. A denial rolls the transaction back and
writes only the denial's audit row, in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.orm import Session

from concord_core.auth.policy import AccessDenied, Action, InstanceTarget, Owned, WorkspaceTarget, authorize
from concord_core.auth.principal import Principal
from concord_core.browse import indexes as _browse_indexes  # noqa: F401  (its flush hook keeps them current)
from concord_core.db.engine import Database
from concord_core.db.models import AuditEntry, Workspace
from concord_core.db.types import utcnow
from concord_core.events.log import append_event
from concord_core.observability.context import current
from concord_core.observability.metrics import counter
from concord_core.operators.errors import ErrorCode, OperatorError, from_validation_error, not_found
from concord_core.plugins.registry import LensRegistry
from concord_core.settings import Settings
from concord_core.storage import BlobStore

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Called after a write commits, with the committed change (jobs wake their dispatcher here).
AfterCommit = Callable[["Change"], None]


@dataclass
class OperationContext:
    """What every operator needs: where to write, who is asking, and the settings."""

    db: Database
    store: BlobStore
    principal: Principal
    settings: Settings
    lenses: LensRegistry | None = None
    after_commit: list[AfterCommit] = field(default_factory=list)

    def workspace_for(self, workspace_id: str | None, action: str = "create") -> str:
        """The workspace a new thing goes to: the one asked for, else the principal's own.

        Someone without a workspace of their own (anonymous) who names none is refused here, before any
        write: the refusal is audited and counted under ``action`` like any denial.
        """
        chosen = workspace_id or self.principal.default_workspace_id
        if chosen is None:
            message = "sign in to create things"
            record_denial(self, action, ("workspace", None, None), message)
            raise OperatorError.single(ErrorCode.UNAUTHENTICATED, message)
        return chosen


def validate(model: type[ModelT], data: Any, prefix: str = "") -> ModelT:
    """Parse input into ``model``; every problem becomes a VALIDATION field error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix) from None


@dataclass
class _PendingEvent:
    event_type: str
    entity_type: str
    entity_id: str
    payload: dict[str, Any]
    workspace_id: str | None


@dataclass
class Change:
    """One write in progress: its session and the events and audit entry it will commit."""

    ctx: OperationContext
    session: Session
    action: str
    events: list[_PendingEvent] = field(default_factory=list)
    audit_target: tuple[str | None, str | None, str | None] = (None, None, None)
    audit_detail: dict[str, Any] = field(default_factory=dict)
    #: A dry run: the transaction is rolled back and nothing (not even the audit entry) is recorded.
    dry_run: bool = False
    _audit_written: bool = field(default=False, init=False)

    @cached_property
    def connection(self) -> Connection:
        """The transaction's connection, for the write path's Core statements (asked of the session once)."""
        return self.session.connection()

    def authorize(
        self,
        action: Action,
        resource: Owned | WorkspaceTarget | InstanceTarget,
        target_type: str,
        target_id: str,
        field: str | None = None,
    ) -> None:
        """Check ``action`` on ``resource`` with the policy. A denial rolls the change back, is audited
        (target: ``target_type``/``target_id``) and refused; a hidden one as "<noun> not found" on
        ``field``, exactly what an unknown id gets."""
        self.audit_target = (target_type, target_id, resource.workspace_id)
        try:
            authorize(self.ctx.principal, action, resource)
        except AccessDenied as exc:
            raise _Denied(exc, target_type, target_id, resource.workspace_id, field) from None
        if (
            isinstance(resource, WorkspaceTarget)
            and self.ctx.principal.role_in(resource.workspace_id) is None
            and self.session.scalar(_WORKSPACE_EXISTS, {"id": resource.workspace_id}) is None
        ):
            # Only an admin passes the policy for a workspace that does not exist; without this check the
            # insert would fail on its foreign key as an internal error instead of NOT_FOUND. A role comes
            # from a membership row read for this request, which refers to its workspace (a foreign key),
            # and workspaces are never deleted: a workspace the principal belongs to needs no query.
            raise not_found("workspace", "workspaceId")

    def emit(
        self,
        event_type: str,
        entity_type: str,
        entity_id: str,
        payload: dict[str, Any],
        workspace_id: str | None,
    ) -> None:
        self.events.append(_PendingEvent(event_type, entity_type, entity_id, payload, workspace_id))

    def audit(self, target_type: str, target_id: str, workspace_id: str | None, **detail: Any) -> None:
        if self._audit_written:
            raise RuntimeError("the change's audit row is already written (write_audit)")
        self.audit_target = (target_type, target_id, workspace_id)
        self.audit_detail.update(detail)

    def write_audit(self) -> None:
        """Write the audit row now instead of when the change ends: for an operator that sends its rows
        in one batch (``pipelined``), so that the row goes with them and saves its own round trip. Its
        rows must be written first (Core statements, or flushed); nothing may be audited afterwards."""
        insert_audit(
            self.connection,
            [
                audit_row(
                    actor_id=self.ctx.principal.user_id,
                    action=self.action,
                    target=self.audit_target,
                    outcome="allowed",
                    detail=self.audit_detail,
                )
            ],
        )
        self._audit_written = True

    def _flush(self) -> None:
        request = current()
        # The operator's ORM changes first: the audit row goes in with Core (the unit of work's bookkeeping
        # costs more than the row), after the rows it may refer to.
        self.session.flush()
        if not self._audit_written:
            self.write_audit()
        for pending in self.events:
            append_event(
                self.session,
                event_type=pending.event_type,
                entity_type=pending.entity_type,
                entity_id=pending.entity_id,
                payload=pending.payload,
                workspace_id=pending.workspace_id,
                actor_id=self.ctx.principal.user_id,
                request_id=request.request_id,
            )


class _DryRun(Exception):
    """Rolls back the transaction of a change marked ``dry_run``."""


class _Denied(Exception):
    def __init__(
        self,
        denied: AccessDenied,
        target_type: str,
        target_id: str,
        workspace_id: str,
        field: str | None = None,
    ) -> None:
        self.denied = denied
        self.target = (target_type, target_id, workspace_id)
        self.field = field


#: Audit target types whose readable noun is not just the type with spaces for underscores.
_NOUNS = {"api_key": "API key"}


def noun(target_type: str | None) -> str:
    """How errors name a thing of an audit target type: ``lens_item`` is "lens item", ``api_key`` "API
    key". Operators use it for unknown ids too, so unknown and hidden read alike."""
    if not target_type:
        return "resource"
    return _NOUNS.get(target_type, target_type.replace("_", " "))


ACCESS_DENIED = counter("concord_access_denied_total", "Operations the policy refused.", ["action"])


def record_outcome(
    ctx: OperationContext,
    action: str,
    target: tuple[str | None, str | None, str | None],
    outcome: str,
    detail: dict[str, Any],
    actor_id: str | None = None,
) -> None:
    """An audit row, in its own transaction, for an attempt that changed nothing (denial, failed sign-in)."""
    with ctx.db.write() as session:
        insert_audit(
            session.connection(),
            [
                audit_row(
                    actor_id=actor_id or ctx.principal.user_id,
                    action=action,
                    target=target,
                    outcome=outcome,
                    detail=detail,
                )
            ],
        )


_WORKSPACES = Workspace.metadata.tables["workspaces"]
_WORKSPACE_EXISTS = select(_WORKSPACES.c.id).where(_WORKSPACES.c.id == bindparam("id"))
#: Inline: a single row's INSERT would otherwise return its generated id (RETURNING), which nothing reads.
_INSERT_AUDIT = insert(AuditEntry.metadata.tables["audit_log"]).inline()


def audit_row(
    *,
    actor_id: str | None,
    action: str,
    target: tuple[str | None, str | None, str | None],
    outcome: str,
    detail: dict[str, Any],
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The values of one ``audit_log`` row for :func:`insert_audit`, with the current request's id and
    client address."""
    request = current()
    return {
        "created_at": created_at or utcnow(),
        "actor_id": actor_id,
        "action": action,
        "target_type": target[0],
        "target_id": target[1],
        "workspace_id": target[2],
        "request_id": request.request_id,
        "client_addr": request.client_addr,
        "outcome": outcome,
        "detail": detail,
    }


def insert_audit(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Audit rows (:func:`audit_row`), written at once in one statement on the transaction's connection."""
    connection.execute(_INSERT_AUDIT, rows)


def record_denial(
    ctx: OperationContext, action: str, target: tuple[str | None, str | None, str | None], reason: str
) -> None:
    ACCESS_DENIED.labels(action=action).inc()
    record_outcome(ctx, action, target, "denied", {"reason": reason})


def _refusal(denied: _Denied, ctx: OperationContext, action: str) -> OperatorError:
    """Audit a policy denial and give the error the caller sees."""
    record_denial(ctx, action, denied.target, str(denied.denied))
    if denied.denied.hidden:
        # The same error an unknown id gets, so ids cannot be probed.
        return not_found(noun(denied.target[0]), denied.field)
    return OperatorError.single(ErrorCode.FORBIDDEN, str(denied.denied))


def check_access(
    ctx: OperationContext,
    action: str,
    access: Action,
    resource: Owned,
    target_type: str,
    target_id: str,
    field: str | None = None,
) -> None:
    """The policy check of an operation that reads before it writes (an export reads its sources first):
    a denial is audited under ``action`` and refused exactly as :meth:`Change.authorize` refuses it."""
    try:
        authorize(ctx.principal, access, resource)
    except AccessDenied as exc:
        denied = _Denied(exc, target_type, target_id, resource.workspace_id, field)
        raise _refusal(denied, ctx, action) from None


@contextmanager
def write(ctx: OperationContext, action: str) -> Iterator[Change]:
    """Run one operator's writes as a single transaction (see the module docstring)."""
    try:
        with ctx.db.write() as session:
            change = Change(ctx, session, action)
            yield change
            if change.dry_run:
                raise _DryRun
            change._flush()
    except _DryRun:
        return
    except _Denied as denied:
        raise _refusal(denied, ctx, action) from None
    for hook in ctx.after_commit:
        hook(change)
