"""Serialized event appends per second, on PostgreSQL and SQLite.

Each append is its own committed write transaction (``Database.write()`` + ``append_event``), which is
what every operator pays for its event: the ``event_head`` row lock (PostgreSQL) or the database write
lock (SQLite), the hash of the previous event, and a durable commit. Runs N appends from one client and
then N from several threads contending for the chain head, and checks the chain afterwards.

Threads of one Python process share its GIL (about 0.5 ms of CPU per append), so they cannot show what the
database does with concurrent appends; ``--processes N`` adds a run of N appends from N client processes
(each one client, its own connection pool), printing the client and server-backend CPU per append too.

``--ceiling`` (PostgreSQL, with ``--processes``) adds two runs from the same number of processes that show
what the machine allows, so the append rate can be read against them when its speed moves: the same
append and seal statements sent on a bare psycopg connection (no SQLAlchemy, no session: the protocol's own
cost), and one-row INSERT + COMMIT transactions (no chain at all: what the commits alone allow).

    .venv/bin/python benchmarks/events.py                      # both databases, 3000 appends
    .venv/bin/python benchmarks/events.py --backend postgres -n 10000 --threads 8
    .venv/bin/python benchmarks/events.py --backend postgres -n 4000 --processes 4 --ceiling
    CONCORD_BENCH_POSTGRES_URL=postgresql://user:pw@host/postgres .venv/bin/python benchmarks/events.py

Target (issue 2): at least 2,000 serialized appends per second on PostgreSQL on a 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.common import DEFAULT_POSTGRES_URL, cpu_seconds, header, percentile, postgres_database
from concord_core.db.engine import Database
from concord_core.db.migrate import upgrade
from concord_core.db.types import utcnow
from concord_core.events import log
from concord_core.events.log import append_event, verify_chain

TARGET_POSTGRES = 2000.0


def event(client: int, n: int) -> dict[str, Any]:
    """The ``n``th event of ``client``: what :func:`append_event` takes."""
    return {
        "event_type": "BENCH_EVENT_APPENDED",
        "entity_type": "bench",
        "entity_id": f"client-{client}",
        "payload": {"n": n, "client": client, "note": "a payload of typical size " * 4},
        "workspace_id": None,
        "actor_id": None,
        "request_id": f"bench-{client}-{n}",
    }


def append_one(db: Database, client: int, n: int) -> None:
    with db.write() as session:
        append_event(session, **event(client, n))


def append_on_driver(connection: psycopg.Connection[Any], client: int, n: int) -> None:
    """What :func:`append_one` sends, on a bare psycopg connection: the append statement and COMMIT, then,
    for an event staged in the outbox, the seal in autocommit (as ``Database.write`` runs it)."""
    params = log._append_parameters({**event(client, n), "created_at": utcnow()})
    (_seq, staged) = connection.execute(log._APPEND_OR_STAGE, params).fetchone() or (None, None)
    connection.commit()
    if staged is not None:
        connection.autocommit = True
        connection.execute(log._SEAL, [[staged]]).fetchone()
        connection.autocommit = False


def commit_on_driver(connection: psycopg.Connection[Any], client: int, n: int) -> None:
    """A one-row INSERT of an event-sized row and COMMIT, on a bare psycopg connection: no chain."""
    connection.execute(
        "INSERT INTO bench_commits (client, n, body) VALUES (%s, %s, %s)",
        [client, n, log.canonical_json(event(client, n))],
    )
    connection.commit()


#: What a client process of a ``--processes`` run does per append, by the run's name.
CLIENTS = {
    "concord": "Concord: Database.write() + append_event",
    "driver": "the same statements on the bare driver",
    "commit": "one-row INSERT + COMMIT, no chain",
}


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


def client_process(url: str, kind: str, index: int, count: int, start: Any, results: Any) -> None:
    """One client process of kind ``kind`` (:data:`CLIENTS`): ``count`` appends after ``start`` (a
    barrier); puts (latencies, own CPU seconds, CPU seconds of its database backend) on ``results``, or the
    error it met."""
    db = Database(url)
    connection = None
    try:
        if kind == "concord":
            append_one(db, index, -1)  # warm up, and fix the pool's connection
            backend = _backend_pid(db)

            def one(n: int) -> None:
                append_one(db, index, n)
        else:
            dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            connection = psycopg.connect(dsn)
            backend = connection.info.backend_pid
            on_driver = append_on_driver if kind == "driver" else commit_on_driver

            def one(n: int) -> None:
                on_driver(connection, index, n)

            one(-1)  # warm up
        backend_began = cpu_seconds(backend) if backend else None
        start.wait()
        began_cpu = time.process_time()
        latencies = []
        for n in range(count):
            began = time.perf_counter()
            one(n)
            latencies.append(time.perf_counter() - began)
        cpu = time.process_time() - began_cpu
        backend_cpu = None
        same_backend = connection is not None or _backend_pid(db) == backend
        if backend and backend_began is not None and same_backend:
            backend_now = cpu_seconds(backend)
            backend_cpu = None if backend_now is None else backend_now - backend_began
        results.put((latencies, cpu, backend_cpu))
    except BaseException as exc:  # reported by the parent, so a failing run does not print a figure
        results.put(repr(exc))
        raise
    finally:
        if connection is not None:
            connection.close()
        db.dispose()


def _backend_pid(db: Database) -> int | None:
    """The server process behind the pool's connection (a one-client process uses one), on PostgreSQL."""
    if not db.is_postgres:
        return None
    with db.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def append_paths(db: Database) -> tuple[int, int, int]:
    """PostgreSQL's counts of rows inserted into ``events`` and ``event_outbox`` and of updates of
    ``event_head`` (one per direct append and one per seal that sealed something). Backends report them
    when they exit, so read them once the clients are gone."""
    with db.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
            "WHERE relname IN ('events', 'event_outbox', 'event_head')"
        ).all()
    counts: dict[str, int] = {name: int(count) for name, count in rows}
    return counts["events"], counts["event_outbox"], counts["event_head"]


@dataclass
class ProcessRun:
    seconds: float
    latencies: list[float]
    client_cpu: float
    backend_cpu: float | None


def run_processes(url: str, total: int, processes: int, kind: str = "concord") -> ProcessRun:
    """``total`` appends spread over ``processes`` client processes of kind ``kind`` (spawned: no state
    shared with this one), timed from a common start."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)
    results = context.Queue()
    shares = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    children = [
        context.Process(target=client_process, args=(url, kind, i, shares[i], start, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    start.wait(timeout=120)
    began = time.perf_counter()
    outcomes = [results.get(timeout=600) for _ in children]
    elapsed = time.perf_counter() - began
    for child in children:
        child.join(timeout=30)
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if errors:
        raise RuntimeError(f"a client process failed: {errors[0]}")
    backend = [outcome[2] for outcome in outcomes]
    return ProcessRun(
        elapsed,
        [value for outcome in outcomes for value in outcome[0]],
        sum(outcome[1] for outcome in outcomes),
        None if None in backend else sum(backend),
    )


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


def bench(
    backend: str, postgres_url: str, total: int, threads: int, processes: int, ceiling: bool
) -> dict[str, float]:
    """Runs and prints; returns the append rates of Concord's own runs (not the ceiling's) by run."""
    rates: dict[str, float] = {}
    with database(backend, postgres_url) as db:
        upgrade(db)
        floor = commit_floor(db, min(total, 1000))
        print(f"{backend:<9} floor: the bare driver commits {floor:8.0f}/s (1 client, one-row INSERT each)")
        append_one(db, 0, -1)  # warm up: connection, statement caches
        for clients in (1, threads):
            elapsed, latencies = run(db, total, clients)
            rate = total / elapsed
            rates[f"{clients} thread{'s' if clients > 1 else ''}"] = rate
            print(
                f"{backend:<9} {clients:>2} client{'s' if clients > 1 else ' '} {total:>6} appends "
                f"in {elapsed:6.2f} s = {rate:8.0f}/s   "
                f"p50 {percentile(latencies, 0.5) * 1000:6.2f} ms  "
                f"p95 {percentile(latencies, 0.95) * 1000:6.2f} ms"
            )
            sys.stdout.flush()
        if processes:
            db.engine.dispose()  # the pool's idle backends exit, reporting their table statistics now
            counted = append_paths(db) if backend == "postgres" else None
            result = run_processes(db.url, total, processes)
            rates[f"{processes} processes"] = total / result.seconds
            print_process_run(backend, "appends", total, processes, result)
            if counted is not None:
                appended, staged, head_moves = (
                    after - before for after, before in zip(append_paths(db), counted, strict=True)
                )
                seals = head_moves - (appended - staged)
                print(
                    f"{backend:<9}    {staged} of {appended} appends staged in the outbox, sealed by {seals} "
                    f"seals ({staged / max(seals, 1):.1f} events per seal)"
                )
            sys.stdout.flush()
            if ceiling and backend == "postgres":
                run_ceiling(db, total, processes, total / result.seconds)
        with db.read() as session:
            report = verify_chain(session)
        state = "intact" if report.ok else f"BROKEN at {report.broken_at}"
        print(f"{backend:<9} chain after the run: {state}, {report.checked} events")
    return rates


def print_process_run(backend: str, what: str, total: int, processes: int, result: ProcessRun) -> None:
    server = (
        f", server backends {result.backend_cpu / total * 1e6:4.0f} µs"
        if result.backend_cpu is not None
        else ""
    )
    print(
        f"{backend:<9} {processes:>2} processes {total:>6} {what} in {result.seconds:6.2f} s = "
        f"{total / result.seconds:8.0f}/s   p50 {percentile(result.latencies, 0.5) * 1000:6.2f} ms  "
        f"p95 {percentile(result.latencies, 0.95) * 1000:6.2f} ms   "
        f"CPU per {what[:-1]}: clients {result.client_cpu / total * 1e6:4.0f} µs{server}"
    )
    sys.stdout.flush()


def run_ceiling(db: Database, total: int, processes: int, concord_rate: float) -> None:
    """The two runs of ``--ceiling`` (module docstring), right after Concord's, and how Concord's rate
    compares with each."""
    with db.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE bench_commits (client INTEGER, n INTEGER, body TEXT)")
    try:
        ceilings = {}
        for kind, what in (("driver", "appends"), ("commit", "commits")):
            print(f"postgres     ceiling, {CLIENTS[kind]}:")
            result = run_processes(db.url, total, processes, kind)
            print_process_run("postgres", what, total, processes, result)
            ceilings[kind] = total / result.seconds
    finally:
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE bench_commits")
    print(
        f"postgres     Concord's appends: {concord_rate / ceilings['driver']:.0%} of the bare driver's, "
        f"{concord_rate / ceilings['commit']:.0%} of bare commits; the bare driver's appends: "
        f"{ceilings['driver'] / ceilings['commit']:.0%} of bare commits"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--appends", type=int, default=3000, help="appends per run (default 3000)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients in the second run")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="also run the appends from this many client processes, one client each (default: no such run)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="with --processes, on PostgreSQL: also run the append on the bare driver and bare commits "
        "from as many processes (see above)",
    )
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
        rates = bench(backend, args.postgres_url, args.appends, args.threads, args.processes, args.ceiling)
        if backend == "postgres":
            best = max(rates, key=lambda run: rates[run])
            verdict = "meets" if rates[best] >= TARGET_POSTGRES else "MISSES"
            print(
                f"postgres  best {rates[best]:.0f}/s ({best}) {verdict} the target of {TARGET_POSTGRES:.0f}/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
