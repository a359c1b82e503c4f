"""The append-only, hash-chained event log.

Appends are serialized through the single ``event_head`` row (locked ``FOR UPDATE`` on PostgreSQL; SQLite
serializes writers itself), and the lock is held until the surrounding transaction commits, so sequence
order is commit order and a reader tailing by ``seq`` never skips an event. Each event's hash covers its
content and the previous hash, so any edit, deletion or reordering breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.db.models import Event, EventHead
from concord_core.db.types import utcnow

GENESIS_HASH = "0" * 64
EVENT_TYPE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
    body = canonical_json(
        {
            "seq": seq,
            "type": event_type,
            "workspace": workspace_id,
            "actor": actor_id,
            "request": request_id,
            "entity": [entity_type, entity_id],
            "payload": payload,
            "at": created_at.isoformat(),
        }
    )
    return hashlib.sha256(f"{prev_hash}:{body}".encode()).hexdigest()


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
    """Append one event inside the caller's transaction; call it last, just before commit."""
    if not EVENT_TYPE.match(event_type):
        raise ValueError(f"event type {event_type!r} is not UPPER_SNAKE")
    # Round-trip the payload through JSON now, so the hash covers exactly what the database will return.
    payload = json.loads(canonical_json(payload))
    head = session.execute(select(EventHead).where(EventHead.id == 1).with_for_update()).scalar_one()
    created_at = utcnow()
    seq = head.seq + 1
    event = Event(
        seq=seq,
        event_type=event_type,
        workspace_id=workspace_id,
        actor_id=actor_id,
        request_id=request_id,
        entity_type=entity_type,
        entity_id=entity_id,
        payload=payload,
        created_at=created_at,
        prev_hash=head.hash,
    )
    event.hash = _hash_of(event)
    head.seq, head.hash = seq, event.hash
    session.add(event)
    session.flush()
    return event


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
