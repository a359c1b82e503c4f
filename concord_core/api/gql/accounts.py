"""GraphQL for accounts: sign-up and sign-in, the viewer, API keys, workspaces, administration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import strawberry
from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, plausible_key, to_global_id
from concord_core.api.gql.nodes import Node, register_node
from concord_core.auth.policy import AccessDenied, Action, InstanceTarget, authorize
from concord_core.db import models
from concord_core.operators import accounts as ops
from concord_core.operators.errors import ErrorCode, OperatorError, not_found

T = TypeVar("T")
P = TypeVar("P")
strawberry.enum(ops.Role, description="owner: everything, including members; editor: write; viewer: read.")


@strawberry.type(description="A person with an account. Readable by themselves, fellow members and admins.")
class User(Node):
    email: str
    display_name: str
    is_admin: bool
    disabled: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.User) -> User:
        return cls(
            id=strawberry.ID(to_global_id("User", row.id)),
            email=row.email,
            display_name=row.display_name,
            is_admin=row.is_admin,
            disabled=row.disabled_at is not None,
            created_at=row.created_at,
        )


@strawberry.type
class WorkspaceMember:
    user: User
    role: ops.Role


@strawberry.type(description="A group that owns things. Readable by its members.")
class Workspace(Node):
    key: strawberry.Private[str]
    name: str
    personal: bool
    your_role: ops.Role | None

    @strawberry.field(description="Everyone in the workspace with their role.")
    async def members(self, info: GqlInfo) -> list[WorkspaceMember]:
        def load(session: Session) -> list[WorkspaceMember]:
            rows = session.execute(
                select(models.User, models.Membership.role)
                .join(models.Membership, models.Membership.user_id == models.User.id)
                .where(models.Membership.workspace_id == self.key)
                .order_by(models.User.email)
            )
            return [WorkspaceMember(user=User.from_row(user), role=ops.Role(role)) for user, role in rows]

        return await info.context.read(load)


def _workspace(row: models.Workspace, role: str | None) -> Workspace:
    return Workspace(
        id=strawberry.ID(to_global_id("Workspace", row.id)),
        key=row.id,
        name=row.name,
        personal=row.personal_owner_id is not None,
        your_role=ops.Role(role) if role else None,
    )


@strawberry.type(description="An API key. The secret itself is shown once, in createApiKey's payload.")
class ApiKey(Node):
    name: str
    prefix: str = strawberry.field(description="The visible start of the key, to tell keys apart.")
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: models.ApiKey) -> ApiKey:
        return cls(
            id=strawberry.ID(to_global_id("ApiKey", row.id)),
            name=row.name,
            prefix=f"ck_{row.prefix}_",
            scopes=list(row.scopes),
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


@strawberry.type(description="Who is asking.")
class Viewer:
    user: User | None
    scopes: list[str]

    @strawberry.field(description="The workspaces you belong to.")
    async def workspaces(self, info: GqlInfo) -> list[Workspace]:
        return await _my_workspaces(info)


async def _my_workspaces(info: GqlInfo) -> list[Workspace]:
    principal = info.context.principal
    if not principal.roles:
        return []

    def load(session: Session) -> list[Workspace]:
        rows = session.scalars(
            select(models.Workspace)
            .where(models.Workspace.id.in_(list(principal.roles)))
            .order_by(models.Workspace.name)
        )
        return [_workspace(row, principal.role_in(row.id)) for row in rows]

    return await info.context.read(load)


def _plausible(key: str) -> bool:
    """Whether ``key`` can be a database key at all (a UUID); others are not looked up."""
    return plausible_key(key)


async def load_workspace(info: GqlInfo, key: str) -> Workspace | None:
    principal = info.context.principal
    if not _plausible(key) or (principal.role_in(key) is None and not principal.is_admin):
        return None
    row = await info.context.read(lambda s: s.get(models.Workspace, key))
    return _workspace(row, principal.role_in(key)) if row else None


async def load_user(info: GqlInfo, key: str) -> User | None:
    principal = info.context.principal

    def load(session: Session) -> models.User | None:
        if principal.user_id is None or not _plausible(key):
            return None
        if key != principal.user_id and not principal.is_admin:
            shared = session.scalar(
                select(models.Membership.workspace_id).where(
                    models.Membership.user_id == key,
                    models.Membership.workspace_id.in_(list(principal.roles)),
                )
            )
            if shared is None:
                return None
        return session.get(models.User, key)

    row = await info.context.read(load)
    return User.from_row(row) if row else None


async def load_api_key(info: GqlInfo, key: str) -> ApiKey | None:
    principal = info.context.principal
    if not _plausible(key):
        return None
    row = await info.context.read(lambda s: s.get(models.ApiKey, key))
    if row is None or (row.user_id != principal.user_id and not principal.is_admin):
        return None
    return ApiKey.from_row(row)


register_node("Workspace", load_workspace)
register_node("User", load_user)
register_node("ApiKey", load_api_key)


@strawberry.type
class AuthPayload:
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: datetime | None = None
    user: User | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class CreateApiKeyPayload:
    api_key: ApiKey | None = None
    token: str | None = strawberry.field(default=None, description="The key. Shown this once; store it now.")
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class ApiKeyPayload:
    api_key: ApiKey | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class WorkspacePayload:
    workspace: Workspace | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class UserPayload:
    user: User | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class DonePayload:
    ok: bool = False
    count: int = 0
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


def _key(global_id: str, type_name: str, noun: str, field: str) -> str:
    """The database key inside a global ID; one that cannot be a key (and would not fit the audit row a
    refusal writes, or could not even be compared on PostgreSQL) is simply not found."""
    key = expect_global_id(global_id, type_name, noun, field)
    if not _plausible(key):
        raise not_found(noun, field)
    return key


def _signed_in(result: ops.SignIn) -> AuthPayload:
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_at=result.expires_at,
        user=User.from_row(result.user),
    )


async def _attempt(
    info: GqlInfo, work: Callable[[], T], done: Callable[[T], Any], failed: Callable[..., Any]
) -> Any:
    try:
        result = await info.context.run(work)
    except OperatorError as exc:
        return failed(errors=payload_errors(exc))
    return done(result)


@strawberry.type
class AccountQueries:
    @strawberry.field(
        description="Who you are, with your workspaces. Needs: nothing (null user when anonymous)."
    )
    async def viewer(self, info: GqlInfo) -> Viewer:
        principal = info.context.principal
        user = await load_user(info, principal.user_id) if principal.user_id else None
        return Viewer(user=user, scopes=sorted(principal.scopes))

    @strawberry.field(description="Your API keys, newest first. Needs: signed in.")
    async def api_keys(self, info: GqlInfo) -> list[ApiKey]:
        user_id = info.context.principal.user_id
        if user_id is None:
            return []
        query = (
            select(models.ApiKey)
            .where(models.ApiKey.user_id == user_id)
            .order_by(models.ApiKey.created_at.desc())
        )
        rows = await info.context.read(lambda s: list(s.scalars(query)))
        return [ApiKey.from_row(row) for row in rows]

    @strawberry.field(description="The workspaces you belong to. Needs: signed in.")
    async def workspaces(self, info: GqlInfo) -> list[Workspace]:
        return await _my_workspaces(info)

    @strawberry.field(description="Every account (at most 1000, by email). Needs: administrator.")
    async def users(self, info: GqlInfo) -> list[User]:
        try:
            authorize(info.context.principal, Action.ADMINISTER, InstanceTarget())
        except AccessDenied:
            raise OperatorError.single(ErrorCode.FORBIDDEN, "this needs an administrator") from None
        rows = await info.context.read(
            lambda s: list(s.scalars(select(models.User).order_by(models.User.email).limit(1000)))
        )
        return [User.from_row(row) for row in rows]


@strawberry.type
class AccountMutations:
    @strawberry.mutation(
        description="Create an account and sign in (jwt mode, registration open). Needs: nothing."
    )
    async def register(self, info: GqlInfo, email: str, password: str, display_name: str) -> AuthPayload:
        ctx = info.context.ops
        data = {"email": email, "password": password, "display_name": display_name}
        return await _attempt(info, lambda: ops.register(ctx, data), _signed_in, AuthPayload)

    @strawberry.mutation(
        description="Sign in with email and password (jwt mode); throttled after failures. Needs: nothing."
    )
    async def login(self, info: GqlInfo, email: str, password: str) -> AuthPayload:
        ctx = info.context.ops
        return await _attempt(info, lambda: ops.login(ctx, email, password), _signed_in, AuthPayload)

    @strawberry.mutation(description="End the session of the token you are using. Needs: a token.")
    async def logout(self, info: GqlInfo) -> DonePayload:
        ctx = info.context.ops
        return await _attempt(info, lambda: ops.logout(ctx), lambda _: DonePayload(ok=True), DonePayload)

    @strawberry.mutation(
        description="Trade a refresh token for new tokens (it rotates; reuse ends the session). "
        "Needs: a refresh token."
    )
    async def refresh_token(self, info: GqlInfo, refresh_token: str) -> AuthPayload:
        ctx = info.context.ops
        return await _attempt(info, lambda: ops.refresh(ctx, refresh_token), _signed_in, AuthPayload)

    @strawberry.mutation(
        description="Make an API key (scopes: read, write; optional expiry). Needs: signed in."
    )
    async def create_api_key(
        self, info: GqlInfo, name: str, scopes: list[str] | None = None, expires_at: datetime | None = None
    ) -> CreateApiKeyPayload:
        ctx = info.context.ops
        data: dict[str, Any] = {"name": name, "expires_at": expires_at}
        if scopes is not None:
            data["scopes"] = scopes
        return await _attempt(
            info,
            lambda: ops.create_api_key(ctx, data),
            lambda result: CreateApiKeyPayload(api_key=ApiKey.from_row(result[0]), token=result[1]),
            CreateApiKeyPayload,
        )

    @strawberry.mutation(description="Revoke an API key at once. Needs: its owner, or an administrator.")
    async def revoke_api_key(self, info: GqlInfo, id: strawberry.ID) -> ApiKeyPayload:
        ctx = info.context.ops
        return await _attempt(
            info,
            lambda: ops.revoke_api_key(ctx, _key(id, "ApiKey", "API key", "id")),
            lambda row: ApiKeyPayload(api_key=ApiKey.from_row(row)),
            ApiKeyPayload,
        )

    @strawberry.mutation(description="Create a shared workspace; you become its owner. Needs: signed in.")
    async def create_workspace(self, info: GqlInfo, name: str) -> WorkspacePayload:
        ctx = info.context.ops
        return await _attempt(
            info,
            lambda: ops.create_workspace(ctx, name),
            lambda row: WorkspacePayload(workspace=_workspace(row, "owner")),
            WorkspacePayload,
        )

    @strawberry.mutation(
        description="Add a person (by email) to a workspace or change their role. "
        "Needs: owner of the workspace."
    )
    async def set_workspace_member(
        self, info: GqlInfo, workspace_id: strawberry.ID, email: str, role: ops.Role
    ) -> DonePayload:
        ctx = info.context.ops

        def work() -> models.Membership:
            key = _key(workspace_id, "Workspace", "workspace", "workspaceId")
            return ops.set_member(ctx, key, email, role.value)

        return await _attempt(info, work, lambda _: DonePayload(ok=True), DonePayload)

    @strawberry.mutation(description="Remove a person from a workspace. Needs: owner of the workspace.")
    async def remove_workspace_member(
        self, info: GqlInfo, workspace_id: strawberry.ID, user_id: strawberry.ID
    ) -> DonePayload:
        ctx = info.context.ops

        def work() -> None:
            workspace = _key(workspace_id, "Workspace", "workspace", "workspaceId")
            ops.remove_member(ctx, workspace, _key(user_id, "User", "member", "userId"))

        return await _attempt(info, work, lambda _: DonePayload(ok=True), DonePayload)

    @strawberry.mutation(
        description="Disable or re-enable an account; its keys and tokens stop at once. Needs: administrator."
    )
    async def admin_set_user_disabled(
        self, info: GqlInfo, user_id: strawberry.ID, disabled: bool
    ) -> UserPayload:
        ctx = info.context.ops
        return await _attempt(
            info,
            lambda: ops.set_user_disabled(ctx, _key(user_id, "User", "user", "userId"), disabled),
            lambda row: UserPayload(user=User.from_row(row)),
            UserPayload,
        )

    @strawberry.mutation(
        description="End a user's sessions and/or revoke their API keys. Needs: administrator."
    )
    async def admin_revoke_credentials(
        self, info: GqlInfo, user_id: strawberry.ID, sessions: bool = True, api_keys: bool = True
    ) -> DonePayload:
        ctx = info.context.ops

        def work() -> int:
            key = _key(user_id, "User", "user", "userId")
            return ops.revoke_user_credentials(ctx, key, sessions=sessions, keys=api_keys)

        return await _attempt(info, work, lambda n: DonePayload(ok=True, count=n), DonePayload)

    @strawberry.mutation(description="Create an account on a closed instance. Needs: administrator.")
    async def admin_create_user(
        self, info: GqlInfo, email: str, password: str, display_name: str, is_admin: bool = False
    ) -> UserPayload:
        ctx = info.context.ops
        return await _attempt(
            info,
            lambda: ops.admin_create_user(ctx, email, password, display_name, is_admin),
            lambda row: UserPayload(user=User.from_row(row)),
            UserPayload,
        )
