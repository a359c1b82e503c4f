"""Migrations: `concord db status` / `concord migrate`, refusing a schema newer than the code, the SQLite
copy taken before an upgrade, and the models agreeing with the migrations on both backends."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from concord_core.browse.indexes import INDEXED, rebuild, snapshot
from concord_core.cli.main import main
from concord_core.db import migrate
from concord_core.db.engine import Database
from concord_core.db.models import Base


@pytest.fixture
def concord(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    empty_database_url: str,
    tmp_path: Path,
) -> Callable[..., tuple[int, str]]:
    """Run the `concord` command in-process against the test database; returns (exit code, output)."""
    monkeypatch.setenv("CONCORD_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("CONCORD_STORAGE_URL", str(tmp_path / "objects"))
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path))

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def revisions() -> list[str]:
    """Every revision of the real migrations folder, oldest first."""
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_status_and_migrate(concord: Callable[..., tuple[int, str]], empty_database_url: str) -> None:
    all_revisions = revisions()
    head = all_revisions[-1]
    assert all_revisions[0] == "0001"

    code, out = concord("db", "status")
    assert code == 1, out
    assert "current:  (empty)" in out
    assert f"pending:  {', '.join(all_revisions)}" in out

    code, out = concord("migrate")
    assert code == 0, out
    assert f"migrated empty database -> {head} ({len(all_revisions)} steps)" in out

    code, out = concord("db", "status")
    assert code == 0, out
    assert f"current:  {head}" in out and "pending:  none" in out

    code, out = concord("migrate")
    assert (code, out.strip()) == (0, f"already at {head}")

    db = Database(empty_database_url)
    try:
        with db.engine.connect() as conn:
            tables = set(db.engine.dialect.get_table_names(conn))
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
    finally:
        db.dispose()


def test_schema_newer_than_the_code_is_refused(
    concord: Callable[..., tuple[int, str]], empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert concord("migrate")[0] == 0
    db = Database(empty_database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    finally:
        db.dispose()

    for argv in (("migrate",), ("db", "status")):
        code, out = concord(*argv)
        assert code == 2, (argv, out)
        assert "revision ffff" in out and "newer" in out

    # `concord serve` refuses before it serves (uvicorn is replaced: reaching it would be the failure).
    import uvicorn

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("concord serve started serving a database it does not understand")

    monkeypatch.setattr(uvicorn, "run", must_not_serve)
    code, out = concord("serve")
    assert code == 2, out
    assert "revision ffff" in out
    assert "Traceback" not in out

    # Nothing was changed by the refusals.
    db = Database(empty_database_url)
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "ffff"
    finally:
        db.dispose()


def test_models_match_the_migrations(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        migrate.upgrade(db)
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": migrate.managed_by_models}
            )
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        db.dispose()


# --- SQLite copies before upgrading ------------------------------------------------------------------


def backups_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.pre-upgrade-*"))


def test_backup_sqlite_copies_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "concord.db"
    db = Database(f"sqlite:///{path}")
    try:
        migrate.upgrade(db)
        assert backups_of(path) == []  # an empty database has nothing worth copying
        with db.write() as session:
            session.execute(text("INSERT INTO event_head (id, seq, hash) VALUES (2, 7, 'x')"))
        # Open a reader so the copy is taken while the WAL is in use.
        with db.read() as session:
            session.execute(text("SELECT 1"))
            copy = migrate.backup_sqlite(db, "label")
        assert copy is not None and copy.exists()
        assert copy.name.startswith("concord.db.pre-upgrade-label-")
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (revisions()[-1],)
            assert conn.execute("SELECT seq FROM event_head WHERE id = 2").fetchone() == (7,)

        # Upgrading a database that is already at head copies nothing.
        before = backups_of(path)
        status = migrate.upgrade(db)
        assert status.up_to_date
        assert backups_of(path) == before
    finally:
        db.dispose()
    assert migrate.backup_sqlite(Database("sqlite:///:memory:"), "0001") is None
    assert migrate.backup_sqlite(Database(f"sqlite:///{tmp_path / 'absent.db'}"), "0001") is None


def next_revision(after: str) -> str:
    return f'''"""a later revision, for testing the upgrade path

Revision ID: 9999
Revises: {after}
"""

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{after}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("upgrade_probe", sa.Column("id", sa.Integer(), primary_key=True))
'''


def test_upgrading_a_database_that_is_behind_copies_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A migrations folder with one revision more than the real one, so an existing database is behind.
    head = revisions()[-1]
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_probe.py").write_text(next_revision(head))

    path = tmp_path / "data" / "concord.db"
    db = Database(f"sqlite:///{path}")
    try:
        migrate.upgrade(db)  # at head, with the real migrations
        with db.write() as session:
            session.execute(text("INSERT INTO event_head (id, seq, hash) VALUES (2, 3, 'kept')"))

        monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
        status = migrate.status(db)
        assert (status.current, status.head, status.pending) == (head, "9999", ["9999"])
        before = migrate.upgrade(db)
        assert before.current == head
        assert migrate.status(db).up_to_date

        [copy] = backups_of(path)
        assert copy.name.startswith(f"concord.db.pre-upgrade-{head}-")
        # The copy is the database as it was before the upgrade: old revision, no new table, same rows.
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert "upgrade_probe" not in tables and "dtus" in tables
            assert conn.execute("SELECT hash FROM event_head WHERE id = 2").fetchone() == ("kept",)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM upgrade_probe")).scalar_one() == 0
    finally:
        db.dispose()


def test_upgrading_from_the_first_revision(tmp_path: Path) -> None:
    all_revisions = revisions()
    if len(all_revisions) < 2:
        pytest.skip("only one revision so far")
    path = tmp_path / "concord.db"
    db = Database(f"sqlite:///{path}")
    try:
        command.upgrade(migrate.alembic_config(db.url), all_revisions[0])
        before = migrate.upgrade(db)
        assert (before.current, before.pending) == (all_revisions[0], all_revisions[1:])
        assert migrate.status(db).up_to_date
        [copy] = backups_of(path)
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (all_revisions[0],)
    finally:
        db.dispose()


def test_every_browse_sort_and_counted_facet_has_its_index() -> None:
    """The models declare Global's indexes by column name (db.models.browse_indexes); the browse sources
    name their sort orders and facets. A sort or counted facet added to a source without its index would
    turn pages into table scans at scale: this keeps the two lists in step."""
    from concord_core.browse.sources import ARTIFACTS, DTUS, LENS_ITEMS
    from concord_core.db.models import BROWSE_ACCESS_COLUMNS

    for source in (DTUS, ARTIFACTS, LENS_ITEMS):
        table = Base.metadata.tables[source.table_name]
        indexed = {tuple(column.name for column in index.columns) for index in table.indexes}
        for attribute in source.sorts.values():
            key = source.column(attribute).key
            assert (key, "id", *BROWSE_ACCESS_COLUMNS) in indexed, f"{source.name}: no index for sort {key}"
        counted = [source.column(f.attribute).key for f in source.counted_facets if f.attribute is not None]
        if source is not LENS_ITEMS:
            facet_index = tuple(dict.fromkeys(("id", *BROWSE_ACCESS_COLUMNS, *counted)))
            assert facet_index in indexed, f"{source.name}: no facet index"


def test_scope_counts_are_filled_from_the_bucket_counts(empty_database_url: str) -> None:
    """0006 sums the tags facet's existing bucket counters by scope, as the write path would have."""
    bucket_rows = [
        # facet, value, visibility, workspace, owner, count
        ("tags", "jazz", "public", "w1", "u1", 3),
        ("tags", "jazz", "public", "w2", "u2", 4),
        ("tags", "jazz", "private", "w1", "u1", 5),
        ("tags", "jazz", "workspace", "w1", "u1", 6),
        ("tags", "jazz", "unlisted", "w1", "u2", 7),
        ("tags", "folk", "workspace", "w2", "u1", 1),
        ("tier", "mega", "public", "w1", "u1", 9),  # not a tag: not kept by scope
    ]
    db = Database(empty_database_url)
    try:
        command.upgrade(migrate.alembic_config(db.url), "0005")
        with db.engine.begin() as conn:
            for facet, value, visibility, workspace, owner, count in bucket_rows:
                conn.execute(
                    text(
                        "INSERT INTO browse_counts VALUES ('dtus', :facet, :value, :visibility, :workspace, "
                        ":owner, :count)"
                    ),
                    dict(
                        facet=facet,
                        value=value,
                        visibility=visibility,
                        workspace=workspace,
                        owner=owner,
                        count=count,
                    ),
                )
        migrate.upgrade(db)
        with db.engine.connect() as conn:
            filled = set(
                conn.execute(text("SELECT source, facet, scope, value, count FROM browse_scope_counts"))
            )
        jazz = {
            ("public", 7),
            ("o:u1", 11),
            ("o:u2", 7),
            ("w:w1", 13),
            ("ow:u1:w1", 6),
            ("ow:u2:w1", 7),
        }
        folk = {("o:u1", 1), ("w:w2", 1), ("ow:u1:w2", 1)}
        assert filled == {("dtus", "tags", scope, "jazz", n) for scope, n in jazz} | {
            ("dtus", "tags", scope, "folk", n) for scope, n in folk
        }
    finally:
        db.dispose()


def test_tag_postings_and_search_scopes_are_filled_from_existing_rows(empty_database_url: str) -> None:
    """0008 makes entity_tags anew from the DTUs' and artifacts' rows, each posting carrying its row's sort
    keys, access columns and facet values; on PostgreSQL the search vectors gain their access scopes."""
    db = Database(empty_database_url)
    when = "'2025-01-02 03:04:05'"
    try:
        command.upgrade(migrate.alembic_config(db.url), "0007")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO users (id, email, display_name, is_admin, created_at, updated_at) "
                    f"VALUES ('u1', 'u1@example.com', 'U', false, {when}, {when})"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO workspaces (id, name, created_at, updated_at) "
                    f"VALUES ('w1', 'W', {when}, {when})"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO dtus (id, workspace_id, owner_id, version, title, human, core, machine, "
                    "tags, tier, dtu_type, visibility, citation_mode, citations, status, content_hash, "
                    "created_at, updated_at) VALUES ('d1', 'w1', 'u1', 1, 'Jazz standards', '{}', '{}', "
                    "'{}', "
                    f"'[\"jazz\", \"folk\"]', 'mega', 'claim', 'workspace', 'original', '[]', 'active', 'h', "
                    f"{when}, '2025-02-03 04:05:06')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO artifacts (id, workspace_id, owner_id, name, kind, visibility, tags, "
                    f"current_version, created_at, updated_at) VALUES ('a1', 'w1', 'u1', 'Tape', 'audio', "
                    f"'public', '[\"jazz\"]', 0, {when}, {when})"
                )
            )
        migrate.upgrade(db)
        with db.engine.connect() as conn:
            postings = {
                tuple(str(value) if value is not None else None for value in row)
                for row in conn.execute(
                    text(
                        "SELECT source, entity_id, tag, title, visibility, workspace_id, owner_id, tier, "
                        "type, status FROM entity_tags"
                    )
                )
            }
            stamps = set(
                conn.execute(text("SELECT created_at, updated_at FROM entity_tags WHERE tag = 'folk'"))
            )
            if db.is_postgres:
                scoped = conn.execute(
                    text(
                        "SELECT id FROM dtus "
                        "WHERE search_vector @@ ($$'#ww1'$$::tsquery && to_tsquery('jazz'))"
                    )
                ).all()
                assert scoped == [("d1",)]
        assert postings == {
            ("dtus", "d1", "jazz", "Jazz standards", "workspace", "w1", "u1", "mega", "claim", "active"),
            ("dtus", "d1", "folk", "Jazz standards", "workspace", "w1", "u1", "mega", "claim", "active"),
            ("artifacts", "a1", "jazz", "Tape", "public", "w1", "u1", None, "audio", None),
        }
        [(created, updated)] = stamps
        assert str(created).startswith("2025-01-02 03:04:05") and str(updated).startswith(
            "2025-02-03 04:05:06"
        )
    finally:
        db.dispose()


def _insert(conn: Any, table: str, **row: Any) -> None:
    columns = ", ".join(row)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in row)})"), row)


def test_tag_counts_are_filled_from_the_postings(empty_database_url: str) -> None:
    """0009 fills browse_tag_counts from the postings (which 0008 made from the rows): per tag, the rows
    of each access bucket, tier, type and status ("" for a facet the browsable lacks); exactly what a
    rebuild from the rows makes."""
    db = Database(empty_database_url)
    stamps = {"created_at": "2025-01-02 03:04:05", "updated_at": "2025-01-02 03:04:05"}
    try:
        command.upgrade(migrate.alembic_config(db.url), "0007")
        with db.engine.begin() as conn:
            for user in ("u1", "u2"):
                _insert(conn, "users", id=user, email=f"{user}@example.com", display_name="U", is_admin=False,
                        **stamps)  # fmt: skip
            _insert(conn, "workspaces", id="w1", name="W", **stamps)
            dtu = {"workspace_id": "w1", "version": 1, "human": "{}", "core": "{}", "machine": "{}",
                   "dtu_type": "claim", "citation_mode": "original", "citations": "[]", "status": "active",
                   "content_hash": "h", **stamps}  # fmt: skip
            for dtu_id, owner, tags, tier, visibility in (
                ("d1", "u1", '["jazz", "folk"]', "mega", "workspace"),
                ("d2", "u1", '["jazz"]', "mega", "workspace"),
                ("d3", "u2", '["jazz"]', "hyper", "public"),
            ):
                _insert(conn, "dtus", id=dtu_id, owner_id=owner, title=dtu_id, tags=tags, tier=tier,
                        visibility=visibility, **dtu)  # fmt: skip
            _insert(conn, "artifacts", id="a1", workspace_id="w1", owner_id="u2", name="Tape", kind="audio",
                    visibility="public", tags='["jazz"]', current_version=0, **stamps)  # fmt: skip
        migrate.upgrade(db)
        with db.engine.begin() as conn:
            filled = snapshot(conn)["browse_tag_counts"]
            savepoint = conn.begin_nested()
            for browsable in INDEXED.values():
                rebuild(conn, browsable)
            rebuilt = snapshot(conn)["browse_tag_counts"]
            savepoint.rollback()
        mine, theirs = ("workspace", "w1", "u1"), ("public", "w1", "u2")
        assert filled == {
            ("dtus", "jazz", *mine, "mega", "claim", "active", 2),
            ("dtus", "folk", *mine, "mega", "claim", "active", 1),
            ("dtus", "jazz", *theirs, "hyper", "claim", "active", 1),
            ("artifacts", "jazz", *theirs, "", "audio", "", 1),
        }
        assert filled == rebuilt
    finally:
        db.dispose()
