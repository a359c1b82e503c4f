"""Sign-in throttling per account and per client address, with growing delays, kept in the database so it
holds across API processes and restarts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.db.models import AuthThrottle

MAX_DELAY_SECONDS = 15 * 60
#: Counters reset when no failure happened for this long.
FORGET_AFTER = timedelta(hours=1)


class Throttled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; try again in {retry_after} s")
        self.retry_after = retry_after


def throttle_keys(email: str, client_addr: str | None) -> list[str]:
    keys = [f"account:{email.strip().lower()}"]
    if client_addr:
        # The request context writes "host:port" (IPv6 too: "::1:50412"). Drop the port, which changes
        # with every connection, or each attempt would count against a fresh address.
        host, _, port = client_addr.rpartition(":")
        keys.append(f"addr:{host if host and port.isdigit() else client_addr}")
    return keys


def check(session: Session, keys: list[str], now: datetime) -> None:
    """Raise :class:`Throttled` if any key is still waiting."""
    rows = session.scalars(select(AuthThrottle).where(AuthThrottle.key.in_(keys)))
    waits = [int((row.locked_until - now).total_seconds()) + 1 for row in rows
             if row.locked_until is not None and row.locked_until > now]  # fmt: skip
    if waits:
        raise Throttled(max(waits))


def record_failure(session: Session, keys: list[str], now: datetime, free_attempts: int) -> None:
    for key in keys:
        row = session.get(AuthThrottle, key, with_for_update=True)
        if row is None:
            row = AuthThrottle(key=key, failures=0, last_failure_at=now)
            session.add(row)
        elif now - row.last_failure_at > FORGET_AFTER:
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        excess = row.failures - free_attempts
        if excess > 0:
            row.locked_until = now + timedelta(seconds=min(2 ** (excess - 1), MAX_DELAY_SECONDS))


def record_success(session: Session, email: str) -> None:
    row = session.get(AuthThrottle, throttle_keys(email, None)[0])
    if row is not None:
        session.delete(row)
