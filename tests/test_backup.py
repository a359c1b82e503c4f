"""Backups and restore (plan A3) through the ``concord backup`` command: a backup of a running instance
restored into a new database and object store on either backend gives back every row and every blob
(downloaded through the REST API), and passes the event log, replay and browse index checks; a damaged
backup, or a database that is not empty, is refused with nothing written; a restore that failed half way
can be run again; later backups link the blobs they share with the one before; ``prune`` keeps the
newest backup of each of the last days, weeks and months."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL, make_settings, postgres_database, sqlalchemy_url
from fastapi.testclient import TestClient
from sqlalchemy import JSON, Text, cast, select
from test_artifacts import CREATE_ARTIFACT, UPLOAD_VERSION, upload_ok
from test_dtus import EXPORT, PUBLISH, create, edit, key_of

from concord_core.api.app import create_app
from concord_core.api.gql.schema import load_lenses
from concord_core.api.runtime import Runtime
from concord_core.backup import restore as restore_module
from concord_core.backup.layout import NAME_FORMAT, PARTIAL_PREFIX, backups_in, blob_path
from concord_core.backup.restore import restore_backup
from concord_core.backup.retention import Policy, to_keep
from concord_core.cli.main import main
from concord_core.db.engine import Database
from concord_core.db.migrate import status
from concord_core.db.models import Base, Job, Workspace
from concord_core.settings import Settings
from concord_core.storage import LocalStore, open_store

CONCORD = str(Path(sys.executable).with_name("concord"))

SQL_NULL = "(SQL NULL)"
AUDIO = bytes(range(256)) * 300 + b"\x00\xff the end"
AUDIO_MASTERED = AUDIO[::-1]


def populate(gql: GraphQL, client: TestClient) -> dict[str, Any]:
    """DTUs with history, a citation, a publish and an export, and an artifact with two versions."""
    first = create(
        gql,
        title="Tension and release",
        human={"summary": "Music moves between tension and release."},
        tags=["harmony", "theory"],
        machine={"embedding": [0.25, -1.5], "nothing": None, "ok": True},
    )
    first = edit(gql, first, title="Tension, then release", tags=["harmony"])
    second = create(
        gql,
        title="Cadences",
        human={"summary": "Where phrases rest."},
        citationMode="CITING",
        citations=[first["id"]],
    )
    for dtu in (first, second):
        published = gql.run(PUBLISH, {"id": dtu["id"], "visibility": "PUBLIC"})["publishDtu"]
        assert published["errors"] == [], published
    exported = gql.run(EXPORT, {"ids": [first["id"], second["id"]]})["exportDtus"]
    assert exported["errors"] == []
    audio = upload_ok(client, CREATE_ARTIFACT, {"input": {"name": "take 1"}}, AUDIO, media_type="audio/wav")
    artifact = audio["artifact"]
    upload_ok(
        client,
        UPLOAD_VERSION,
        {"input": {"artifactId": artifact["id"], "label": "mastered"}},
        AUDIO_MASTERED,
        media_type="audio/wav",
    )
    return {"artifact": key_of(artifact["id"]), "export": key_of(exported["artifact"]["id"])}


def add_job_with_null_documents(runtime: Runtime) -> None:
    """A job row whose checkpoint is the JSON document ``null`` and whose output is SQL NULL."""
    with runtime.db.write() as session:
        workspace = session.scalars(select(Workspace).where(Workspace.personal_owner_id.is_not(None))).first()
        assert workspace is not None
        session.add(
            Job(
                workspace_id=workspace.id,
                owner_id=workspace.personal_owner_id,
                job_type="backup.example",
                input={"take": 1},
                input_hash="0" * 64,
                checkpoint=None,  # set to None: the JSON null (none_as_null is off)
            )
        )


def table_rows(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, JSON columns as parsed documents (backends differ in their JSON text)."""
    rows = {}
    with db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            json_columns = {column.name for column in table.columns if isinstance(column.type, JSON)}
            selected = [cast(c, Text) if c.name in json_columns else c for c in table.columns]
            result = connection.execute(select(*selected).order_by(*table.primary_key.columns))
            rows[table.name] = [
                tuple(
                    (SQL_NULL if value is None else json.loads(value)) if name in json_columns else value
                    for name, value in zip([c.name for c in table.columns], row, strict=True)
                )
                for row in result
            ]
    return rows


@contextmanager
def concord_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    """The process environment of a ``concord`` command run against ``settings``."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CONCORD_"):
                patch.delenv(name)
        patch.setenv("CONCORD_DATA_DIR", str(settings.data_dir))
        patch.setenv("CONCORD_DATABASE_URL", settings.resolved_database_url)
        patch.setenv("CONCORD_STORAGE_URL", settings.resolved_storage_url)
        yield


def concord(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str
) -> tuple[int, str]:
    """Run ``concord *argv`` in process against ``settings``; (exit code, everything it printed)."""
    capsys.readouterr()
    with concord_settings(monkeypatch, settings):
        code = main(list(argv))
    printed = capsys.readouterr()
    return code, printed.out + printed.err


@contextmanager
def new_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database (no schema) on ``backend``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    with postgres_database("concord_restore") as name:
        yield sqlalchemy_url(name)


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
def test_a_backup_restores_every_row_and_blob_on_either_backend(
    target: str,
    runtime: Runtime,
    client: TestClient,
    gql: GraphQL,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = populate(gql, client)
    add_job_with_null_documents(runtime)
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "create")
    assert code == 0, printed
    (backup,) = backups_in(runtime.settings.resolved_backup_dir)
    assert f"backup {backup}" in printed
    assert "3 blobs" in printed and "3 copied, 0 linked" in printed  # the export and the audio's versions
    before = table_rows(runtime.db)
    job_columns = [column.name for column in Base.metadata.tables["jobs"].columns]
    (job,) = before["jobs"]
    assert (job[job_columns.index("checkpoint")], job[job_columns.index("output")]) == (None, SQL_NULL)

    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "verify", backup.name)
    assert (code, printed.startswith("backup intact:")) == (0, True), printed

    with new_database(target, tmp_path) as url:
        restored = make_settings(tmp_path / "restored", url)
        code, printed = concord(monkeypatch, capsys, restored, "backup", "restore", str(backup))
        assert code == 0, printed
        assert "checked: the event log's chain" in printed
        db = Database(url)
        try:
            assert status(db).up_to_date
            assert table_rows(db) == before
        finally:
            db.dispose()
        # The restored instance serves the artifact's bytes, from its own object store.
        other = Runtime.open(restored, load_lenses(restored))
        try:
            with TestClient(create_app(other)) as restored_client:
                for number, content in ((1, AUDIO), (2, AUDIO_MASTERED)):
                    response = restored_client.get(
                        f"/api/artifacts/{made['artifact']}/versions/{number}/content"
                    )
                    assert (response.status_code, response.content) == (200, content)
                assert (
                    restored_client.get(f"/api/artifacts/{made['export']}/versions/1/content").status_code
                    == 200
                )
        finally:
            other.close()
        # And the log checks of the command line agree.
        for check in (("events", "verify"), ("replay", "--verify")):
            code, printed = concord(monkeypatch, capsys, restored, *check)
            assert code == 0, printed


def stored_blobs(settings: Settings) -> list[str]:
    return sorted(open_store(settings).iter_hashes())


@pytest.fixture
def backup(
    runtime: Runtime,
    client: TestClient,
    gql: GraphQL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    """A backup, through the command, of an instance that :func:`populate` filled."""
    populate(gql, client)
    assert concord(monkeypatch, capsys, runtime.settings, "backup", "create")[0] == 0
    (taken,) = backups_in(runtime.settings.resolved_backup_dir)
    return taken


@pytest.mark.parametrize("damage", ["blob", "table", "manifest"])
def test_a_damaged_backup_is_refused_and_nothing_is_written(
    damage: str,
    runtime: Runtime,
    backup: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if damage == "blob":
        path = blob_path(backup, stored_blobs(runtime.settings)[0])
        path.unlink()  # a link to the store's file would be damaged with it: write a copy
        path.write_bytes(b"not what was backed up")
        expected = "does not match its hash"
    elif damage == "table":
        path = backup / "tables" / "dtus.jsonl.gz"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        expected = "tables/dtus.jsonl.gz does not match its SHA-256"
    else:
        (backup / "manifest.json").write_text('{"format": "concord-backup", "format_version": 1}')
        expected = "the manifest is damaged"

    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "verify", str(backup))
    assert (code, "backup DAMAGED" in printed, expected in printed) == (1, True, True), printed

    restored = make_settings(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.db'}")
    code, printed = concord(monkeypatch, capsys, restored, "backup", "restore", str(backup))
    assert (code, expected in printed) == (2, True), printed
    assert (
        not (tmp_path / "restored.db").exists()
        or status(Database(restored.resolved_database_url)).current is None
    )
    assert stored_blobs(restored) == []


def test_a_database_that_is_not_empty_is_refused(
    runtime: Runtime,
    backup: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = table_rows(runtime.db)
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "restore", backup.name)
    assert (code, "the database is not empty" in printed) == (2, True), printed
    assert table_rows(runtime.db) == before


def test_a_restore_that_failed_half_way_can_be_run_again(
    runtime: Runtime,
    backup: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    restored = make_settings(tmp_path / "restored", f"sqlite:///{tmp_path / 'restored.db'}")
    db = Database(restored.resolved_database_url)
    try:
        real_insert, inserted = restore_module._insert_rows, []

        def insert_then_fail(connection: Any, backup: Path, table_file: Any, postgres: bool) -> None:
            if table_file.name == "dtu_versions":  # after users, workspaces and dtus went in
                raise OSError("the disk went away")
            inserted.append(table_file.name)
            real_insert(connection, backup, table_file, postgres)

        monkeypatch.setattr(restore_module, "_insert_rows", insert_then_fail)
        with pytest.raises(OSError):
            restore_backup(backup, db, open_store(restored))
        assert "dtus" in inserted
        assert all(not rows for rows in table_rows(db).values() if rows != [(1, 0, "0" * 64)])
        monkeypatch.setattr(restore_module, "_insert_rows", real_insert)

        result = restore_backup(backup, db, open_store(restored))
        assert result.ok, result.problems
        assert result.blobs_present == 3 and result.blobs_stored == 0  # stored by the first attempt
        assert table_rows(db) == table_rows(runtime.db)
    finally:
        db.dispose()


def test_later_backups_link_the_blobs_they_share_with_the_one_before(
    runtime: Runtime,
    client: TestClient,
    backup: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upload_ok(client, CREATE_ARTIFACT, {"input": {"name": "take 2"}}, b"a new take", media_type="audio/wav")
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "create")
    assert (code, "4 blobs" in printed, "1 copied, 3 linked" in printed) == (0, True, True), printed
    first, second = backups_in(runtime.settings.resolved_backup_dir)
    for sha256 in os.listdir(first / "blobs"):
        for name in os.listdir(first / "blobs" / sha256):
            assert (
                os.stat(first / "blobs" / sha256 / name).st_ino
                == os.stat(second / "blobs" / sha256 / name).st_ino
            )
    # Each stands on its own: removing the first leaves the second whole.
    shutil.rmtree(first)
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "verify", second.name)
    assert code == 0, printed
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "verify", first.name)
    assert (code, f"no backup at {first}" in printed) == (2, True), printed
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "list")
    assert (code, printed.startswith(second.name)) == (0, True), printed


def test_retention_keeps_the_newest_of_each_recent_day_week_and_month() -> None:
    start = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    # Two backups a day (03:00 and 15:00) for a year.
    moments = [start + timedelta(hours=12 * n) for n in range(2 * 365)]
    kept = to_keep(moments, Policy(daily=7, weekly=4, monthly=6))
    newest = max(moments)
    days = sorted({m for m in kept if newest - m < timedelta(days=7)})
    assert days == [newest - timedelta(days=n) for n in range(6, -1, -1)]  # each day's 15:00 backup
    months = sorted({(m.year, m.month) for m in kept})
    assert months == [(2026, month) for month in range(7, 13)]  # six months, this one included
    # The newest of each of the last four ISO weeks, and of each of the last six months.
    weeks = {m.isocalendar()[:2] for m in kept}
    assert len(weeks) >= 4
    for month in range(7, 12):
        last_of_month = max(m for m in moments if (m.year, m.month) == (2026, month))
        assert last_of_month in kept
    assert len(kept) <= 7 + 4 + 6
    with pytest.raises(Exception, match="remove every backup"):
        Policy(daily=0, weekly=0, monthly=0)


def test_prune_removes_what_the_policy_does_not_keep_and_dead_partial_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'concord.db'}")
    directory = settings.resolved_backup_dir
    now = datetime.now(UTC)
    for days in range(20):
        (directory / (now - timedelta(days=days)).strftime(NAME_FORMAT)).mkdir(parents=True)
    dead = directory / f"{PARTIAL_PREFIX}{(now - timedelta(days=2)).strftime(NAME_FORMAT)}"
    running = directory / f"{PARTIAL_PREFIX}{now.strftime(NAME_FORMAT)}"
    dead.mkdir()
    running.mkdir()
    old = time.time() - 2 * 86400
    os.utime(dead, (old, old))

    def prune(*policy: str) -> tuple[int, str]:
        return concord(monkeypatch, capsys, settings, "backup", "prune", *policy)

    keep_three_days = ("--keep-daily", "3", "--keep-weekly", "0", "--keep-monthly", "0")
    code, printed = prune(*keep_three_days, "--dry-run")
    assert (code, "kept 3 backups, would remove 18" in printed) == (0, True), printed
    assert len(backups_in(directory)) == 20

    code, printed = prune(*keep_three_days)
    assert (code, "kept 3 backups, removed 18" in printed) == (0, True), printed
    assert [b.name for b in backups_in(directory)] == [
        (now - timedelta(days=days)).strftime(NAME_FORMAT) for days in (2, 1, 0)
    ]
    assert not dead.exists() and running.exists()
    code, printed = prune("--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0")
    assert (code, "would remove every backup" in printed) == (2, True), printed


def test_a_backup_killed_half_way_leaves_no_backup_and_the_next_one_is_whole(
    runtime: Runtime,
    client: TestClient,
    gql: GraphQL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    populate(gql, client)
    settings = runtime.settings
    store = open_store(settings)
    assert isinstance(store, LocalStore)
    # One blob becomes a FIFO: the backup process blocks reading it, after it wrote every table: a
    # known moment in the middle of a backup at which to kill it.
    blob = store.path_for(stored_blobs(settings)[0])
    kept = blob.with_name("kept-aside")
    blob.rename(kept)
    os.mkfifo(blob)
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONCORD_")}
    env.update(
        CONCORD_DATA_DIR=str(settings.data_dir),
        CONCORD_DATABASE_URL=settings.resolved_database_url,
        CONCORD_STORAGE_URL=settings.resolved_storage_url,
    )
    process = subprocess.Popen([CONCORD, "backup", "create"], env=env, stderr=subprocess.PIPE)
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None:  # a writer can open the FIFO once the backup opened it to read
            try:
                writer = os.open(blob, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO, exc
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the backup never reached the blob"
                time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # while it waits for the blob's first bytes
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        if writer is not None:
            os.close(writer)
    blob.unlink()
    kept.rename(blob)

    directory = settings.resolved_backup_dir
    (partial,) = [path for path in directory.iterdir() if path.name.startswith(PARTIAL_PREFIX)]
    assert (partial / "tables" / "dtus.jsonl.gz").exists() and not (partial / "manifest.json").exists()
    assert backups_in(directory) == []
    code, printed = concord(monkeypatch, capsys, settings, "backup", "list")
    assert (code, "no backups in" in printed) == (0, True), printed
    code, printed = concord(monkeypatch, capsys, settings, "backup", "restore", str(partial))
    assert (code, "is not a backup" in printed) == (2, True), printed

    code, printed = concord(monkeypatch, capsys, settings, "backup", "create")
    assert (code, "3 copied, 0 linked" in printed) == (0, True), printed
    (backup,) = backups_in(directory)
    assert concord(monkeypatch, capsys, settings, "backup", "verify", backup.name)[0] == 0
    # prune takes the dead backup's directory once nothing has touched it for a while.
    assert concord(monkeypatch, capsys, settings, "backup", "prune")[0] == 0
    assert partial.exists()
    old = time.time() - 7 * 3600
    os.utime(partial, (old, old))  # but blobs/ab/ was written to a moment ago: still in progress?
    assert concord(monkeypatch, capsys, settings, "backup", "prune")[0] == 0
    assert partial.exists()
    for parent, _names, _files in os.walk(partial):
        os.utime(parent, (old, old))
    code, printed = concord(monkeypatch, capsys, settings, "backup", "prune")
    assert (code, f"removed {partial.name}" in printed) == (0, True), printed
    assert not partial.exists() and backups_in(directory) == [backup]


def test_a_backup_directory_that_cannot_be_written_is_a_clear_error(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the backups would go")
    code, printed = concord(monkeypatch, capsys, runtime.settings, "backup", "create", "--dir", str(blocked))
    assert (code, f"cannot write the backup in {blocked}" in printed) == (2, True), printed
    assert blocked.read_text() == "a file where the backups would go"
