"""``concord worker`` and ``concord jobs list|watch|retry|cancel``.

The ``jobs`` commands read and change the database directly, as the operator of the instance (the audit
log records them without a user); ``watch`` draws a live progress bar, woken by the same notifications the
GraphQL subscriptions use, and exits 0 when the job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select

from concord_core.settings import Settings

BAR_WIDTH = 30


def _runtime(settings: Settings) -> Any:
    from concord_core.api.runtime import Runtime

    return Runtime.open(settings)


def _system() -> Any:
    from concord_core.auth.principal import Principal

    return Principal(user_id=None, is_admin=True)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.supervisor import serve

    if not settings.redis_url:
        print(
            "concord worker: set CONCORD_REDIS_URL; without Redis, `concord serve` runs jobs itself",
            file=sys.stderr,
        )
        return 2
    queues = [q for part in args.queues or [] for q in part.split(",") if q]
    return int(serve(lambda: _open_for_work(settings), queues or None, args.processes, burst_mode=args.burst))


def _open_for_work(settings: Settings) -> Any:
    """The worker's runtime, once the database is known to be migrated (workers never migrate)."""
    from concord_core.db.migrate import status
    from concord_core.observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    runtime = _runtime(settings)
    state = status(runtime.db)
    if not state.up_to_date:
        runtime.close()
        raise SystemExit(f"concord worker: the database is at {state.current}; run `concord migrate`")
    return runtime


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.db.engine import Database
    from concord_core.db.models import Job

    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(args.limit)
    if args.status:
        query = query.where(Job.status == args.status)
    if args.type:
        query = query.where(Job.job_type == args.type)
    db = Database(settings.resolved_database_url)
    try:
        with db.read() as session:
            rows = list(session.scalars(query))
    finally:
        db.dispose()
    print(f"{'ID':<36}  {'TYPE':<32} {'STATUS':<9} {'TRIES':>5} {'PROGRESS':>8}  CREATED")
    for job in rows:
        print(
            f"{job.id:<36}  {job.job_type[:32]:<32} {job.status:<9} {job.attempts:>2}/{job.max_attempts:<2} "
            f"{job.progress * 100:>7.0f}%  {job.created_at:%Y-%m-%d %H:%M:%S}"
        )
    return 0


def _bar(fraction: float) -> str:
    filled = round(fraction * BAR_WIDTH)
    return "#" * filled + "-" * (BAR_WIDTH - filled)


def cmd_jobs_watch(args: argparse.Namespace, settings: Settings) -> int:
    from concord_core.db.models import Job
    from concord_core.jobs.records import TERMINAL

    runtime = _runtime(settings)
    last = ""
    try:
        with runtime.jobs.notifier.subscribe([f"job:{args.id}"]) as wakeups:
            while True:
                with runtime.db.read() as session:
                    job = session.get(Job, args.id)
                if job is None:
                    print(f"concord: no job {args.id}", file=sys.stderr)
                    return 2
                line = (
                    f"[{_bar(job.progress)}] {job.progress * 100:3.0f}%  {job.status:<9} "
                    f"attempt {job.attempts}/{job.max_attempts}  {(job.progress_message or '')[:60]}"
                )
                if line != last:
                    print(f"\r{line:<120}", end="", flush=True)
                    last = line
                if job.status in TERMINAL:
                    print()
                    if job.error:
                        print(f"error: {job.error}")
                    if job.output is not None:
                        print(f"output: {job.output}")
                    return 0 if job.status == "succeeded" else 1
                wakeups.wait_sync(min(1.0, settings.job_poll_seconds))
    except KeyboardInterrupt:
        print()
        return 130
    finally:
        runtime.close()


def _control(args: argparse.Namespace, settings: Settings, retry: bool) -> int:
    from concord_core.jobs.control import cancel_job, retry_job
    from concord_core.operators.errors import OperatorError

    runtime = _runtime(settings)
    try:
        ctx = runtime.operation_context(_system())
        operator = retry_job if retry else cancel_job
        job = operator(ctx, runtime.jobs.catalog, args.id)
    except OperatorError as exc:
        print(f"concord: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(f"{job.id}: {job.status}" + (" (cancel requested)" if job.cancel_requested else ""))
    return 0


def cmd_jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    return _control(args, settings, retry=True)


def cmd_jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return _control(args, settings, retry=False)


def add_job_commands(commands: Any) -> None:
    """Add ``worker`` and ``jobs`` to the ``concord`` command's subcommands."""
    worker = commands.add_parser("worker", help="run RQ job workers and the reaper/relay loop (needs Redis)")
    worker.add_argument(
        "--queues", action="append", help="queues to work, comma-separated (default: every known queue)"
    )
    worker.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    worker.add_argument(
        "--burst", action="store_true", help="work in this process until no job is due, then exit"
    )
    worker.set_defaults(func=cmd_worker)

    jobs = commands.add_parser("jobs", help="durable jobs").add_subparsers(dest="jobs_command", required=True)
    listing = jobs.add_parser("list", help="recent jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--type", help="only jobs of this type")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_jobs_list)
    watch = jobs.add_parser("watch", help="follow a job with a live progress bar (exit 0 if it succeeds)")
    watch.add_argument("id")
    watch.set_defaults(func=cmd_jobs_watch)
    retry = jobs.add_parser("retry", help="queue a failed or cancelled job again")
    retry.add_argument("id")
    retry.set_defaults(func=cmd_jobs_retry)
    cancel = jobs.add_parser("cancel", help="cancel a queued job, or ask a running one to stop")
    cancel.add_argument("id")
    cancel.set_defaults(func=cmd_jobs_cancel)
