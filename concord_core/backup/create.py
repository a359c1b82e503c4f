"""Taking a backup: every table read in one snapshot, then every blob those rows refer to.

The tables are read in one read-only transaction (PostgreSQL: REPEATABLE READ, one snapshot for all
statements; SQLite: one read transaction, which under WAL sees one state of the file), so the backup is
one committed state of the database while the instance keeps serving. Blobs are copied afterwards: a blob
is stored before any row refers to it and is never deleted, so every blob the snapshot names is there.
A blob that the newest earlier backup in the same directory already holds is hard-linked from it instead
of copied (an incremental artifact snapshot, like ``rsync --link-dest``); each backup stays whole on its
own, and deleting one never takes a file another still names.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import Connection, Table, Text, cast, select

from concord_core import __version__
from concord_core.backup.layout import (
    BLOB_COLUMN,
    BLOB_TABLE,
    MANIFEST,
    NAME_FORMAT,
    PARTIAL_PREFIX,
    BackupError,
    Manifest,
    TableFile,
    backups_in,
    blob_path,
    codec_of,
    encode,
    file_sha256,
    table_path,
)
from concord_core.db.engine import Database
from concord_core.db.migrate import SchemaNotCurrent, require_current
from concord_core.db.models import Base, EventHead
from concord_core.db.types import utcnow
from concord_core.events.log import seal_pending
from concord_core.storage import BlobStore
from concord_core.storage.errors import StorageError
from concord_core.storage.local import fsync_dir, fsync_file, make_dirs

_ROWS_PER_FETCH = 2000


@dataclass(frozen=True)
class Created:
    path: Path
    manifest: Manifest
    blobs_copied: int
    blobs_linked: int
    seconds: float


def create_backup(db: Database, store: BlobStore, directory: Path) -> Created:
    """Back up the database of ``db`` and the blobs it refers to from ``store`` into a new directory
    under ``directory``. BackupError (and nothing left behind) if it cannot."""
    began = time.monotonic()
    try:
        state = require_current(db)
    except SchemaNotCurrent as exc:
        raise BackupError(str(exc)) from None
    seal_pending(db)  # events a dead process left staged go into the backup's log
    created_at = utcnow()
    name = created_at.strftime(NAME_FORMAT)
    final, partial = directory / name, directory / f"{PARTIAL_PREFIX}{name}"
    if final.exists() or partial.exists():
        raise BackupError(f"{final} exists already")
    previous = backups_in(directory)
    try:
        make_dirs(partial / "tables")
        tables, blobs, event_head = _write_tables(db, partial)
        copied, linked, blob_bytes = _copy_blobs(store, partial, blobs, previous[-1] if previous else None)
        manifest = Manifest(
            created_at=created_at,
            concord_version=__version__,
            backend=db.engine.dialect.name,
            revision=state.head,
            tables=tables,
            blobs=len(blobs),
            blob_bytes=blob_bytes,
            event_seq=event_head[0],
            event_hash=event_head[1],
        )
        _write_manifest(partial, manifest)
        os.rename(partial, final)
        fsync_dir(directory)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):  # the disk filled up, a directory is not writable...
            raise BackupError(f"cannot write the backup in {directory}: {exc}") from None
        raise
    return Created(final, manifest, copied, linked, time.monotonic() - began)


def _snapshot(db: Database) -> Connection:
    """A connection whose transaction, once begun, reads one state of the whole database."""
    connection = db.engine.connect()
    if db.is_postgres:
        connection = connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return connection


def _write_tables(db: Database, partial: Path) -> tuple[list[TableFile], list[str], tuple[int, str]]:
    """Every table's rows, from one snapshot; returns the table files, the blobs the artifact versions
    name (distinct, first-named first) and the event log's head."""
    tables: list[TableFile] = []
    blobs: dict[str, None] = {}
    with _snapshot(db) as connection, connection.begin():
        for table in Base.metadata.sorted_tables:
            written = _write_table(connection, partial, table, blobs if table.name == BLOB_TABLE else None)
            tables.append(written)
        head = connection.execute(select(EventHead.seq, EventHead.hash)).one()
    fsync_dir(partial / "tables")
    return tables, list(blobs), (int(head.seq), str(head.hash))


def _write_table(
    connection: Connection, partial: Path, table: Table, blobs: dict[str, None] | None
) -> TableFile:
    columns = list(table.columns)
    codecs = [codec_of(column) for column in columns]
    # JSON columns as the database's text of the document: exact, and a JSON null apart from SQL NULL.
    selected = [
        cast(column, Text).label(column.name) if codec == "json" else column
        for column, codec in zip(columns, codecs, strict=True)
    ]
    statement = select(*selected).order_by(*table.primary_key.columns)
    names = [column.name for column in columns]
    blob_index = names.index(BLOB_COLUMN) if blobs is not None else -1
    path = partial / table_path(table.name)
    rows = 0
    with gzip.open(path, "wb", compresslevel=3) as out:
        result = connection.execution_options(yield_per=_ROWS_PER_FETCH).execute(statement)
        for row in result:
            values = [encode(codec, value) for codec, value in zip(codecs, row, strict=True)]
            out.write(orjson.dumps(values) + b"\n")
            if blobs is not None:
                blobs[row[blob_index]] = None
            rows += 1
    fsync_file(path)
    serial = table.autoincrement_column
    return TableFile(
        name=table.name,
        columns=names,
        codecs=codecs,
        rows=rows,
        sha256=file_sha256(path),
        serial=None if serial is None else serial.name,
    )


def _copy_blobs(
    store: BlobStore, partial: Path, blobs: list[str], previous: Path | None
) -> tuple[int, int, int]:
    """Each blob into the backup, linked from ``previous`` where it has it; (copied, linked, bytes)."""
    copied = linked = total = 0
    for sha256 in blobs:
        target = blob_path(partial, sha256)
        make_dirs(target.parent)
        earlier = blob_path(previous, sha256) if previous is not None else None
        if earlier is not None and earlier.is_file():
            try:
                os.link(earlier, target)
                linked += 1
                total += target.stat().st_size
                fsync_dir(target.parent)
                continue
            except OSError:
                pass  # another filesystem, or links not allowed: copy it
        total += _copy_blob(store, sha256, target)
        copied += 1
    return copied, linked, total


def _copy_blob(store: BlobStore, sha256: str, target: Path) -> int:
    temp = target.with_name(f"{target.name}.part")
    size = 0
    try:
        with temp.open("wb") as out:
            for chunk in store.open_chunks(sha256):  # verified against the hash as it is read
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except StorageError as exc:
        temp.unlink(missing_ok=True)
        raise BackupError(f"cannot copy blob {sha256} from the object store: {exc}") from None
    os.replace(temp, target)
    fsync_dir(target.parent)
    return size


def _write_manifest(partial: Path, manifest: Manifest) -> None:
    temp = partial / f"{MANIFEST}.part"
    temp.write_bytes(orjson.dumps(manifest.to_json(), option=orjson.OPT_INDENT_2))
    fsync_file(temp)
    os.replace(temp, partial / MANIFEST)
    fsync_dir(partial)
