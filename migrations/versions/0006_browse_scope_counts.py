"""browse scope counts: the tags facet's counters summed by access scope

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``browse_scope_counts`` holds, per browsable and tag, the browse_counts of the tags facet summed by access
scope instead of by bucket: ``public`` (public rows), ``o:<owner>`` (an owner's rows that are not public),
``w:<workspace>`` (a workspace's rows that are neither private nor public) and ``ow:<owner>:<workspace>``
(rows in both of the last two). A caller's tags facet then reads a few counters per tag instead of one per
readable bucket (concord_core.browse.scopes). It is filled from browse_counts here, so an upgraded
database is consistent at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MEMBERS = "visibility NOT IN ('private', 'public')"
#: (scope expression, the browse_counts rows it sums, the columns that tell its scopes apart)
SCOPES = (
    ("'public'", "visibility = 'public'", ""),
    ("'o:' || owner_id", "visibility <> 'public'", ", owner_id"),
    ("'w:' || workspace_id", MEMBERS, ", workspace_id"),
    ("'ow:' || owner_id || ':' || workspace_id", MEMBERS, ", owner_id, workspace_id"),
)


def upgrade() -> None:
    op.create_table(
        "browse_scope_counts",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("facet", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", "facet", "scope", "value", name=op.f("pk_browse_scope_counts")),
    )
    for scope, rows, apart in SCOPES:
        op.execute(
            "INSERT INTO browse_scope_counts (source, facet, scope, value, count) "
            f"SELECT source, facet, {scope}, value, sum(count) FROM browse_counts "
            f"WHERE facet = 'tags' AND {rows} GROUP BY source, facet, value{apart}"
        )


def downgrade() -> None:
    op.drop_table("browse_scope_counts")
