"""The ``concord`` command: serve, migrate, inspect the database, verify the event log, replay, back up
and restore."""

from __future__ import annotations

import argparse
import difflib
import getpass
import ipaddress
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from concord_core.backup.layout import BackupError
from concord_core.cli.jobs import add_job_commands
from concord_core.db.engine import Database
from concord_core.db.migrate import SchemaNotCurrent
from concord_core.settings import AuthMode, Settings, SettingsError, load_settings

Command = Callable[[argparse.Namespace, Settings], int]


def _database(settings: Settings) -> Database:
    return Database(settings.resolved_database_url)


@contextmanager
def _migrated_session(settings: Settings) -> Iterator[Session]:
    """A read session on a database at the code's schema, its event log sealed first (events a process left
    staged when it died are part of the log that is checked); SchemaNotCurrent (a readable message)
    otherwise."""
    from concord_core.db.migrate import require_current
    from concord_core.events.log import seal_pending

    db = _database(settings)
    try:
        require_current(db)
        seal_pending(db)
        with db.read() as session:
            yield session
    finally:
        db.dispose()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from concord_core.api.app import create_app
    from concord_core.api.gql.schema import load_lenses
    from concord_core.api.runtime import Runtime, freeze_startup_heap
    from concord_core.db.migrate import SchemaTooNew, upgrade
    from concord_core.events.log import seal_pending
    from concord_core.observability.logging import configure_logging
    from concord_core.plugins.registry import InvalidLenses

    configure_logging(settings.log_level, settings.log_json)
    host = args.host or settings.host
    port = args.port or settings.port
    # Refused before anything else: no lens is loaded, and no database created or migrated.
    if settings.auth_mode is AuthMode.PUBLIC and not is_loopback(host) and not settings.allow_public_bind:
        print(
            f"concord: refusing to listen on {host} in public mode, where anyone who can connect acts as the "
            "owner; use CONCORD_AUTH_MODE=apikey or jwt, or set CONCORD_ALLOW_PUBLIC_BIND=1",
            file=sys.stderr,
        )
        return 2
    try:
        lenses = load_lenses(settings)
    except InvalidLenses as exc:
        print(f"concord: refusing to start: {exc}", file=sys.stderr)
        print(
            "concord: fix the lenses, or set CONCORD_SKIP_INVALID_LENSES=1 to start without them",
            file=sys.stderr,
        )
        return 2
    runtime = Runtime.open(settings, lenses)
    try:
        before = upgrade(runtime.db)
    except SchemaTooNew as exc:
        runtime.close()
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    if before.pending:
        print(
            f"concord: migrated the database from {before.current or 'empty'} to {before.head}",
            file=sys.stderr,
        )
    # Events a process committed but did not live to seal join the log before anything is served.
    sealed = seal_pending(runtime.db)
    if sealed:
        print(f"concord: sealed {sealed} event(s) left in the outbox", file=sys.stderr)
    workers = args.workers or 1
    if workers > 1:
        # Each worker process opens its own runtime (serve_app); the parent has migrated the database and
        # made the local owner and seed items once, so the workers only find them.
        runtime.start()
        runtime.close()
        uvicorn.run(
            "concord_core.cli.main:serve_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
        )
        return 0
    app = create_app(runtime)
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    return 0


def serve_app() -> Any:
    """The app of one ``concord serve --workers N`` worker process, from the environment's settings."""
    from concord_core.api.app import create_app
    from concord_core.api.runtime import Runtime, freeze_startup_heap
    from concord_core.observability.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(Runtime.open(settings))
    freeze_startup_heap()
    return app


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.db.migrate import SchemaTooNew, upgrade

    try:
        before = upgrade(_database(settings))
    except SchemaTooNew as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    if before.pending:
        print(f"migrated {before.current or 'empty database'} -> {before.head} ({len(before.pending)} steps)")
    else:
        print(f"already at {before.head}")
    return 0


def cmd_db_status(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.db.migrate import SchemaTooNew, status

    try:
        state = status(_database(settings))
    except SchemaTooNew as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    print(f"database: {settings.resolved_database_url.split('@')[-1]}")
    print(f"current:  {state.current or '(empty)'}")
    print(f"head:     {state.head}")
    print(f"pending:  {', '.join(state.pending) or 'none'}")
    return 0 if state.up_to_date else 1


def cmd_events_verify(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.events.log import verify_chain

    with _migrated_session(settings) as session:
        report = verify_chain(session)
    if report.ok:
        print(f"event log intact: {report.checked} events")
        return 0
    print(f"event log BROKEN at sequence {report.broken_at}: {report.reason}")
    print(f"({report.checked} events before it are intact)")
    return 1


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.events.replay import verify_replay

    if not args.verify:
        print("concord replay: pass --verify to rebuild state from events and compare it with the tables")
        return 2
    with _migrated_session(settings) as session:
        report = verify_replay(session)
    if report.ok:
        print(f"replay matches the tables: {report.events} events, {report.rows} rows")
        return 0
    print(f"replay DIFFERS: {report.difference}")
    return 1


def _backup_path(given: str, settings: Settings) -> Path:
    """A backup named on the command line: a path, or the name of one in the backup directory."""
    path = Path(given)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        path = settings.resolved_backup_dir / given
    if not path.is_dir():
        raise BackupError(f"no backup at {path}")
    return path


def _backup_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir) if args.dir else settings.resolved_backup_dir


def cmd_backup_create(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.backup.create import create_backup
    from concord_core.storage import open_store

    directory = _backup_dir(args, settings)
    db = _database(settings)
    try:
        created = create_backup(db, open_store(settings), directory)
    finally:
        db.dispose()
    manifest = created.manifest
    rows = sum(table.rows for table in manifest.tables)
    print(f"backup {created.path}")
    print(
        f"  {rows} rows in {len(manifest.tables)} tables at schema {manifest.revision}, "
        f"event log at {manifest.event_seq}"
    )
    print(
        f"  {manifest.blobs} blobs, {manifest.blob_bytes} bytes ({created.blobs_copied} copied, "
        f"{created.blobs_linked} linked from the previous backup) in {created.seconds:.1f} s"
    )
    return 0


def cmd_backup_list(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.backup.layout import backups_in, read_manifest

    directory = _backup_dir(args, settings)
    backups = backups_in(directory)
    if not backups:
        print(f"no backups in {directory}")
    for backup in backups:
        try:
            manifest = read_manifest(backup)
        except BackupError as exc:
            print(f"{backup.name}  UNREADABLE: {exc}")
            continue
        rows = sum(table.rows for table in manifest.tables)
        print(
            f"{backup.name}  {manifest.backend:<10} schema {manifest.revision}  {rows} rows  "
            f"{manifest.blobs} blobs ({manifest.blob_bytes} bytes)  events to {manifest.event_seq}"
        )
    return 0


def cmd_backup_verify(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.backup.layout import verify

    path = _backup_path(args.backup, settings)
    try:
        verified = verify(path)
    except BackupError as exc:
        print(f"backup DAMAGED: {exc}")
        return 1
    print(f"backup intact: {verified.rows} rows, {verified.blobs} blobs ({verified.blob_bytes} bytes)")
    return 0


def cmd_backup_restore(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.backup.restore import restore_backup
    from concord_core.storage import open_store

    db = _database(settings)
    try:
        restored = restore_backup(_backup_path(args.backup, settings), db, open_store(settings))
    finally:
        db.dispose()
    print(
        f"restored {restored.rows} rows (schema {restored.manifest.revision}, taken "
        f"{restored.manifest.created_at.isoformat()} on {restored.manifest.backend}); blobs: "
        f"{restored.blobs_stored} stored, {restored.blobs_present} already there"
    )
    for problem in restored.problems:
        print(f"CHECK FAILED: {problem}")
    if restored.ok:
        print("checked: the event log's chain, a replay of it against the tables, the browse indexes")
        return 0
    return 1


def cmd_backup_prune(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.backup.retention import Policy, prune

    directory = _backup_dir(args, settings)
    policy = Policy(daily=args.keep_daily, weekly=args.keep_weekly, monthly=args.keep_monthly)
    pruned = prune(directory, policy, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in pruned.removed:
        print(f"{verb} {path.name}")
    print(f"kept {len(pruned.kept)} backups, {verb} {len(pruned.removed)}")
    return 0


def cmd_lens_validate(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.api.gql.schema import KERNEL
    from concord_core.plugins.manifest import manifest_path, validate_manifest_files
    from concord_core.plugins.registry import build_registry, discover

    if args.paths:
        problems = validate_manifest_files([Path(path) for path in args.paths])
        checked = f"{len({manifest_path(Path(path)) for path in args.paths})} manifest(s)"
    else:
        registry = build_registry(discover(), KERNEL)
        problems = registry.problems
        checked = f"{len(registry.lenses)} installed lens(es): " + ", ".join(
            f"{lens.lens_id} {lens.version or '?'}" for lens in registry.lenses
        )
    for problem in problems:
        print(problem)
    print(f"{'FAILED' if problems else 'ok'}: {checked}, {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_lens_list(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.api.gql.schema import KERNEL
    from concord_core.plugins.registry import build_registry, discover

    registry = build_registry(discover(), KERNEL)
    for lens in registry.lenses:
        print(f"{lens.lens_id:<24} {lens.version or '-':<10} {lens.status:<7} {lens.source}")
        for problem in lens.problems:
            print(f"    {problem}")
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    """schema.graphql documents Concord as shipped: the kernel and the built-in lenses only."""
    from concord_core.api.gql.schema import KERNEL, build_schema
    from concord_core.plugins.registry import InvalidLenses, discover, load_registry

    try:
        lenses = load_registry(KERNEL, skip_invalid=False, plugins=discover(builtin_only=True))
        sdl = build_schema(lenses).as_str() + "\n"
    except InvalidLenses as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    target = Path(args.file)
    if args.check:
        current = target.read_text("utf-8") if target.exists() else ""
        if current == sdl:
            print(f"{target} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), sdl.splitlines(), str(target), "running schema", lineterm=""
        )
        print("\n".join(list(diff)[:200]))
        print(f"{target} is stale: run `concord schema export`", file=sys.stderr)
        return 1
    target.write_text(sdl, "utf-8")
    print(f"wrote {target}")
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_admin_create_user(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.api.runtime import Runtime
    from concord_core.auth.principal import ANONYMOUS
    from concord_core.db.migrate import upgrade
    from concord_core.operators.accounts import admin_create_user
    from concord_core.operators.errors import OperatorError

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    runtime = Runtime.open(settings)
    try:
        upgrade(runtime.db)
        ctx = runtime.operation_context(ANONYMOUS)
        user = admin_create_user(ctx, args.email, password, args.name or args.email, args.admin, system=True)
    except OperatorError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(f"created {'administrator' if user.is_admin else 'user'} {user.email} ({user.id})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="concord", description="Concord: knowledge, artifacts, jobs, lenses."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database, then serve the API")
    serve.add_argument("--host", help="bind address (default CONCORD_HOST)")
    serve.add_argument("--port", type=int, help="port (default CONCORD_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (default 1); each runs its own in-process job runners "
        "when there is no Redis",
    )
    serve.set_defaults(func=cmd_serve)

    commands.add_parser("migrate", help="apply pending migrations").set_defaults(func=cmd_migrate)

    db = commands.add_parser("db", help="database inspection").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("status", help="current and pending migrations (exit 1 when behind)").set_defaults(
        func=cmd_db_status
    )

    events = commands.add_parser("events", help="the event log").add_subparsers(
        dest="events_command", required=True
    )
    events.add_parser("verify", help="check the hash chain (exit 1 at the first broken link)").set_defaults(
        func=cmd_events_verify
    )

    replay = commands.add_parser("replay", help="rebuild state from the event log")
    replay.add_argument("--verify", action="store_true", help="compare the rebuilt state with the tables")
    replay.set_defaults(func=cmd_replay)

    backup = commands.add_parser(
        "backup", help="back up the database and the object store, and restore them"
    ).add_subparsers(dest="backup_command", required=True)
    where = "the backup directory (default CONCORD_BACKUP_DIR)"
    create = backup.add_parser("create", help="take a backup of the database and every blob it refers to")
    create.add_argument("--dir", help=where)
    create.set_defaults(func=cmd_backup_create)
    listing = backup.add_parser("list", help="the backups in the backup directory, oldest first")
    listing.add_argument("--dir", help=where)
    listing.set_defaults(func=cmd_backup_list)
    verifying = backup.add_parser(
        "verify", help="check a backup's files against their hashes (exit 1 if damaged)"
    )
    verifying.add_argument("backup", help="a backup's directory, or its name in the backup directory")
    verifying.set_defaults(func=cmd_backup_verify)
    restore = backup.add_parser(
        "restore", help="restore a backup into a new, empty database and the configured object store"
    )
    restore.add_argument("backup", help="a backup's directory, or its name in the backup directory")
    restore.set_defaults(func=cmd_backup_restore)
    pruning = backup.add_parser("prune", help="remove the backups the retention policy does not keep")
    pruning.add_argument("--dir", help=where)
    for period, default, unit in (("daily", 7, "days"), ("weekly", 4, "ISO weeks"), ("monthly", 6, "months")):
        pruning.add_argument(
            f"--keep-{period}",
            type=int,
            default=default,
            metavar="N",
            help=f"keep the newest backup of each of the last N {unit} that have one (default {default})",
        )
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pruning.set_defaults(func=cmd_backup_prune)

    lens = commands.add_parser("lens", help="lenses (plugins)").add_subparsers(
        dest="lens_command", required=True
    )
    validate = lens.add_parser("validate", help="check installed lenses, or the given manifests/lens folders")
    validate.add_argument(
        "paths", nargs="*", help="manifest.json files or lens folders (default: installed lenses)"
    )
    validate.set_defaults(func=cmd_lens_validate)
    lens.add_parser("list", help="installed lenses with version and status").set_defaults(func=cmd_lens_list)

    admin = commands.add_parser("admin", help="administration").add_subparsers(
        dest="admin_command", required=True
    )
    create_user = admin.add_parser(
        "create-user", help="create an account (e.g. the first admin of a closed instance)"
    )
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--name", help="display name (default: the email)")
    create_user.add_argument("--admin", action="store_true", help="make the account an administrator")
    create_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create_user.set_defaults(func=cmd_admin_create_user)

    schema = commands.add_parser("schema", help="the composed GraphQL schema (SDL)")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True)
    for name, check, text in (
        ("export", False, "write the SDL"),
        ("check", True, "fail when the file is stale"),
    ):
        sub = schema_commands.add_parser(name, help=text)
        sub.add_argument("--file", default="schema.graphql", help="default: schema.graphql")
        sub.set_defaults(func=cmd_schema, check=check)

    add_job_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    func: Command = args.func
    try:
        return func(args, settings)
    except (SchemaNotCurrent, BackupError) as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
