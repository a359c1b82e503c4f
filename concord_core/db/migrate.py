"""The start-up migration runner: forward-only, with a copy of a SQLite database taken before upgrading.

``concord serve`` calls :func:`upgrade` before serving; it refuses to run against a schema newer than the
code (a revision this code does not know).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from concord_core.db.engine import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


#: The migration that created the derived browse indexes (entity_tags, browse_counts).
BROWSE_INDEXES_REVISION = "0004"


def managed_by_models(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's include_object: leave out the full-text search objects that migrations create by hand
    (SQLite FTS5 tables and their shadow tables, PostgreSQL tsvector columns and GIN indexes)."""
    name = name or ""
    return not (name.endswith("_search") or name == "search_vector" or "_fts" in name)


class SchemaTooNew(Exception):
    """The database was migrated by a newer Concord than this one."""


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def status(db: Database) -> SchemaStatus:
    script = ScriptDirectory.from_config(alembic_config(db.url))
    head = script.get_current_head()
    assert head is not None, "no migrations found"
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database schema is at revision {current}, which this Concord does not know; "
            "it was migrated by a newer version: upgrade Concord instead"
        )
    pending = [rev.revision for rev in script.iterate_revisions(head, current)]
    pending.reverse()
    return SchemaStatus(current=current, head=head, pending=pending)


class SchemaNotCurrent(Exception):
    """The database is not at this code's schema (behind it, or migrated by a newer Concord)."""


def require_current(db: Database) -> SchemaStatus:
    """The database's status if it is at this code's head; SchemaNotCurrent, saying what to do, if not."""
    try:
        state = status(db)
    except SchemaTooNew as exc:
        raise SchemaNotCurrent(str(exc)) from None
    if not state.up_to_date:
        raise SchemaNotCurrent(
            f"the database is at {state.current or 'no schema'}, not {state.head}: run `concord migrate`"
        )
    return state


def backup_sqlite(db: Database, revision: str) -> Path | None:
    """Copy a SQLite database aside (online backup API, consistent even under WAL)."""
    path = make_url(db.url).database
    if not path or path == ":memory:" or not Path(path).exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = Path(f"{path}.pre-upgrade-{revision}-{stamp}")
    source = sqlite3.connect(path)
    try:
        destination = sqlite3.connect(target)
        with destination:
            source.backup(destination)
        destination.close()
    finally:
        source.close()
    return target


def upgrade(db: Database) -> SchemaStatus:
    """Apply pending migrations. Returns the status before upgrading."""
    before = status(db)
    if before.up_to_date:
        return before
    if db.is_sqlite and before.current is not None:
        backup_sqlite(db, before.current)
    command.upgrade(alembic_config(db.url), "head")
    if before.current is not None and BROWSE_INDEXES_REVISION in before.pending:
        # Rows from before the browse indexes existed: derive their tags and counters once.
        from concord_core.browse.indexes import rebuild_all

        with db.engine.begin() as connection:
            rebuild_all(connection)
    return before
