"""The append-only, hash-chained event log.

Appends are serialized through the single ``event_head`` row (locked ``FOR UPDATE`` on PostgreSQL; SQLite
serializes writers itself), and the lock is held until the surrounding transaction commits, so sequence
order is commit order and a reader tailing by ``seq`` never skips an event. Each event's hash covers its
content and the previous hash, so any edit, deletion or reordering breaks the chain.

On PostgreSQL the append is one statement that locks the head, hashes and inserts the event and moves the
head, so the lock is held for that statement and the commit, not for a round trip per step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, LargeBinary, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from concord_core.db.models import Event, EventHead
from concord_core.db.types import utcnow

GENESIS_HASH = "0" * 64
EVENT_TYPE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _hashed_body(
    *,
    event_type: str,
    workspace_id: str | None,
    actor_id: str | None,
    request_id: str | None,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    created_at: datetime,
) -> tuple[str, str]:
    """The canonical JSON an event's hash covers, split where its sequence number goes.

    ``prefix + str(seq) + suffix`` is ``canonical_json`` of the whole body (keys sorted: the ones before
    ``seq`` in the prefix, the ones after it in the suffix), so PostgreSQL can fill in the sequence number
    and hash the result in the same statement that takes it (see :func:`_append_postgres`).
    """
    body: dict[str, Any] = {
        "type": event_type,
        "workspace": workspace_id,
        "actor": actor_id,
        "request": request_id,
        "entity": [entity_type, entity_id],
        "payload": payload,
        "at": created_at.isoformat(),
    }
    before = canonical_json({key: value for key, value in body.items() if key < "seq"})
    after = canonical_json({key: value for key, value in body.items() if key > "seq"})
    return before[:-1] + ',"seq":', "," + after[1:]


def event_hash(
    *,
    prev_hash: str,
    seq: int,
    event_type: str,
    workspace_id: str | None,
    actor_id: str | None,
    request_id: str | None,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    created_at: datetime,
) -> str:
    """SHA-256 (hex) of ``prev_hash``, a colon, and the canonical JSON of the event's content."""
    prefix, suffix = _hashed_body(
        event_type=event_type,
        workspace_id=workspace_id,
        actor_id=actor_id,
        request_id=request_id,
        entity_type=entity_type,
        entity_id=entity_id,
        payload=payload,
        created_at=created_at,
    )
    return hashlib.sha256(f"{prev_hash}:{prefix}{seq}{suffix}".encode()).hexdigest()


def _hash_of(event: Event) -> str:
    return event_hash(
        prev_hash=event.prev_hash,
        seq=event.seq,
        event_type=event.event_type,
        workspace_id=event.workspace_id,
        actor_id=event.actor_id,
        request_id=event.request_id,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        payload=event.payload,
        created_at=event.created_at,
    )


def _as_jsonb_returns(value: Any) -> Any:
    """``value`` as PostgreSQL's JSONB gives it back. JSONB keeps numbers as decimals and prints them
    without an exponent, so a float that Python writes with one (``1e+16``: any of 1e16 or more) comes
    back as an integer, and ``-0.0`` as ``0.0``; hashing the original would break the chain on read."""
    if isinstance(value, float):
        if value == 0.0:
            return 0.0
        return int(Decimal(repr(value))) if abs(value) >= 1e16 else value
    if isinstance(value, dict):
        return {key: _as_jsonb_returns(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_jsonb_returns(item) for item in value]
    return value


def append_event(
    session: Session,
    *,
    event_type: str,
    entity_type: str,
    entity_id: str,
    payload: dict[str, Any],
    workspace_id: str | None = None,
    actor_id: str | None = None,
    request_id: str | None = None,
) -> Event:
    """Append one event inside the caller's transaction; call it last, just before commit.

    The caller's pending changes are flushed first, so the chain head is locked only for the append
    itself and the commit that follows. The returned :class:`Event` is not attached to ``session``.
    """
    if not EVENT_TYPE.match(event_type):
        raise ValueError(f"event type {event_type!r} is not UPPER_SNAKE")
    # Round-trip the payload through JSON now, so the hash covers exactly what the database will return.
    payload = json.loads(canonical_json(payload))
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        payload = _as_jsonb_returns(payload)
    session.flush()
    # Taken before the head is locked, so concurrent appends may carry timestamps slightly out of
    # sequence order: ``seq`` is the order of the log, ``created_at`` is informational.
    created_at = utcnow()
    values: dict[str, Any] = {
        "event_type": event_type,
        "workspace_id": workspace_id,
        "actor_id": actor_id,
        "request_id": request_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "payload": payload,
        "created_at": created_at,
    }
    # Core statements on the session's connection, not the unit of work: the ORM's bookkeeping would cost
    # more than the append itself.
    connection = session.connection()
    if postgres:
        return _append_postgres(connection, values)
    head = connection.execute(
        select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
    ).one()
    event = Event(seq=head.seq + 1, prev_hash=head.hash, **values)
    event.hash = _hash_of(event)
    connection.execute(
        insert(_EVENTS), [{column.key: getattr(event, column.key) for column in _EVENTS.columns}]
    )
    connection.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=event.seq, hash=event.hash))
    return event


_EVENTS = Event.metadata.tables["events"]
_HEAD = Event.metadata.tables["event_head"]


# One statement, one round trip, while the head is locked: lock the head, hash the new event with the
# previous hash and the next sequence number, insert it and move the head. Serialized appends are bound
# by how long the lock is held, which is this statement plus the commit.
_APPEND_POSTGRES = text(
    """
    WITH head AS (
        SELECT seq, hash FROM event_head WHERE id = 1 FOR UPDATE
    ), next AS (
        SELECT seq + 1 AS seq, hash AS prev_hash,
               encode(sha256(convert_to(hash, 'UTF8') || :prefix
                             || convert_to((seq + 1)::text, 'UTF8') || :suffix), 'hex') AS hash
        FROM head
    ), appended AS (
        INSERT INTO events (seq, event_type, workspace_id, actor_id, request_id, entity_type, entity_id,
                            payload, created_at, prev_hash, hash)
        SELECT seq, :event_type, :workspace_id, :actor_id, :request_id, :entity_type, :entity_id,
               CAST(:payload AS jsonb), :created_at, prev_hash, hash
        FROM next
        RETURNING seq, prev_hash, hash
    )
    UPDATE event_head SET seq = appended.seq, hash = appended.hash
    FROM appended WHERE event_head.id = 1
    RETURNING appended.seq, appended.prev_hash, appended.hash
    """
).bindparams(bindparam("prefix", type_=LargeBinary), bindparam("suffix", type_=LargeBinary))


def _append_postgres(connection: Connection, values: dict[str, Any]) -> Event:
    prefix, suffix = _hashed_body(**values)
    row = connection.execute(
        _APPEND_POSTGRES,
        {
            **values,
            "payload": canonical_json(values["payload"]),
            "prefix": f":{prefix}".encode(),
            "suffix": suffix.encode(),
        },
    ).one()
    return Event(seq=row.seq, prev_hash=row.prev_hash, hash=row.hash, **values)


@dataclass(frozen=True)
class ChainReport:
    checked: int
    broken_at: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def iter_events(session: Session, after: int = 0, batch: int = 1000) -> Iterator[Event]:
    """Every event after ``after``, in sequence order, read in batches."""
    cursor = after
    while True:
        rows = session.scalars(select(Event).where(Event.seq > cursor).order_by(Event.seq).limit(batch)).all()
        if not rows:
            return
        yield from rows
        cursor = rows[-1].seq
        session.expunge_all()


def verify_chain(session: Session) -> ChainReport:
    """Walk the whole log; report the first event whose sequence, link or hash is wrong."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    for event in iter_events(session):
        if event.seq != expected_seq:
            return ChainReport(checked, event.seq, f"expected sequence {expected_seq}, found {event.seq}")
        if event.prev_hash != expected_prev:
            return ChainReport(checked, event.seq, "previous-hash link does not match the event before it")
        if _hash_of(event) != event.hash:
            return ChainReport(checked, event.seq, "content does not match its hash (event was altered)")
        expected_prev, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
    head = session.get(EventHead, 1)
    if head is None or head.seq != expected_seq - 1 or head.hash != expected_prev:
        return ChainReport(
            checked, expected_seq, "the chain head does not match the last event (log truncated)"
        )
    return ChainReport(checked)
