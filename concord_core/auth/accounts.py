"""Users and their workspaces: the local owner of a public-mode instance, and principals loaded from rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.orm import Session

from concord_core.auth.principal import READ_SCOPE, WRITE_SCOPE, Principal
from concord_core.db.engine import Database
from concord_core.db.models import Membership, User, Workspace

LOCAL_OWNER_EMAIL = "owner@localhost"


def create_user(
    session: Session,
    *,
    email: str,
    display_name: str,
    is_admin: bool = False,
    password_hash: str | None = None,
) -> User:
    """A user with a personal workspace of their own, where everything they make goes by default."""
    user = User(email=email, display_name=display_name, is_admin=is_admin, password_hash=password_hash)
    session.add(user)
    session.flush()
    workspace = Workspace(name=f"{display_name}'s workspace", personal_owner_id=user.id)
    session.add(workspace)
    session.flush()
    session.add(Membership(workspace_id=workspace.id, user_id=user.id, role="owner"))
    session.flush()
    return user


def ensure_local_owner(db: Database) -> str:
    """The user a public-mode instance acts as; created on first start. Returns its id."""
    with db.write() as session:
        user = session.scalar(select(User).where(User.email == LOCAL_OWNER_EMAIL))
        if user is None:
            user = create_user(session, email=LOCAL_OWNER_EMAIL, display_name="Local owner", is_admin=True)
        return user.id


_USERS = User.metadata.tables["users"]
_WORKSPACES = User.metadata.tables["workspaces"]
_MEMBERSHIPS = User.metadata.tables["memberships"]
_PERSONAL_WORKSPACE = (
    select(_WORKSPACES.c.id).where(_WORKSPACES.c.personal_owner_id == _USERS.c.id).limit(1).scalar_subquery()
)
#: What a principal is made of, one row per membership (or one row with no membership): the user, their
#: personal workspace, and a workspace with their role in it. Queries that find the user from a credential
#: select these beside the credential's own columns (see :mod:`concord_core.auth.authenticate`).
PRINCIPAL_COLUMNS = (
    _USERS.c.is_admin,
    _USERS.c.disabled_at,
    _PERSONAL_WORKSPACE.label("personal_workspace_id"),
    _MEMBERSHIPS.c.workspace_id,
    _MEMBERSHIPS.c.role,
)
#: The users table with its memberships, the FROM of every principal query.
USERS_WITH_MEMBERSHIPS = _USERS.outerjoin(_MEMBERSHIPS, _MEMBERSHIPS.c.user_id == _USERS.c.id)

#: A user's principal rows by id (``user_id``). Core, built once: a public-mode instance runs it for every
#: request, and an ORM select is compiled and cache-keyed anew each time.
PRINCIPAL_OF_USER = (
    select(*PRINCIPAL_COLUMNS).select_from(USERS_WITH_MEMBERSHIPS).where(_USERS.c.id == bindparam("user_id"))
)


def principal_from_rows(
    user_id: str, rows: Sequence[Row[*tuple[Any, ...]]], scopes: frozenset[str] | None = None
) -> Principal | None:
    """The principal in the rows of a query that selects :data:`PRINCIPAL_COLUMNS` for one user; None if
    there are none or the user is disabled."""
    if not rows or rows[0].disabled_at is not None:
        return None
    return Principal(
        user_id=user_id,
        roles={row.workspace_id: row.role for row in rows if row.workspace_id is not None},
        is_admin=bool(rows[0].is_admin),
        scopes=scopes if scopes is not None else frozenset({READ_SCOPE, WRITE_SCOPE}),
        default_workspace_id=rows[0].personal_workspace_id,
    )


def load_principal(
    session: Session | Connection, user_id: str, *, scopes: frozenset[str] | None = None
) -> Principal | None:
    """The principal of an enabled user, with their workspace roles; None if unknown or disabled.

    One query (every request makes it): the user, their personal workspace and a row per membership."""
    rows = session.execute(PRINCIPAL_OF_USER, {"user_id": user_id}).all()
    return principal_from_rows(user_id, rows, scopes)
