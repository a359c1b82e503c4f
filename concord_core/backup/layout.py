"""What a backup is on disk, and how to check one.

A backup is a directory named by the moment it was taken (``20261203T101500.123456Z``)::

    manifest.json              what is in it: schema revision, tables, blob count, event head
    tables/<table>.jsonl.gz    one JSON array per row, columns in the manifest's order
    blobs/<ab>/<sha256>        every blob an artifact version refers to, named by its SHA-256

It is written under ``.partial-<name>`` and renamed to its name once everything in it is durable, so a
directory with a backup's name is always whole; a crash leaves a ``.partial-`` directory that no command
reads and that ``prune`` removes once nothing has been written to it for six hours. Each table file's
SHA-256 is in the manifest and each blob's is its name, so :func:`verify` finds any damage before a
restore writes anything.

Values are kept exactly, whatever the backend: JSON columns as the database's own text of the document
(so a JSON ``null`` stays apart from SQL NULL), binary as base64, timestamps as ISO 8601 in UTC.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary

from concord_core.db.types import UtcDateTime

FORMAT = "concord-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
#: A backup's directory name: the UTC moment it was taken, to the microsecond.
NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
NAME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
#: The table whose rows name the blobs a backup carries, and the column that does.
BLOB_TABLE, BLOB_COLUMN = "artifact_versions", "blob_sha256"
_READ_CHUNK = 1 << 20
#: What a table or column name in a manifest may be (they go into SQL on restore).
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class BackupError(Exception):
    """A backup cannot be taken, read or restored; the message says why. Nothing was changed."""


#: How a column's values are written: the database's JSON text, base64, ISO 8601, or as they are.
CODECS = ("json", "bytes", "time", "plain")


def codec_of(column: Column[Any]) -> str:
    if isinstance(column.type, JSON):
        return "json"
    if isinstance(column.type, LargeBinary):
        return "bytes"
    if isinstance(column.type, UtcDateTime):
        return "time"
    return "plain"


def encode(codec: str, value: Any) -> Any:
    if value is None or codec in ("json", "plain"):
        return value
    if codec == "bytes":
        return base64.b64encode(value).decode("ascii")
    return value.isoformat()


def decode(codec: str, value: Any) -> Any:
    if value is None or codec in ("json", "plain"):
        return value
    if codec == "bytes":
        return base64.b64decode(value, validate=True)
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class TableFile:
    name: str
    columns: list[str]
    codecs: list[str]
    rows: int
    sha256: str
    #: The integer key the database numbers (PostgreSQL's sequence is moved past it on restore).
    serial: str | None = None

    @property
    def path(self) -> str:
        return table_path(self.name)


@dataclass(frozen=True)
class Manifest:
    created_at: datetime
    concord_version: str
    backend: str
    revision: str
    #: In the order rows go back in: every table after the tables its foreign keys name.
    tables: list[TableFile]
    blobs: int
    blob_bytes: int
    event_seq: int
    event_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at.isoformat(),
            "concord_version": self.concord_version,
            "backend": self.backend,
            "revision": self.revision,
            "tables": [
                {
                    "name": table.name,
                    "columns": table.columns,
                    "codecs": table.codecs,
                    "rows": table.rows,
                    "sha256": table.sha256,
                    "serial": table.serial,
                }
                for table in self.tables
            ],
            "blobs": {"count": self.blobs, "bytes": self.blob_bytes},
            "event_head": {"seq": self.event_seq, "hash": self.event_hash},
        }

    @classmethod
    def from_json(cls, document: Any) -> Manifest:
        """The manifest in ``document``; BackupError if it is not one this code can read."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BackupError("not a Concord backup manifest")
        if document.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"backup format version {document.get('format_version')!r} is not {FORMAT_VERSION}: "
                "restore it with the Concord that wrote it"
            )
        try:
            tables = [
                TableFile(
                    name=str(table["name"]),
                    columns=[str(column) for column in table["columns"]],
                    codecs=[str(codec) for codec in table["codecs"]],
                    rows=int(table["rows"]),
                    sha256=str(table["sha256"]),
                    serial=None if table.get("serial") is None else str(table["serial"]),
                )
                for table in document["tables"]
            ]
            manifest = cls(
                created_at=datetime.fromisoformat(document["created_at"]),
                concord_version=str(document["concord_version"]),
                backend=str(document["backend"]),
                revision=str(document["revision"]),
                tables=tables,
                blobs=int(document["blobs"]["count"]),
                blob_bytes=int(document["blobs"]["bytes"]),
                event_seq=int(document["event_head"]["seq"]),
                event_hash=str(document["event_head"]["hash"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest is damaged: {exc!r}") from None
        for table in tables:
            names = [table.name, *table.columns, *([table.serial] if table.serial else [])]
            if not all(_IDENTIFIER.fullmatch(name) for name in names):
                raise BackupError(f"the manifest's names of table {table.name!r} are not identifiers")
            if len(table.codecs) != len(table.columns) or set(table.codecs) - set(CODECS):
                raise BackupError(f"the manifest's columns of {table.name} are damaged")
        return manifest

    def table(self, name: str) -> TableFile:
        for table in self.tables:
            if table.name == name:
                return table
        raise BackupError(f"the backup has no table {name}")


def table_path(name: str) -> str:
    """Where a table's rows are, relative to the backup."""
    return f"tables/{name}.jsonl.gz"


def blob_path(backup: Path, sha256: str) -> Path:
    return backup / "blobs" / sha256[:2] / sha256


def read_manifest(backup: Path) -> Manifest:
    if not NAME.match(backup.name):
        raise BackupError(f"{backup} is not a backup (its name is not a backup's timestamp)")
    try:
        text = (backup / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupError(f"{backup} has no {MANIFEST}: not a backup, or not a whole one") from None
    except OSError as exc:
        raise BackupError(f"cannot read {backup / MANIFEST}: {exc}") from None
    try:
        return Manifest.from_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise BackupError(f"the manifest is damaged: {exc}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_rows(backup: Path, table: TableFile) -> Iterator[list[Any]]:
    """The rows of ``table`` as written (encoded values); BackupError on a damaged file."""
    try:
        with gzip.open(backup / table.path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                row = json.loads(line)
                if not isinstance(row, list) or len(row) != len(table.columns):
                    raise BackupError(f"{table.path}, row {number}: not a row of {len(table.columns)} values")
                yield row
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{table.path} is damaged: {exc}") from None


def blob_hashes(backup: Path, manifest: Manifest) -> Iterator[str]:
    """Every distinct blob the backup's artifact versions refer to, in the order first referred to."""
    from concord_core.storage.blob import is_sha256  # here: the storage package loads the S3 client

    table = manifest.table(BLOB_TABLE)
    column = table.columns.index(BLOB_COLUMN)
    seen: set[str] = set()
    for row in read_rows(backup, table):
        sha256 = row[column]
        if not is_sha256(sha256):
            raise BackupError(f"{table.path}: {sha256!r} is not a blob's SHA-256")
        if sha256 not in seen:
            seen.add(sha256)
            yield sha256


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    rows: int
    blobs: int
    blob_bytes: int


def verify(backup: Path) -> Verified:
    """Check every file of ``backup`` against the manifest: each table file's SHA-256 and row count, and
    each blob's content against its name. BackupError at the first problem."""
    manifest = read_manifest(backup)
    for table in manifest.tables:
        path = backup / table.path
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise BackupError(f"cannot read {table.path}: {exc}") from None
        if actual != table.sha256:
            raise BackupError(f"{table.path} does not match its SHA-256 in the manifest (damaged)")
        rows = sum(1 for _ in read_rows(backup, table))
        if rows != table.rows:
            raise BackupError(f"{table.path} has {rows} rows, the manifest says {table.rows}")
    blobs = blob_bytes = 0
    for sha256 in blob_hashes(backup, manifest):
        path = blob_path(backup, sha256)
        try:
            actual = file_sha256(path)
            blob_bytes += path.stat().st_size
        except FileNotFoundError:
            raise BackupError(f"blob {sha256} is missing from the backup") from None
        except OSError as exc:
            raise BackupError(f"cannot read blob {sha256}: {exc}") from None
        if actual != sha256:
            raise BackupError(f"blob {sha256} does not match its hash (damaged)")
        blobs += 1
    if blobs != manifest.blobs:
        raise BackupError(f"the backup has {blobs} blobs, the manifest says {manifest.blobs}")
    return Verified(manifest, sum(table.rows for table in manifest.tables), blobs, blob_bytes)


def backups_in(directory: Path) -> list[Path]:
    """The whole backups in ``directory``, oldest first (a ``.partial-`` one is not whole)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if NAME.match(path.name) and path.is_dir())


def taken_at(backup: Path) -> datetime:
    """When ``backup`` was taken, from its name."""
    return datetime.strptime(backup.name, NAME_FORMAT).replace(tzinfo=UTC)
