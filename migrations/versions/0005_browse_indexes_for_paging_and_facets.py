"""browse indexes for keyset pages and facet counts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

* For every sort order of dtus, artifacts and lens items: (sort key, id, visibility, workspace_id,
  owner_id). A keyset page walks it from the cursor and checks the access predicate on its entries, so the
  first page and a page a thousand pages deep both read a few dozen entries and then only the page's rows.
* For dtus and artifacts: (id, the access columns, the columns of their counted facets), so a facet counted
  over the rows with a tag reads this index instead of the table.

concord_core.browse.sources.BROWSE_INDEXES declares the same indexes beside what they serve.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCESS = ["visibility", "workspace_id", "owner_id"]
SORT_KEYS = {
    "dtus": ("created_at", "updated_at", "title"),
    "artifacts": ("created_at", "updated_at", "name"),
    "lens_items": ("created_at", "updated_at"),
}
FACET_COLUMNS = {"dtus": ["tier", "dtu_type", "status"], "artifacts": ["kind"]}


def upgrade() -> None:
    for table, keys in SORT_KEYS.items():
        for key in keys:
            op.create_index(f"ix_{table}_by_{key}", table, [key, "id", *ACCESS], unique=False)
    for table, columns in FACET_COLUMNS.items():
        op.create_index(f"ix_{table}_facets", table, ["id", *ACCESS, *columns], unique=False)


def downgrade() -> None:
    raise NotImplementedError("Concord migrations are forward-only; restore the backup taken before upgrade")
