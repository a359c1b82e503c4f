"""Users and their workspaces: the local owner of a public-mode instance, and principals loaded from rows."""

from __future__ import annotations

from sqlalchemy import select
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


def load_principal(
    session: Session, user_id: str, *, scopes: frozenset[str] | None = None
) -> Principal | None:
    """The principal of an enabled user, with their workspace roles; None if unknown or disabled.

    One query (every request makes it): the user, their personal workspace and a row per membership."""
    personal = select(Workspace.id).where(Workspace.personal_owner_id == User.id).limit(1).scalar_subquery()
    rows = session.execute(
        select(User.is_admin, User.disabled_at, personal, Membership.workspace_id, Membership.role)
        .select_from(User)
        .outerjoin(Membership, Membership.user_id == User.id)
        .where(User.id == user_id)
    ).all()
    if not rows or rows[0].disabled_at is not None:
        return None
    return Principal(
        user_id=user_id,
        roles={row.workspace_id: row.role for row in rows if row.workspace_id is not None},
        is_admin=rows[0].is_admin,
        scopes=scopes if scopes is not None else frozenset({READ_SCOPE, WRITE_SCOPE}),
        default_workspace_id=rows[0][2],
    )
