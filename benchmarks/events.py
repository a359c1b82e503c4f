"""Serialized event appends per second, on PostgreSQL and SQLite.

Each append is its own committed write transaction (``Database.write()`` + ``append_event``), which is
what every operator pays for its event: the ``event_head`` row lock (PostgreSQL) or the database write
lock (SQLite), the hash of the previous event, and a durable commit. Runs N appends from one client and
then N from several threads contending for the chain head, and checks the chain afterwards.

    .venv/bin/python benchmarks/events.py                      # both databases, 3000 appends
    .venv/bin/python benchmarks/events.py --backend postgres -n 10000 --threads 8
    CONCORD_BENCH_POSTGRES_URL=postgresql://user:pw@host/postgres .venv/bin/python benchmarks/events.py

Target (issue 2): at least 2,000 serialized appends per second on PostgreSQL on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DEFAULT_POSTGRES_URL, header, percentile, postgres_database
from concord_core.db.engine import Database
from concord_core.db.migrate import upgrade
from concord_core.events.log import append_event, verify_chain

TARGET_POSTGRES = 2000.0


def append_one(db: Database, client: int, n: int) -> None:
    with db.write() as session:
        append_event(
            session,
            event_type="BENCH_EVENT_APPENDED",
            entity_type="bench",
            entity_id=f"client-{client}",
            payload={"n": n, "client": client, "note": "a payload of typical size " * 4},
            workspace_id=None,
            actor_id=None,
            request_id=f"bench-{client}-{n}",
        )


def run(db: Database, total: int, clients: int) -> tuple[float, list[float]]:
    """``total`` appends spread over ``clients`` threads; returns (seconds, per-append latencies)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(index: int, count: int) -> None:
        try:
            start.wait()
            for n in range(count):
                began = time.perf_counter()
                append_one(db, index, n)
                latencies[index].append(time.perf_counter() - began)
        except BaseException as exc:  # reported below, so a failing run does not print a figure
            errors.append(exc)

    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(i, shares[i])) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return elapsed, [value for per_client in latencies for value in per_client]


@contextmanager
def database(backend: str, postgres_url: str) -> Iterator[Database]:
    if backend == "postgres":
        with postgres_database(postgres_url) as url:
            db = Database(url)
            try:
                yield db
            finally:
                db.dispose()
        return
    with tempfile.TemporaryDirectory(prefix="concord-bench-") as directory:
        db = Database(f"sqlite:///{directory}/events.db")
        try:
            yield db
        finally:
            db.dispose()


def commit_floor(db: Database, total: int) -> float:
    """Commits per second of the bare driver, one client, each a one-row INSERT in its own transaction:
    what the disk (fsync) and the connection allow before Concord does anything, so the append rate can
    be read against it when other work on the machine moves both."""
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE bench_floor (n INTEGER)")
        connection.commit()
        began = time.perf_counter()
        for _ in range(total):
            cursor.execute("INSERT INTO bench_floor (n) VALUES (1)")
            connection.commit()
        elapsed = time.perf_counter() - began
        cursor.execute("DROP TABLE bench_floor")
        connection.commit()
    finally:
        connection.close()
    return total / elapsed


def bench(backend: str, postgres_url: str, total: int, threads: int) -> dict[int, float]:
    rates: dict[int, float] = {}
    with database(backend, postgres_url) as db:
        upgrade(db)
        floor = commit_floor(db, min(total, 1000))
        print(f"{backend:<9} floor: the bare driver commits {floor:8.0f}/s (1 client, one-row INSERT each)")
        append_one(db, 0, -1)  # warm up: connection, statement caches
        for clients in (1, threads):
            elapsed, latencies = run(db, total, clients)
            rate = total / elapsed
            rates[clients] = rate
            print(
                f"{backend:<9} {clients:>2} client{'s' if clients > 1 else ' '} {total:>6} appends "
                f"in {elapsed:6.2f} s = {rate:8.0f}/s   "
                f"p50 {percentile(latencies, 0.5) * 1000:6.2f} ms  "
                f"p95 {percentile(latencies, 0.95) * 1000:6.2f} ms"
            )
            sys.stdout.flush()
        with db.read() as session:
            report = verify_chain(session)
        state = "intact" if report.ok else f"BROKEN at {report.broken_at}"
        print(f"{backend:<9} chain after the run: {state}, {report.checked} events")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--appends", type=int, default=3000, help="appends per run (default 3000)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients in the second run")
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="an existing database on the server to benchmark (a scratch database is created next to it; "
        "default $CONCORD_BENCH_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    args = parser.parse_args(argv)
    header("event appends: one committed transaction per append")
    backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    for backend in backends:
        rates = bench(backend, args.postgres_url, args.appends, args.threads)
        if backend == "postgres":
            best = max(rates.values())
            verdict = "meets" if best >= TARGET_POSTGRES else "MISSES"
            print(f"postgres  best {best:.0f}/s {verdict} the target of {TARGET_POSTGRES:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
