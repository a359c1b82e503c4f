"""Credentials to principals: ``Authorization: Bearer <token or key>`` or ``X-API-Key: <key>``.

Every request looks its credential up afresh, so a revoked key, a logged-out session or a disabled user
fails on the very next request. The lookup is written once (:func:`_steps`) and run either through
SQLAlchemy in the caller's thread (:func:`authenticate`) or, on PostgreSQL, awaited on the event loop
(:func:`authenticate_async`).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import Select, bindparam, select, update

from concord_core.auth.accounts import (
    PRINCIPAL_COLUMNS,
    PRINCIPAL_OF_USER,
    USERS_WITH_MEMBERSHIPS,
    principal_from_rows,
)
from concord_core.auth.keys import hash_key, looks_like_key
from concord_core.auth.principal import ANONYMOUS, READ_SCOPE, WRITE_SCOPE, Principal
from concord_core.auth.tokens import InvalidToken, read_access_token
from concord_core.db.async_reads import AsyncReads
from concord_core.db.engine import Database
from concord_core.db.models import ApiKey
from concord_core.db.types import utcnow
from concord_core.observability.metrics import counter
from concord_core.settings import AuthMode, Settings

MAX_CREDENTIAL_LENGTH = 4096
LAST_USED_RESOLUTION = timedelta(minutes=1)

AUTH_FAILURES = counter("concord_auth_failures_total", "Requests refused for bad credentials.", ["reason"])


class AuthenticationFailed(Exception):
    """The request carried credentials, and they are not valid. Always a 401, never more detail."""

    def __init__(self, reason: str) -> None:
        super().__init__("invalid credentials")
        self.reason = reason
        AUTH_FAILURES.labels(reason=reason).inc()


def credential_from(headers: Mapping[str, str]) -> str | None:
    """The credential a request carries, or None; malformed headers are an authentication failure."""
    authorization = headers.get("authorization")
    api_key = headers.get("x-api-key")
    if authorization is not None and api_key is not None:
        raise AuthenticationFailed("two_credentials")
    if api_key is not None:
        credential = api_key.strip()
    elif authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationFailed("unsupported_scheme")
        credential = credential.strip()
    else:
        return None
    if not credential or len(credential) > MAX_CREDENTIAL_LENGTH:
        raise AuthenticationFailed("malformed")
    return credential


_KEYS = ApiKey.metadata.tables["api_keys"]
_SESSIONS = ApiKey.metadata.tables["sessions"]
_USERS = ApiKey.metadata.tables["users"]

# One indexed query per credential, built once: the credential's row joined to its user's principal rows.
_KEY_PRINCIPAL = (
    select(
        _KEYS.c.id.label("key_id"),
        _KEYS.c.user_id.label("credential_user_id"),
        _KEYS.c.scopes,
        _KEYS.c.expires_at,
        _KEYS.c.revoked_at,
        _KEYS.c.last_used_at,
        *PRINCIPAL_COLUMNS,
    )
    .select_from(_KEYS.join(USERS_WITH_MEMBERSHIPS, _USERS.c.id == _KEYS.c.user_id))
    .where(_KEYS.c.key_hash == bindparam("key_hash"))
)
_SESSION_PRINCIPAL = (
    select(
        _SESSIONS.c.id.label("session_id"),
        _SESSIONS.c.user_id.label("credential_user_id"),
        _SESSIONS.c.expires_at,
        _SESSIONS.c.revoked_at,
        *PRINCIPAL_COLUMNS,
    )
    .select_from(_SESSIONS.join(USERS_WITH_MEMBERSHIPS, _USERS.c.id == _SESSIONS.c.user_id))
    .where(_SESSIONS.c.id == bindparam("session_id"))
)


#: A query to run (a statement and its parameters); its rows are sent back into the steps.
Query = tuple[Select[Any], dict[str, Any]]
#: The principal, and the id of the API key whose lastUsedAt is due for an update (None if none).
Outcome = tuple[Principal, str | None]


def _steps(
    settings: Settings, credential: str | None, local_owner_id: str | None
) -> Generator[Query, Sequence[Any], Outcome]:
    """How a credential becomes a principal, whatever runs the queries: yields each query and is sent its
    rows; returns the outcome (raises AuthenticationFailed for bad credentials). A credential needs one
    query, none at all needs none (the local owner's principal in public mode, else anonymous)."""
    if credential is None:
        if settings.auth_mode is AuthMode.PUBLIC and local_owner_id:
            rows = yield PRINCIPAL_OF_USER, {"user_id": local_owner_id}
            return principal_from_rows(local_owner_id, rows) or ANONYMOUS, None
        return ANONYMOUS, None
    if not looks_like_key(credential):
        if settings.auth_mode is AuthMode.APIKEY:
            raise AuthenticationFailed("tokens_disabled")
        try:
            claims = read_access_token(settings, credential)
        except InvalidToken:
            raise AuthenticationFailed("bad_token") from None
        rows = yield _SESSION_PRINCIPAL, {"session_id": claims.session_id}
        row = rows[0] if rows else None
        if (
            row is None
            or row.credential_user_id != claims.user_id
            or row.revoked_at is not None
            or row.expires_at <= utcnow()
        ):
            raise AuthenticationFailed("session_ended")
        principal = principal_from_rows(claims.user_id, rows)
        if principal is None:
            raise AuthenticationFailed("user_disabled")
        # Remember the session behind the token: logout ends exactly this one.
        return replace(principal, session_id=row.session_id), None
    rows = yield _KEY_PRINCIPAL, {"key_hash": hash_key(credential)}
    now = utcnow()
    key = rows[0] if rows else None
    if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise AuthenticationFailed("bad_key")
    scopes = frozenset(key.scopes) & {READ_SCOPE, WRITE_SCOPE}
    principal = principal_from_rows(key.credential_user_id, rows, scopes=scopes)
    if principal is None:
        raise AuthenticationFailed("user_disabled")
    due = key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION
    return principal, key.key_id if due else None


def _touch(db: Database, key_id: str) -> None:
    """lastUsedAt to the minute: one small write per key per minute, not one per request."""
    with db.write() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def authenticate(
    db: Database, settings: Settings, credential: str | None, local_owner_id: str | None
) -> Principal:
    """The principal for a credential (or for none: the local owner in public mode, else anonymous)."""
    steps = _steps(settings, credential, local_owner_id)
    try:
        query = next(steps)
        # A plain connection, not a session: one Core query needs none of the ORM's machinery, nor a
        # transaction.
        with db.connect_for_one_read() as connection:
            steps.send(connection.execute(*query).all())
        raise AssertionError("authentication takes one query at most")
    except StopIteration as done:
        principal, touch = done.value
    if touch is not None:
        _touch(db, touch)
    return principal


async def authenticate_async(
    reads: AsyncReads, db: Database, settings: Settings, credential: str | None, local_owner_id: str | None
) -> Principal:
    """:func:`authenticate` with its query awaited on the event loop (:mod:`concord_core.db.async_reads`).
    The rows are the driver's: the checks read timestamps, JSON scopes and text, which it returns as
    SQLAlchemy would (UTC timestamps: the connections' time zone is UTC)."""
    steps = _steps(settings, credential, local_owner_id)
    try:
        query = next(steps)
        steps.send(await reads.rows(*query))
        raise AssertionError("authentication takes one query at most")
    except StopIteration as done:
        principal, touch = done.value
    if touch is not None:
        await anyio.to_thread.run_sync(_touch, db, touch)
    return principal
