"""Credentials to principals: ``Authorization: Bearer <token or key>`` or ``X-API-Key: <key>``.

Every request looks its credential up afresh, so a revoked key, a logged-out session or a disabled user
fails on the very next request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import Connection, bindparam, select, update

from concord_core.auth.accounts import (
    PRINCIPAL_COLUMNS,
    USERS_WITH_MEMBERSHIPS,
    load_principal,
    principal_from_rows,
)
from concord_core.auth.keys import hash_key, looks_like_key
from concord_core.auth.principal import ANONYMOUS, READ_SCOPE, WRITE_SCOPE, Principal
from concord_core.auth.tokens import InvalidToken, read_access_token
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


def _from_api_key(connection: Connection, token: str) -> tuple[Principal, str | None]:
    """The key's principal, and the key's id if its lastUsedAt is due for an update."""
    rows = connection.execute(_KEY_PRINCIPAL, {"key_hash": hash_key(token)}).all()
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


def _from_token(connection: Connection, settings: Settings, token: str) -> Principal:
    try:
        claims = read_access_token(settings, token)
    except InvalidToken:
        raise AuthenticationFailed("bad_token") from None
    rows = connection.execute(_SESSION_PRINCIPAL, {"session_id": claims.session_id}).all()
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
    return replace(principal, session_id=row.session_id)


def authenticate(
    db: Database, settings: Settings, credential: str | None, local_owner_id: str | None
) -> Principal:
    """The principal for a credential (or for none: the local owner in public mode, else anonymous)."""
    # A plain connection, not a session: one Core query needs none of the ORM's machinery, nor a
    # transaction.
    if credential is None:
        if settings.auth_mode is AuthMode.PUBLIC and local_owner_id:
            with db.connect_for_one_read() as connection:
                return load_principal(connection, local_owner_id) or ANONYMOUS
        return ANONYMOUS
    if not looks_like_key(credential):
        if settings.auth_mode is AuthMode.APIKEY:
            raise AuthenticationFailed("tokens_disabled")
        with db.connect_for_one_read() as connection:
            return _from_token(connection, settings, credential)
    with db.connect_for_one_read() as connection:
        principal, touch = _from_api_key(connection, credential)
    if touch is not None:
        # lastUsedAt to the minute: one small write per key per minute, not one per request.
        with db.write() as session:
            session.execute(update(ApiKey).where(ApiKey.id == touch).values(last_used_at=utcnow()))
    return principal
