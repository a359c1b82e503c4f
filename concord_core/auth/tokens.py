"""Signed access tokens (JWT) and opaque rotating refresh tokens, each tied to a session row.

Access tokens: HS256 only (an explicit allow-list, so ``none`` and algorithm confusion are refused),
with expiry, issuer and audience checked. Refresh tokens are ``<session id>.<secret>``; the session keeps
the hash of the current secret, so a token used twice is detected (and the session revoked).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from concord_core.settings import Settings

ALGORITHMS = ["HS256"]


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str


def issue_access_token(settings: Settings, user_id: str, session_id: str, now: datetime) -> str:
    assert settings.jwt_secret is not None
    claims = {
        "sub": user_id,
        "sid": session_id,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=settings.access_token_seconds)).timestamp()),
        "typ": "access",
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHMS[0])


def read_access_token(settings: Settings, token: str) -> AccessClaims:
    if not settings.jwt_secret:
        raise InvalidToken("tokens are not enabled")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=ALGORITHMS,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "sid", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from None
    if (
        claims.get("typ") != "access"
        or not isinstance(claims["sub"], str)
        or not isinstance(claims["sid"], str)
    ):
        raise InvalidToken("not an access token")
    return AccessClaims(user_id=claims["sub"], session_id=claims["sid"])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_refresh_secret() -> str:
    return secrets.token_urlsafe(32)


REFRESH_TOKEN_PATTERN = re.compile(r"([A-Za-z0-9-]{1,64})\.([A-Za-z0-9_-]{1,128})")


def split_refresh_token(token: str) -> tuple[str, str]:
    """``<session id>.<secret>``; anything else (control characters, oversized parts) is malformed."""
    match = REFRESH_TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise InvalidToken("malformed refresh token")
    return match.group(1), match.group(2)
