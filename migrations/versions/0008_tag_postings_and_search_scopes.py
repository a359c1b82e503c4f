"""tag postings with sort keys, access columns and facet values; search vectors with access scopes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``entity_tags`` rows become postings: each carries its row's sort keys (created, updated, title), access
columns (visibility, workspace, owner) and single-valued facet values (tier, type, status), indexed by
(source, tag, sort key, id, ...), so a page filtered by one tag reads that tag's postings in order and a
facet filtered by one tag counts them, never visiting the rows (concord_core.browse). The table is derived:
it is made anew and filled from the DTUs and artifacts, so an upgraded database is consistent at once.

PostgreSQL: each search vector (dtus, artifacts, lens_items) also holds lexemes naming the row's access
scopes, which no search word can match (they start with ``#``): ``#p`` for a public row, ``#o<owner>``
for any other, and ``#w<workspace>`` for one its workspace's members list. A search then asks the GIN
index for rows that match the words and one of the caller's scopes, and checks and ranks only those
instead of every match (the access predicate itself is still applied to every row). The generated column
is dropped and added again with its index, which rewrites the tables. DTUs and artifacts also get a GIN
index on their title's (name's) vector with the same scopes: relevance ranks the rows whose title holds
every search word first, and that index finds them without visiting the other matches.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import concord_core.db.types

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCESS = ["visibility", "workspace_id", "owner_id"]
FACETS = ["tier", "type", "status"]
POSTING_COLUMNS = ["created_at", "updated_at", "title", *ACCESS, *FACETS]
#: tagged table -> (source name, the posting columns' expressions over its row ``r``)
TAGGED = {
    "dtus": ("dtus", "r.created_at, r.updated_at, r.title, r.visibility, r.workspace_id, r.owner_id, "
             "r.tier, r.dtu_type, r.status"),
    "artifacts": ("artifacts", "r.created_at, r.updated_at, r.name, r.visibility, r.workspace_id, "
                  "r.owner_id, NULL, r.kind, NULL"),
}  # fmt: skip

# The document part of each search vector, as in 0004.
POSTGRES_SEARCH = {
    "dtus": "setweight(to_tsvector('english', coalesce(title, '')), 'A')"
    " || setweight(jsonb_to_tsvector('english', tags, '[\"string\"]'), 'B')"
    " || setweight(jsonb_to_tsvector('english', human, '[\"string\"]'), 'B')"
    " || setweight(jsonb_to_tsvector('english', core, '[\"string\"]'), 'C')",
    "artifacts": "setweight(to_tsvector('english', coalesce(name, '')), 'A')"
    " || setweight(jsonb_to_tsvector('english', tags, '[\"string\"]'), 'B')",
    "lens_items": "jsonb_to_tsvector('english', data, '[\"string\"]')",
}
# The access scopes of a row (concord_core.browse.scopes.search_scopes says which a reader's query names).
SCOPE_LEXEMES = (
    "array_to_tsvector(array_remove(ARRAY["
    "CASE WHEN visibility = 'public' THEN '#p' END, "
    "CASE WHEN visibility <> 'public' THEN '#o' || owner_id END, "
    "CASE WHEN visibility NOT IN ('public', 'private') THEN '#w' || workspace_id END"
    "], NULL))"
)


#: Searchable tables whose title ranks first (weight A): a GIN index on the title's vector and the row's
#: access scopes finds the matches whose title holds every word, the first tier of a relevance order.
TITLED = {"dtus": "title", "artifacts": "name"}


def upgrade() -> None:
    op.drop_table("entity_tags")
    op.create_table(
        "entity_tags",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("created_at", concord_core.db.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", concord_core.db.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("source", "entity_id", "tag", name=op.f("pk_entity_tags")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    elements = "jsonb_array_elements_text(r.tags) AS t(value)" if postgres else "json_each(r.tags) AS t"
    for table, (source, values) in TAGGED.items():
        op.execute(
            f"INSERT INTO entity_tags (source, entity_id, tag, {', '.join(POSTING_COLUMNS)}) "
            f"SELECT DISTINCT '{source}', r.id, t.value, {values} FROM {table} AS r, {elements}"
        )
    # Built after the rows are in: faster than keeping them up to date row by row.
    op.create_index(
        "ix_entity_tags_by_created_at",
        "entity_tags",
        ["source", "tag", "created_at", "entity_id", *ACCESS, *FACETS],
        unique=False,
    )
    op.create_index(
        "ix_entity_tags_by_updated_at",
        "entity_tags",
        ["source", "tag", "updated_at", "entity_id", *ACCESS],
        unique=False,
    )
    op.create_index(
        "ix_entity_tags_by_title",
        "entity_tags",
        ["source", "tag", "title", "entity_id", *ACCESS],
        unique=False,
    )
    if postgres:
        for table, expression in POSTGRES_SEARCH.items():
            op.execute(f"ALTER TABLE {table} DROP COLUMN search_vector")
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN search_vector tsvector "
                f"GENERATED ALWAYS AS ({expression} || {SCOPE_LEXEMES}) STORED"
            )
            op.execute(f"CREATE INDEX ix_{table}_search ON {table} USING gin (search_vector)")
        for table, column in TITLED.items():
            op.execute(
                f"CREATE INDEX ix_{table}_title_search ON {table} USING gin "
                f"((to_tsvector('english', coalesce({column}, '')) || {SCOPE_LEXEMES}))"
            )


def downgrade() -> None:
    raise NotImplementedError("Concord migrations are forward-only; restore the backup taken before upgrade")
