"""Restoring a backup into a new, empty database and the configured object store.

In order, so that no step leaves something a later one cannot finish:

1. the whole backup is verified (:func:`~concord_core.backup.layout.verify`): a damaged backup stops the
   restore before it writes anything;
2. the database is migrated to the backup's schema revision (a new database) or must already be at it,
   and must be empty (the genesis row of the event log aside): a restore never merges into live data;
3. every blob goes into the object store (content-addressed: one already there is left as it is), before
   any row refers to it;
4. every row goes in, in one transaction, tables in the order their foreign keys need; PostgreSQL's
   sequences are moved past the restored keys;
5. the database is migrated to this code's head, as ``concord serve`` would;
6. the result is checked: the event log's hash chain, a replay of the log against the tables, and the
   browse indexes against a rebuild.

A crash or an error before step 4 commits leaves a database with no rows (and perhaps some blobs, which
nothing refers to), so the same restore can simply be run again. The backup may come from the other
backend: rows are written in a form both read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    LargeBinary,
    Text,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from concord_core.backup.layout import (
    BackupError,
    Manifest,
    TableFile,
    blob_hashes,
    blob_path,
    decode,
    read_rows,
    verify,
)
from concord_core.db.engine import WRITE_OPTION, Database
from concord_core.db.migrate import SchemaTooNew, alembic_config, status, upgrade
from concord_core.db.types import UtcDateTime
from concord_core.events.log import GENESIS_HASH
from concord_core.storage import BlobStore
from concord_core.storage.errors import StorageError

_ROWS_PER_BATCH = 1000


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    rows: int
    blobs_stored: int
    blobs_present: int
    #: What the checks after the restore found wrong, if anything (each a sentence).
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def restore_backup(backup: Path, db: Database, store: BlobStore) -> Restored:
    """Restore ``backup`` into ``db`` (new or empty, see the module docstring) and ``store``.
    BackupError, with nothing restored, if the backup is damaged or the database is not empty."""
    verified = verify(backup)
    manifest = verified.manifest
    _prepare_schema(db, manifest.revision)
    _require_empty(db, manifest)
    stored = present = 0
    for sha256 in blob_hashes(backup, manifest):
        if store.exists(sha256):
            present += 1
            continue
        _put_blob(store, blob_path(backup, sha256), sha256)
        stored += 1
    writes = db.engine.execution_options(**{WRITE_OPTION: True})
    with writes.begin() as connection:
        connection.execute(delete(table("event_head")))
        for table_file in manifest.tables:
            _insert_rows(connection, backup, table_file, db.is_postgres)
        if db.is_postgres:
            _move_sequences(connection, manifest)
    upgrade(db)
    return Restored(manifest, verified.rows, stored, present, _check(db))


def _prepare_schema(db: Database, revision: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(db.url))
    if revision not in {known.revision for known in script.walk_revisions()}:
        raise BackupError(
            f"the backup's schema revision {revision} is unknown to this Concord: it was taken by a newer "
            "version; restore it with that version"
        )
    try:
        current = status(db).current
    except SchemaTooNew as exc:
        raise BackupError(str(exc)) from None
    if current is None:
        command.upgrade(alembic_config(db.url), revision)
    elif current != revision:
        raise BackupError(
            f"the database is at schema revision {current} and the backup at {revision}: restore into a "
            "new, empty database (migrations only go forward)"
        )


def _require_empty(db: Database, manifest: Manifest) -> None:
    with db.engine.connect() as connection:
        for table_file in manifest.tables:
            if table_file.name == "event_head":
                head = connection.execute(text("SELECT seq, hash FROM event_head")).all()
                if any((seq, hash_) != (0, GENESIS_HASH) for seq, hash_ in head):
                    raise BackupError("the database is not empty: its event log has events")
                continue
            count = connection.execute(select(func.count()).select_from(table(table_file.name))).scalar_one()
            if count:
                raise BackupError(
                    f"the database is not empty ({table_file.name} has {count} rows): restore into a new, "
                    "empty database"
                )


def _put_blob(store: BlobStore, path: Path, sha256: str) -> None:
    try:
        with path.open("rb") as file:
            ref = store.put_stream(file, max_bytes=path.stat().st_size)
    except (OSError, StorageError) as exc:
        raise BackupError(f"cannot store blob {sha256}: {exc}") from None
    if ref.sha256 != sha256:  # verified a moment ago; changed since
        raise BackupError(f"blob {sha256} changed in the backup while it was being restored")


def _value(codec: str, name: str) -> ColumnElement[Any]:
    """SQLite: the bound value of a column written with ``codec`` (a JSON document as its text)."""
    if codec == "json":
        return bindparam(name, type_=Text())
    if codec == "bytes":
        return bindparam(name, type_=LargeBinary())
    if codec == "time":
        return bindparam(name, type_=UtcDateTime())
    return bindparam(name)


def _insert_rows(connection: Connection, backup: Path, table_file: TableFile, postgres: bool) -> None:
    """Every row of ``table_file`` into its table, inside the connection's transaction: with COPY on
    PostgreSQL (several times faster than INSERTs), batched INSERTs on SQLite. BackupError if the
    database refuses a row (a value one backend holds and the other cannot, say)."""
    decoded = (
        [decode(codec, value) for codec, value in zip(table_file.codecs, row, strict=True)]
        for row in read_rows(backup, table_file)
    )
    try:
        if postgres:
            _copy_rows(connection, table_file, decoded)
        else:
            _insert_batches(connection, table_file, decoded)
    except (DBAPIError, psycopg.Error) as exc:
        raise BackupError(f"the database refused a row of {table_file.name}: {exc}") from None


def _copy_rows(connection: Connection, table_file: TableFile, rows: Iterator[list[Any]]) -> None:
    # JSON documents go as their text, which the server parses into jsonb as it would a literal.
    columns = ", ".join(f'"{name}"' for name in table_file.columns)
    driver = cast("psycopg.Connection[Any]", connection.connection.driver_connection)
    with driver.cursor() as cursor, cursor.copy(f'COPY "{table_file.name}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)


def _insert_batches(connection: Connection, table_file: TableFile, rows: Iterator[list[Any]]) -> None:
    keys = [f"v{index}" for index in range(len(table_file.columns))]
    target = table(table_file.name, *(column(name) for name in table_file.columns))
    statement = insert(target).values(
        {
            name: _value(codec, key)
            for name, codec, key in zip(table_file.columns, table_file.codecs, keys, strict=True)
        }
    )
    for batch in _batches(dict(zip(keys, row, strict=True)) for row in rows):
        connection.execute(statement, batch)


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    while batch := list(islice(rows, _ROWS_PER_BATCH)):
        yield batch


def _move_sequences(connection: Connection, manifest: Manifest) -> None:
    for table_file in manifest.tables:
        if table_file.serial is None:
            continue
        connection.execute(
            text(
                "SELECT setval(pg_get_serial_sequence(:table, :column), "
                f'COALESCE(MAX("{table_file.serial}"), 1), MAX("{table_file.serial}") IS NOT NULL) '
                f'FROM "{table_file.name}"'
            ),
            {"table": table_file.name, "column": table_file.serial},
        )


def _check(db: Database) -> list[str]:
    from concord_core.browse.indexes import verify_all
    from concord_core.events.log import verify_chain
    from concord_core.events.replay import verify_replay

    problems = []
    with db.read() as session:
        chain = verify_chain(session)
        if not chain.ok:
            problems.append(f"the event log is broken at sequence {chain.broken_at}: {chain.reason}")
        replayed = verify_replay(session)
        if not replayed.ok:
            problems.append(f"a replay of the event log differs from the tables: {replayed.difference}")
    with db.engine.begin() as connection:
        difference = verify_all(connection)
    if difference is not None:
        problems.append(f"the browse indexes differ from a rebuild: {difference}")
    return problems
