"""browse indexes: entity tags, access-bucketed counters, full-text search

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

PostgreSQL gets a stored tsvector column with a GIN index per searchable table; SQLite gets an FTS5 table
per searchable table, kept in step by triggers. The tag index and the counters are filled from the
existing rows, so an upgraded database browses correctly at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> PostgreSQL tsvector expression over its text (JSON documents contribute only their strings)
POSTGRES_SEARCH = {
    "dtus": "setweight(to_tsvector('english', coalesce(title, '')), 'A')"
    " || setweight(jsonb_to_tsvector('english', tags, '[\"string\"]'), 'B')"
    " || setweight(jsonb_to_tsvector('english', human, '[\"string\"]'), 'B')"
    " || setweight(jsonb_to_tsvector('english', core, '[\"string\"]'), 'C')",
    "artifacts": "setweight(to_tsvector('english', coalesce(name, '')), 'A')"
    " || setweight(jsonb_to_tsvector('english', tags, '[\"string\"]'), 'B')",
    "lens_items": "jsonb_to_tsvector('english', data, '[\"string\"]')",
}


def _sqlite_text(table: str, row: str) -> tuple[str, str]:
    """The FTS title and body of a row of ``table`` named ``row`` (JSON documents give only their strings)."""

    def strings(*documents: str) -> str:
        array = ", ".join(f"json({row}.{name})" for name in documents)
        return f"(SELECT group_concat(value, ' ') FROM json_tree(json_array({array})) WHERE type = 'text')"

    if table == "dtus":
        return f"{row}.title", strings("tags", "human", "core")
    if table == "artifacts":
        return f"{row}.name", strings("tags")
    return "''", strings("data")


SQLITE_SEARCH = ("dtus", "artifacts", "lens_items")


def _sqlite_fts(table: str) -> None:
    fts = f"{table}_fts"
    op.execute(f"CREATE VIRTUAL TABLE {fts} USING fts5(title, body, tokenize = 'porter unicode61')")

    def values(row: str) -> str:
        title, body = _sqlite_text(table, row)
        return f"{row}.rowid, {title}, {body}"

    insert = f"INSERT INTO {fts}(rowid, title, body) VALUES ({values('new')});"
    op.execute(f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN {insert} END")
    op.execute(
        f"CREATE TRIGGER {fts}_update AFTER UPDATE ON {table} BEGIN "
        f"DELETE FROM {fts} WHERE rowid = old.rowid; {insert} END"
    )
    op.execute(
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN DELETE FROM {fts} WHERE rowid = old.rowid; END"
    )
    op.execute(f"INSERT INTO {fts}(rowid, title, body) SELECT {values('r')} FROM {table} AS r")


def upgrade() -> None:
    op.create_table(
        "entity_tags",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("source", "entity_id", "tag", name=op.f("pk_entity_tags")),
    )
    op.create_index("ix_entity_tags_source_tag", "entity_tags", ["source", "tag", "entity_id"], unique=False)
    op.create_table(
        "browse_counts",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("facet", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "source",
            "facet",
            "value",
            "visibility",
            "workspace_id",
            "owner_id",
            name=op.f("pk_browse_counts"),
        ),
    )
    op.create_index(
        "ix_browse_counts_lookup",
        "browse_counts",
        ["source", "facet", "visibility", "workspace_id", "owner_id"],
        unique=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        for table, expression in POSTGRES_SEARCH.items():
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({expression}) STORED"
            )
            op.execute(f"CREATE INDEX ix_{table}_search ON {table} USING gin (search_vector)")
    else:
        for table in SQLITE_SEARCH:
            _sqlite_fts(table)
    # The tag index and counters of rows that already exist are filled by the migration runner
    # (concord_core.db.migrate.upgrade) once every migration has run.


def downgrade() -> None:
    raise NotImplementedError("Concord migrations are forward-only; restore the backup taken before upgrade")
