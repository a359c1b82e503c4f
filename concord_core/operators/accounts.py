"""Account operators: sign-up, sign-in, sessions, API keys, workspaces and memberships, administration.

Every one goes through the write path (policy, audit; events for changes other people can observe), and
a failed sign-in writes an audit row of its own. Secrets never enter events or audit rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from concord_core.auth import throttle
from concord_core.auth.accounts import create_user
from concord_core.auth.authenticate import AUTH_FAILURES
from concord_core.auth.keys import generate_key
from concord_core.auth.passwords import hash_password, needs_rehash, verify_password
from concord_core.auth.policy import AccountTarget, Action, InstanceTarget, WorkspaceTarget
from concord_core.auth.principal import READ_SCOPE, WRITE_SCOPE
from concord_core.auth.tokens import (
    InvalidToken,
    hash_secret,
    issue_access_token,
    new_refresh_secret,
    split_refresh_token,
)
from concord_core.db.models import ApiKey, AuthSession, Membership, User, Workspace
from concord_core.db.types import utcnow
from concord_core.observability.context import current
from concord_core.operators.base import (
    OperationContext,
    noun,
    record_denial,
    record_outcome,
    validate,
    write,
)
from concord_core.operators.errors import ErrorCode, OperatorError, not_found
from concord_core.settings import AuthMode

# No control characters: they are never part of a real address or name, and PostgreSQL refuses NUL.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=3,
        max_length=320,
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$",
    ),
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


class Role(enum.StrEnum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterInput(_Strict):
    email: Email
    password: str = Field(max_length=1024)
    display_name: Name


class ApiKeyInput(_Strict):
    name: Name
    scopes: list[str] = Field(default_factory=lambda: [READ_SCOPE, WRITE_SCOPE], min_length=1)
    expires_at: datetime | None = None

    @field_validator("scopes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {READ_SCOPE, WRITE_SCOPE})
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; use read and/or write")
        return sorted(set(value))


@dataclass(frozen=True)
class SignIn:
    user: User
    session_id: str
    access_token: str
    refresh_token: str
    expires_at: datetime


def _new_session(ctx: OperationContext, session: Session, user: User) -> SignIn:
    now = utcnow()
    secret = new_refresh_secret()
    request = current()
    row = AuthSession(
        user_id=user.id,
        refresh_token_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=ctx.settings.refresh_token_seconds),
        client_addr=request.client_addr,
    )
    session.add(row)
    session.flush()
    return SignIn(
        user=user,
        session_id=row.id,
        access_token=issue_access_token(ctx.settings, user.id, row.id, now),
        refresh_token=f"{row.id}.{secret}",
        expires_at=now + timedelta(seconds=ctx.settings.access_token_seconds),
    )


def _refused(
    ctx: OperationContext,
    action: str,
    code: ErrorCode,
    message: str,
    target: tuple[str | None, str | None, str | None] = (None, None, None),
) -> OperatorError:
    """A refusal decided before the write path's policy check: audited and counted like any denial."""
    record_denial(ctx, action, target, message)
    return OperatorError.single(code, message)


def _sign_in_failed(
    ctx: OperationContext, action: str, target: tuple[str | None, str | None, str | None], reason: str
) -> None:
    """A failed sign-in or refresh: an audit row and the authentication-failure metric."""
    AUTH_FAILURES.labels(reason=reason).inc()
    record_outcome(
        ctx, action, target, "denied", {"reason": reason}, actor_id=target[1] if target[0] == "user" else None
    )


def _require_tokens(ctx: OperationContext, action: str) -> None:
    if ctx.settings.auth_mode is not AuthMode.JWT:
        raise _refused(
            ctx, action, ErrorCode.FORBIDDEN, f"sign-in is not used in {ctx.settings.auth_mode} mode"
        )


def register(ctx: OperationContext, data: dict[str, Any]) -> SignIn:
    _require_tokens(ctx, "user.register")
    if not ctx.settings.registration:
        raise _refused(ctx, "user.register", ErrorCode.FORBIDDEN, "registration is closed on this instance")
    request = validate(RegisterInput, data)
    if len(request.password) < ctx.settings.password_min_length:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"use at least {ctx.settings.password_min_length} characters", "password"
        )
    with write(ctx, "user.register") as change:
        if change.session.scalar(select(User.id).where(User.email == request.email)):
            raise OperatorError.single(ErrorCode.CONFLICT, "an account with this email exists", "email")
        user = create_user(
            change.session,
            email=request.email,
            display_name=request.display_name,
            password_hash=hash_password(request.password),
        )
        change.emit(
            "USER_REGISTERED", "user", user.id, {"id": user.id, "display_name": user.display_name}, None
        )
        change.audit("user", user.id, None)
        return _new_session(ctx, change.session, user)


def login(ctx: OperationContext, email: str, password: str) -> SignIn:
    """Check a password; refused attempts are throttled per account and address, and audited."""
    _require_tokens(ctx, "auth.login")
    if len(password) > 1024 or len(email) > 320:
        _sign_in_failed(ctx, "auth.login", ("user", None, None), "bad_credentials")
        raise OperatorError.single(ErrorCode.UNAUTHENTICATED, "wrong email or password")
    # No account has a NUL in its address (see Email), and PostgreSQL cannot even compare one.
    email = email.strip().lower().replace("\x00", "\ufffd")
    keys = throttle.throttle_keys(email, current().client_addr)
    with ctx.db.read() as session:
        try:
            throttle.check(session, keys, utcnow())
        except throttle.Throttled as exc:
            _sign_in_failed(ctx, "auth.login", ("user", None, None), "throttled")
            raise OperatorError.single(ErrorCode.RATE_LIMITED, str(exc)) from None
        user = session.scalar(select(User).where(User.email == email))
    # Always verify (against a decoy for unknown accounts) so both failures take the same time.
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or user.disabled_at is not None:
        with ctx.db.write() as session:
            throttle.record_failure(session, keys, utcnow(), ctx.settings.login_free_attempts)
        _sign_in_failed(ctx, "auth.login", ("user", user.id if user else None, None), "bad_credentials")
        raise OperatorError.single(ErrorCode.UNAUTHENTICATED, "wrong email or password")
    with write(ctx, "auth.login") as change:
        row = change.session.get(User, user.id)
        assert row is not None and row.password_hash is not None
        if needs_rehash(row.password_hash):
            row.password_hash = hash_password(password)
        throttle.record_success(change.session, email)
        change.audit("user", user.id, None)
        return _new_session(ctx, change.session, row)


def logout(ctx: OperationContext) -> None:
    session_id = ctx.principal.session_id
    if session_id is None:
        raise _refused(ctx, "auth.logout", ErrorCode.UNAUTHENTICATED, "sign in with a token to sign out")
    with write(ctx, "auth.logout") as change:
        change.session.execute(
            update(AuthSession).where(AuthSession.id == session_id).values(revoked_at=utcnow())
        )
        change.audit("session", session_id, None)


def refresh(ctx: OperationContext, refresh_token: str) -> SignIn:
    """Trade a refresh token for new tokens; reusing a rotated-out refresh token ends its session."""
    _require_tokens(ctx, "auth.refresh")
    try:
        session_id, secret = split_refresh_token(refresh_token)
    except InvalidToken:
        _sign_in_failed(ctx, "auth.refresh", ("session", None, None), "malformed_refresh_token")
        raise OperatorError.single(ErrorCode.UNAUTHENTICATED, "invalid refresh token") from None
    failure: str | None = None
    with write(ctx, "auth.refresh") as change:
        row = change.session.get(AuthSession, session_id, with_for_update=True)
        now = utcnow()
        user = change.session.get(User, row.user_id) if row is not None else None
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            failure = "session_ended"
        elif user is None or user.disabled_at is not None:
            failure = "user_disabled"
        elif row.refresh_token_hash != hash_secret(secret):
            failure = "refresh_token_reused"
        if failure is not None or row is None or user is None:
            change.dry_run = True  # nothing to change here; the refusal is recorded below
        else:
            new_secret = new_refresh_secret()
            row.refresh_token_hash = hash_secret(new_secret)
            change.audit("session", row.id, None)
            signed = SignIn(
                user=user,
                session_id=row.id,
                access_token=issue_access_token(ctx.settings, user.id, row.id, now),
                refresh_token=f"{row.id}.{new_secret}",
                expires_at=now + timedelta(seconds=ctx.settings.access_token_seconds),
            )
    if failure == "refresh_token_reused":
        # Someone holds an old token: whoever it is, this session is no longer safe.
        with ctx.db.write() as session:
            session.execute(
                update(AuthSession)
                .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
    if failure is not None:
        _sign_in_failed(ctx, "auth.refresh", ("session", session_id, None), failure)
        if failure == "refresh_token_reused":
            raise OperatorError.single(
                ErrorCode.UNAUTHENTICATED, "this refresh token was already used; sign in again"
            )
        raise OperatorError.single(ErrorCode.UNAUTHENTICATED, "invalid refresh token")
    return signed


def _signed_in(ctx: OperationContext, action: str) -> str:
    if ctx.principal.user_id is None:
        raise _refused(ctx, action, ErrorCode.UNAUTHENTICATED, "sign in first")
    return ctx.principal.user_id


def create_api_key(ctx: OperationContext, data: dict[str, Any]) -> tuple[ApiKey, str]:
    """A new key for the caller; the returned token is the only time it is ever shown."""
    user_id = _signed_in(ctx, "api_key.create")
    request = validate(ApiKeyInput, data)
    if request.expires_at is not None and request.expires_at <= utcnow():
        raise OperatorError.single(ErrorCode.VALIDATION, "the expiry must be in the future", "expiresAt")
    if not set(request.scopes) <= ctx.principal.scopes:
        raise _refused(
            ctx,
            "api_key.create",
            ErrorCode.FORBIDDEN,
            "a key cannot have more scopes than your credential",
            ("user", user_id, None),
        )
    new = generate_key()
    with write(ctx, "api_key.create") as change:
        # A read-only credential may not mint keys (a leaked one could outlive its own revocation).
        change.authorize(Action.EDIT, AccountTarget(user_id), "user", user_id)
        key = ApiKey(
            user_id=user_id,
            name=request.name,
            prefix=new.prefix,
            key_hash=new.key_hash,
            scopes=request.scopes,
            created_at=utcnow(),
            expires_at=request.expires_at,
        )
        change.session.add(key)
        change.session.flush()
        change.audit("api_key", key.id, None, prefix=new.prefix, scopes=request.scopes)
    return key, new.token


def revoke_api_key(ctx: OperationContext, key_id: str) -> ApiKey:
    """Revoke one of your keys (an administrator may revoke anyone's)."""
    _signed_in(ctx, "api_key.revoke")
    with write(ctx, "api_key.revoke") as change:
        key = change.session.get(ApiKey, key_id, with_for_update=True)
        # Someone else's key and an unknown id are refused alike (and both audited), so ids cannot be probed.
        change.authorize(Action.EDIT, AccountTarget(key.user_id if key else None), "api_key", key_id)
        if key is None:
            raise not_found(noun("api_key"))
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        change.audit("api_key", key.id, None, owner=key.user_id)
    return key


def create_workspace(ctx: OperationContext, name: str) -> Workspace:
    user_id = _signed_in(ctx, "workspace.create")
    request = validate(_WorkspaceName, {"name": name})
    with write(ctx, "workspace.create") as change:
        change.authorize(Action.EDIT, AccountTarget(user_id), "user", user_id)
        workspace = Workspace(name=request.name)
        change.session.add(workspace)
        change.session.flush()
        change.session.add(Membership(workspace_id=workspace.id, user_id=user_id, role=Role.OWNER.value))
        change.emit(
            "WORKSPACE_CREATED",
            "workspace",
            workspace.id,
            {"id": workspace.id, "name": workspace.name},
            workspace.id,
        )
        change.audit("workspace", workspace.id, workspace.id)
    return workspace


class _WorkspaceName(_Strict):
    name: Name


class _MemberInput(_Strict):
    email: Email
    role: Role


def _owners(session: Session, workspace_id: str) -> int:
    query = select(func.count()).where(
        Membership.workspace_id == workspace_id, Membership.role == Role.OWNER.value
    )
    return int(session.scalar(query) or 0)


def set_member(ctx: OperationContext, workspace_id: str, email: str, role: str) -> Membership:
    """Add a person to a workspace, or change their role. Needs: owner of the workspace."""
    request = validate(_MemberInput, {"email": email, "role": role})
    with write(ctx, "workspace.member.set") as change:
        change.authorize(Action.MANAGE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
        user = change.session.scalar(select(User).where(User.email == request.email))
        if user is None or user.disabled_at is not None:
            raise not_found("user", "email")
        workspace = change.session.get(Workspace, workspace_id)
        assert workspace is not None
        if workspace.personal_owner_id is not None:
            raise OperatorError.single(
                ErrorCode.VALIDATION,
                "a personal workspace cannot be shared; create a workspace to share",
                "workspaceId",
            )
        member = change.session.get(Membership, (workspace_id, user.id), with_for_update=True)
        if member is None:
            member = Membership(workspace_id=workspace_id, user_id=user.id, role=request.role.value)
            change.session.add(member)
        else:
            if (
                member.role == Role.OWNER
                and request.role != Role.OWNER
                and _owners(change.session, workspace_id) < 2
            ):
                raise OperatorError.single(ErrorCode.CONFLICT, "a workspace keeps at least one owner", "role")
            member.role = request.role.value
        change.session.flush()
        change.emit(
            "WORKSPACE_MEMBER_SET",
            "workspace",
            workspace_id,
            {"workspace_id": workspace_id, "user_id": user.id, "role": member.role},
            workspace_id,
        )
        change.audit("workspace", workspace_id, workspace_id, member=user.id, role=member.role)
    return member


def remove_member(ctx: OperationContext, workspace_id: str, user_id: str) -> None:
    with write(ctx, "workspace.member.remove") as change:
        change.authorize(Action.MANAGE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
        member = change.session.get(Membership, (workspace_id, user_id), with_for_update=True)
        if member is None:
            raise not_found("member", "userId")
        if member.role == Role.OWNER and _owners(change.session, workspace_id) < 2:
            raise OperatorError.single(ErrorCode.CONFLICT, "a workspace keeps at least one owner", "userId")
        change.session.delete(member)
        change.emit(
            "WORKSPACE_MEMBER_REMOVED",
            "workspace",
            workspace_id,
            {"workspace_id": workspace_id, "user_id": user_id},
            workspace_id,
        )
        change.audit("workspace", workspace_id, workspace_id, member=user_id)


def set_user_disabled(ctx: OperationContext, user_id: str, disabled: bool) -> User:
    """Disable (or re-enable) an account; a disabled user's keys and tokens stop working at once."""
    with write(ctx, "admin.user.disable" if disabled else "admin.user.enable") as change:
        change.authorize(Action.ADMINISTER, InstanceTarget(), "user", user_id)
        user = change.session.get(User, user_id, with_for_update=True)
        if user is None:
            raise not_found("user", "userId")
        if disabled and user.id == ctx.principal.user_id:
            raise OperatorError.single(ErrorCode.VALIDATION, "you cannot disable yourself", "userId")
        user.disabled_at = utcnow() if disabled else None
        change.audit("user", user.id, None)
    return user


def revoke_user_credentials(ctx: OperationContext, user_id: str, *, sessions: bool, keys: bool) -> int:
    """End a user's sessions and/or revoke their API keys. Returns how many were revoked."""
    with write(ctx, "admin.user.revoke") as change:
        change.authorize(Action.ADMINISTER, InstanceTarget(), "user", user_id)
        if change.session.get(User, user_id) is None:
            raise not_found("user", "userId")
        now, revoked = utcnow(), 0
        if sessions:
            result = change.session.execute(
                update(AuthSession)
                .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            revoked += result.rowcount  # type: ignore[attr-defined]
        if keys:
            result = change.session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            revoked += result.rowcount  # type: ignore[attr-defined]
        change.audit("user", user_id, None, sessions=sessions, keys=keys, revoked=revoked)
    return revoked


def admin_create_user(
    ctx: OperationContext,
    email: str,
    password: str,
    display_name: str,
    is_admin: bool,
    *,
    system: bool = False,
) -> User:
    """Create an account on a closed instance: by an administrator, or by ``concord admin create-user``
    (``system``: whoever runs commands on the server already controls it)."""
    request = validate(RegisterInput, {"email": email, "password": password, "display_name": display_name})
    if len(request.password) < ctx.settings.password_min_length:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"use at least {ctx.settings.password_min_length} characters", "password"
        )
    with write(ctx, "admin.user.create") as change:
        if not system:
            change.authorize(Action.ADMINISTER, InstanceTarget(), "user", request.email)
        if change.session.scalar(select(User.id).where(User.email == request.email)):
            raise OperatorError.single(ErrorCode.CONFLICT, "an account with this email exists", "email")
        user = create_user(
            change.session,
            email=request.email,
            display_name=request.display_name,
            is_admin=is_admin,
            password_hash=hash_password(request.password),
        )
        change.emit(
            "USER_REGISTERED", "user", user.id, {"id": user.id, "display_name": user.display_name}, None
        )
        change.audit("user", user.id, None, is_admin=is_admin)
    return user
