"""The append-only, hash-chained event log.

Each event's hash covers its content, its sequence number and the previous event's hash, so any edit,
deletion or reordering breaks the chain (:func:`verify_chain`). ``event_head`` holds the last sequence
number and hash; whoever moves it holds the *chain lock*.

**The invariant.** ``seq`` is the order in which events become visible in ``events``: an event with a
higher ``seq`` is never visible before one with a lower ``seq`` (so a reader tailing by ``seq`` never skips
one), and it is consistent with causality: if a transaction read what another had committed, its events
come after the other's. ``events`` only ever holds sealed events (numbered and hashed); a write's events
are in it when :meth:`~concord_core.db.engine.Database.write` returns.

**SQLite** serializes writers itself (``BEGIN IMMEDIATE``): an append reads the head, inserts the event and
moves the head inside the caller's transaction, so ``seq`` is commit order.

**PostgreSQL.** Holding the head until COMMIT returns would serialize every commit and its fsync behind the
previous one, which caps appends at the disk's commit rate however many clients there are. So the chain
lock is a transaction-level advisory lock (``pg_advisory_xact_lock``: no transaction id, no WAL, so taking
it and finding nothing to do costs no fsync), and an append, one statement either way
(``_APPEND_OR_STAGE``), takes one of two paths:

* *Direct*, when the outbox is empty and the chain lock is free (``pg_try_advisory_xact_lock``, which
  never waits): the transaction keeps the lock until it ends, and numbers, hashes and inserts its event
  and moves the head, as before the outbox existed. A lone writer pays one commit.
* *Staged* otherwise: the event goes into ``event_outbox``, under no lock on the chain, and the
  transaction commits concurrently with the others (PostgreSQL's group commit shares one fsync among
  them). Once a transaction has staged an event its later events are staged too, so they keep their
  order. After the commit, ``Database.write`` seals before it returns (:func:`seal_staged`): if none of its
  rows is left in the outbox, a sealer has already committed them into the log; otherwise it waits for the
  chain lock and seals every committed outbox row, its own and the others', so under contention one
  commit seals many appends.

*Sealing* is ``concord_seal_events`` (migration 0007), one statement in a transaction of its own: under the
chain lock, with a snapshot taken after the lock (so it sees what every earlier sealer committed), it moves
the committed outbox rows into ``events`` in outbox ``id`` order, numbering them from the head and hashing
each with the same format as the direct path and :func:`event_hash` (so :func:`verify_chain` and logs
written before the outbox existed stay valid), deletes them from the outbox and moves the head.

**Why the order is causal.** Say transaction B read something transaction A had committed, and both
append. A's event was committed (in the outbox or in ``events``) before B's read, and B appends after it.
If B goes direct, its append statement, later than its read, found the outbox empty: A's event had been
sealed (a sealer deleting A's row commits the events it inserted in the same transaction), and B numbers
its own from the newest head, after A's. If B stages, B's row has a larger ``id`` than A's (A took its
``id`` before committing, B after its read) and is committed after A's, so any sealer that sees B's row
sees A's too, pending or already sealed, and seals in ``id`` order. Either way ``seq(A) < seq(B)``. Two
edits of one DTU are such a pair: the second locks the row the first updated and reads it once the first
has committed. Events of transactions that did not read each other's work may be sealed in either order;
``created_at`` is informational.

**Visibility.** A transaction that moves the head holds the chain lock until it has committed and become
visible, and the next holder reads the head after taking the lock, so ``events`` only grows by a
contiguous run above the previous head: a reader never sees ``seq`` n+1 without n.

**Crashes.** A process killed between its commit and its seal leaves its rows in the outbox, committed:
the next seal anywhere takes them, and so do server start-up, the jobs maintenance loop, and
``concord events verify`` / ``concord replay --verify`` before they check (:func:`seal_pending`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from concord_core.db.engine import Database, after_commit, driver_fetchone
from concord_core.db.models import Event, EventHead
from concord_core.db.types import utcnow

log = logging.getLogger("concord.events")

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
    and hash the result in the same statement that takes it (see ``_APPEND_OR_STAGE``).
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
) -> int | None:
    """Append one event inside the caller's transaction; call it last, just before commit.

    The caller's pending changes are flushed first, so the chain lock is held only for the append itself
    and the commit that follows. Returns the event's sequence number, or None on PostgreSQL when the
    event was staged in the outbox: it is sealed after the commit, before the session's
    :meth:`~concord_core.db.engine.Database.write` returns (see the module docstring).
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
    # Not the unit of work, whose bookkeeping would cost more than the append itself: on PostgreSQL the
    # driver (:func:`driver_fetchone`), on SQLite Core statements, on the session's connection.
    connection = session.connection()
    if postgres:
        return _append_postgres(session, connection, values)
    head = connection.execute(
        select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
    ).one()
    event = Event(seq=head.seq + 1, prev_hash=head.hash, **values)
    event.hash = _hash_of(event)
    connection.execute(
        insert(_EVENTS), [{column.key: getattr(event, column.key) for column in _EVENTS.columns}]
    )
    connection.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=event.seq, hash=event.hash))
    return event.seq


_EVENTS = Event.metadata.tables["events"]
_HEAD = Event.metadata.tables["event_head"]

#: The advisory lock key of the chain (per database): "concord" in ASCII. ``concord_seal_events``
#: (migration 0007) takes the same key.
CHAIN_LOCK = 0x636F6E636F7264
#: ``session.info`` key: (the transaction, the outbox ids it staged).
_STAGED = "concord_staged_events"

# Direct append or staging, in one statement. ``head`` is the head row only if nothing is pending in the
# outbox and the chain lock is free (then taken, until this transaction ends); CASE evaluates in order,
# so a pending outbox means no lock attempt. ``FOR UPDATE`` returns the newest version of the head even
# though this statement's snapshot may predate the last sealer's commit (and keeps a process still running
# code from before the chain lock, which locked only this row, from forking the chain during an upgrade).
# The outbox check reads this statement's snapshot, taken before the lock: enough, since the events that
# must precede this one are those committed before the transaction's earlier statements (module
# docstring). With the head: number, hash (SHA-256 in SQL over the text :func:`_hashed_body` made), insert
# the event and move the head. Without it: stage the event in the outbox. Placeholders are psycopg's: both
# statements run on the driver (:func:`driver_fetchone`).
_APPEND_OR_STAGE = """
    WITH head AS (
        SELECT seq, hash FROM event_head
        WHERE id = 1
          AND CASE WHEN EXISTS (SELECT 1 FROM event_outbox) THEN false
                   ELSE pg_try_advisory_xact_lock(%(key)s) END
        FOR UPDATE
    ), next AS (
        SELECT seq + 1 AS seq, hash AS prev_hash,
               encode(sha256(convert_to(hash, 'UTF8') || %(before)s
                             || convert_to((seq + 1)::text, 'UTF8') || %(after)s), 'hex') AS hash
        FROM head
    ), appended AS (
        INSERT INTO events (seq, event_type, workspace_id, actor_id, request_id, entity_type, entity_id,
                            payload, created_at, prev_hash, hash)
        SELECT seq, %(event_type)s, %(workspace_id)s, %(actor_id)s, %(request_id)s, %(entity_type)s,
               %(entity_id)s, CAST(%(payload)s AS jsonb), %(created_at)s, prev_hash, hash
        FROM next
        RETURNING seq, hash
    ), moved AS (
        UPDATE event_head SET seq = appended.seq, hash = appended.hash
        FROM appended WHERE event_head.id = 1
        RETURNING appended.seq
    ), staged AS (
        INSERT INTO event_outbox (event_type, workspace_id, actor_id, request_id, entity_type, entity_id,
                                  payload, created_at, hashed_before_seq, hashed_after_seq)
        SELECT %(event_type)s, %(workspace_id)s, %(actor_id)s, %(request_id)s, %(entity_type)s,
               %(entity_id)s, CAST(%(payload)s AS jsonb), %(created_at)s, %(before)s, %(after)s
        WHERE NOT EXISTS (SELECT 1 FROM head)
        RETURNING id
    )
    SELECT seq, NULL::bigint AS staged FROM moved
    UNION ALL
    SELECT NULL, id FROM staged
"""

# The later events of a transaction that has staged one are staged too, so they keep their order.
_STAGE = """
    INSERT INTO event_outbox (event_type, workspace_id, actor_id, request_id, entity_type, entity_id,
                              payload, created_at, hashed_before_seq, hashed_after_seq)
    VALUES (%(event_type)s, %(workspace_id)s, %(actor_id)s, %(request_id)s, %(entity_type)s,
            %(entity_id)s, CAST(%(payload)s AS jsonb), %(created_at)s, %(before)s, %(after)s)
    RETURNING id
"""


def _append_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``_APPEND_OR_STAGE`` and ``_STAGE`` for an event's ``values`` (the columns)."""
    prefix, suffix = _hashed_body(**values)
    return {
        **values,
        "payload": canonical_json(values["payload"]),
        "before": f":{prefix}".encode(),
        "after": suffix.encode(),
        "key": CHAIN_LOCK,
    }


def _append_postgres(session: Session, connection: Connection, values: dict[str, Any]) -> int | None:
    params = _append_parameters(values)
    ids = _staged_ids(session)
    if ids is None:
        seq, staged = _fetch(connection, _APPEND_OR_STAGE, params)
        if staged is None:
            return int(seq)
        ids = []
        session.info[_STAGED] = (session.get_transaction(), ids)
        after_commit(session, lambda db: seal_staged(db, ids))
        ids.append(staged)
        return None
    (staged,) = _fetch(connection, _STAGE, params)
    ids.append(staged)
    return None


def _fetch(connection: Connection, statement: str, params: dict[str, Any]) -> tuple[Any, ...]:
    row = driver_fetchone(connection, statement, params)
    assert row is not None, "an append statement returns one row"
    return row


def _staged_ids(session: Session) -> list[int] | None:
    """The outbox ids the session's current transaction has staged, or None if it has staged nothing."""
    state = session.info.get(_STAGED)
    if state is not None and state[0] is session.get_transaction():
        ids: list[int] = state[1]
        return ids
    return None


#: Seal the committed outbox rows, or nothing if none of the given ids is left (see migration 0007).
_SEAL = "SELECT concord_seal_events(%s::bigint[])"


def _seal(db: Database, staged: list[int] | None) -> int:
    # A transaction of its own (autocommit): this runs after every staged write.
    with db.autocommit_statement() as connection:
        row = connection.execute(_SEAL, [staged]).fetchone()
    return int(row[0]) if row else 0


def seal_staged(db: Database, ids: list[int]) -> None:
    """After the commit of a transaction that staged the outbox rows ``ids``: make sure they are sealed
    before the write returns, sealing them (and every other committed row) unless a sealer already has.

    A failure here (the database went away between the commit and the seal) is logged, not raised: the
    write has committed and its events are durable in the outbox, where the next seal anywhere takes
    them; raising would report a committed change as failed."""
    try:
        _seal(db, ids)
    except Exception:
        log.exception(
            "sealing %d staged event(s) failed; they stay in the outbox for the next seal", len(ids)
        )


def seal_pending(db: Database) -> int:
    """Seal every committed outbox row (such as those of a process that died between its commit and its
    seal). Server start-up, the jobs maintenance loop and the log checks call it. Returns how many it
    sealed; with nothing to seal it costs one statement and writes nothing. SQLite never stages: 0."""
    if not db.is_postgres:
        return 0
    return _seal(db, None)


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
