"""Credentials to principals: ``Authorization: Bearer <token or key>`` or ``X-API-Key: <key>``.

Every request looks its credential up afresh, so a revoked key, a logged-out session or a disabled user
fails on the very next request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from concord_core.auth.accounts import load_principal
from concord_core.auth.keys import hash_key, looks_like_key
from concord_core.auth.principal import ANONYMOUS, READ_SCOPE, WRITE_SCOPE, Principal
from concord_core.auth.tokens import InvalidToken, read_access_token
from concord_core.db.engine import Database
from concord_core.db.models import ApiKey, AuthSession
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


def _from_api_key(session: Session, token: str) -> tuple[Principal, str | None]:
    """The key's principal, and the key's id if its lastUsedAt is due for an update."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    now = utcnow()
    if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise AuthenticationFailed("bad_key")
    scopes = frozenset(key.scopes) & {READ_SCOPE, WRITE_SCOPE}
    principal = load_principal(session, key.user_id, scopes=scopes)
    if principal is None:
        raise AuthenticationFailed("user_disabled")
    due = key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION
    return principal, key.id if due else None


def _from_token(session: Session, settings: Settings, token: str) -> Principal:
    try:
        claims = read_access_token(settings, token)
    except InvalidToken:
        raise AuthenticationFailed("bad_token") from None
    row = session.get(AuthSession, claims.session_id)
    if (
        row is None
        or row.user_id != claims.user_id
        or row.revoked_at is not None
        or row.expires_at <= utcnow()
    ):
        raise AuthenticationFailed("session_ended")
    principal = load_principal(session, claims.user_id)
    if principal is None:
        raise AuthenticationFailed("user_disabled")
    # Remember the session behind the token: logout ends exactly this one.
    return replace(principal, session_id=row.id)


def authenticate(
    db: Database, settings: Settings, credential: str | None, local_owner_id: str | None
) -> Principal:
    """The principal for a credential (or for none: the local owner in public mode, else anonymous)."""
    if credential is None:
        if settings.auth_mode is AuthMode.PUBLIC and local_owner_id:
            with db.read() as session:
                return load_principal(session, local_owner_id) or ANONYMOUS
        return ANONYMOUS
    if not looks_like_key(credential):
        if settings.auth_mode is AuthMode.APIKEY:
            raise AuthenticationFailed("tokens_disabled")
        with db.read() as session:
            return _from_token(session, settings, credential)
    with db.read() as session:
        principal, touch = _from_api_key(session, credential)
    if touch is not None:
        # lastUsedAt to the minute: one small write per key per minute, not one per request.
        with db.write() as session:
            session.execute(update(ApiKey).where(ApiKey.id == touch).values(last_used_at=utcnow()))
    return principal
