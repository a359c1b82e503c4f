"""Tailing the event log from a cursor the client keeps, showing each principal only what they may see.

The cursor is an event's sequence number. ``seq`` is the order in which events become visible in the log
(:mod:`concord_core.events.log`: the log only ever grows by a contiguous run above its head, and only
sealed events are in it), so reading ``seq > cursor`` in order never skips an event: a client that
reconnects with the last cursor it saw misses nothing. Events it may not see are passed over, and the
cursor still moves past them (:attr:`TailPage.cursor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.auth.policy import can_read_event, readable_events_filter
from concord_core.auth.principal import Principal
from concord_core.db.models import Event

#: Payload keys under which an event carries the state of a thing with a visibility of its own.
STATE_KEYS = ("dtu", "artifact", "item")


@dataclass(frozen=True)
class TailPage:
    events: list[Event]
    cursor: int  # the last sequence number looked at (visible or not)


def entity_state(event: Event) -> dict[str, Any] | None:
    for key in STATE_KEYS:
        state = event.payload.get(key)
        if isinstance(state, dict):
            return state
    return None


def head(session: Session) -> int:
    """The sequence number of the newest event (0 when the log is empty)."""
    return int(session.scalar(select(Event.seq).order_by(Event.seq.desc()).limit(1)) or 0)


def read_after(
    session: Session, principal: Principal, after: int, types: Sequence[str] | None = None, limit: int = 500
) -> TailPage:
    """Up to ``limit`` events after ``after`` that ``principal`` may see, oldest first."""
    # The head first: every event up to it is visible (the log grows by contiguous runs), so the cursor can
    # move up to it even past events the filters leave out, and never past one not yet visible.
    newest = head(session)
    query = (
        select(Event)
        .where(Event.seq > after, Event.seq <= newest, readable_events_filter(principal, Event))
        .order_by(Event.seq)
        .limit(limit)
    )
    if types:
        query = query.where(Event.event_type.in_(list(types)))
    rows = list(session.scalars(query))
    visible = [row for row in rows if can_read_event(principal, row.workspace_id, entity_state(row))]
    cursor = rows[-1].seq if len(rows) == limit else max(after, newest)
    return TailPage(visible, cursor)
