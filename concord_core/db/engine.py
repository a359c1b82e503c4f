"""Engines and transactions for SQLite (embedded) and PostgreSQL (psycopg 3).

Writes go through :meth:`Database.write`: one transaction, committed or rolled back as a whole. On SQLite a
write transaction starts with ``BEGIN IMMEDIATE`` so two writers never deadlock on lock upgrade; readers use
a plain ``BEGIN`` and, with WAL, never block writers. Work that must follow a commit before the write
returns (sealing the events a PostgreSQL transaction staged: :mod:`concord_core.events.log`) is registered
on the session with :func:`after_commit`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import orjson
import psycopg
from psycopg import pq
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

WRITE_OPTION = "concord_write"
#: ``session.info`` key: what to run once the session's write transaction has committed.
AFTER_COMMIT = "concord_after_commit"
# A pooled PostgreSQL connection that sat idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 5.0
#: Settings of every PostgreSQL session Concord opens. Its statements are short (a page, a counter sum, one
#: write); parallel workers and JIT compilation cost more to start than such a statement takes to run
#: (at 1M DTUs the planner launched 2 workers for a tag-filtered page: 448 ms before the first row on a
#: busy machine, against a few ms without), and setting them per transaction would cost a round trip each.
#: TimeZone=UTC: timestamps then arrive already in UTC (see UtcDateTime), whatever the server's default.
#: Options in the database URL come after these, so they win.
POSTGRES_SESSION_OPTIONS = "-c jit=off -c max_parallel_workers_per_gather=0 -c TimeZone=UTC"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event (below) issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def json_loads(document: str | bytes) -> Any:
    """A JSON column's value, as ``json.loads`` reads it, decoded by orjson, several times faster (a page
    of 50 DTUs decodes 50 tag lists). What orjson refuses and ``json`` reads (an integer past 64 bits, a
    number past a float's range, a lone surrogate) goes to ``json.loads``: the same values either way."""
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError:
        return json.loads(document)


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    kwargs.setdefault("json_deserializer", json_loads)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args = {**kwargs.pop("connect_args", {}), "options": _postgres_options(parsed)}
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    _ping_idle_connections(engine)
    return engine


def _postgres_options(url: URL) -> str:
    """Every connection's ``options``: the session settings, then any the URL gives (which win)."""
    given = url.query.get("options", ())
    return " ".join((POSTGRES_SESSION_OPTIONS, *((given,) if isinstance(given, str) else given)))


def _ping_idle_connections(engine: Engine) -> None:
    """Pre-ping, but only where it can matter: ``pool_pre_ping`` costs a round trip on every checkout
    (one per transaction), which a busy server pays thousands of times a second for connections it used a
    millisecond ago. Here a connection the driver already knows is broken is replaced without a round
    trip, and one that sat idle in the pool for more than ``PING_AFTER_IDLE_SECONDS`` (when a server
    restart or an idle timeout may have closed it) is pinged first. A connection that dies while busy
    raises a disconnect error, which invalidates the whole pool as before."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["concord_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if getattr(dbapi_connection, "broken", False) or getattr(dbapi_connection, "closed", False):
            raise exc.InvalidatePoolError("connection is broken")
        idle_since = record.info.get("concord_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # any failure: replace this connection and every older one
            raise exc.InvalidatePoolError(f"ping failed: {error}") from error


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """On PostgreSQL, send the block's statements together and read their results in one round trip when
    it ends (psycopg's pipeline mode; BEGIN goes with them if the transaction has sent nothing yet).

    Only for Core statements that return no rows: SQLAlchemy looks for a statement's rows as soon as it
    runs, before a pipeline has them (a single-row INSERT into a table whose key the database generates
    returns that key, so it is such a statement), and an ORM flush reads row counts as it goes. An error
    surfaces when the block ends, as the SQLAlchemy exception its statement would have raised, and fails
    the transaction as before. Inside another pipelined block, and on SQLite, it changes nothing."""
    driver = connection.connection.driver_connection if connection.dialect.name == "postgresql" else None
    if driver is None or driver.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        yield
        return
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as error:
        raise exc.DBAPIError.instance(None, None, error, psycopg.Error) from error


def driver_fetchone(
    connection: Connection, statement: str, parameters: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """PostgreSQL: run ``statement`` (psycopg's ``%(name)s`` placeholders) on ``connection``'s psycopg
    connection, inside its transaction, and return its first row.

    For a hot statement of fixed text whose parameters need no conversion (the event append): SQLAlchemy's
    execution of even a cached statement costs several times the driver's. Statement events do not see
    it. A driver error is raised as the SQLAlchemy exception its statement would have raised, and fails
    the transaction as before; a connection it broke is replaced at its next checkout."""
    driver = cast("psycopg.Connection[Any]", connection.connection.driver_connection)
    try:
        with driver.cursor() as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchone()
    except psycopg.Error as error:
        raise exc.DBAPIError.instance(statement, parameters, error, psycopg.Error) from error


def after_commit(session: Session, action: Callable[[Database], None]) -> None:
    """Run ``action`` once the :meth:`Database.write` transaction of ``session`` has committed, before the
    write returns (never if it rolls back). Of a write opened inside another on the same thread, after
    the outermost one ends: an action may wait for locks the enclosing transaction still holds."""
    actions: list[Callable[[Database], None]] = session.info.setdefault(AFTER_COMMIT, [])
    actions.append(action)


class Database:
    """The metadata database: an engine plus read and write session factories."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        # Reads that need no transaction: on PostgreSQL autocommit saves BEGIN and ROLLBACK, two round
        # trips (switching a pooled connection to autocommit and back is client-side only). SQLite reads
        # stay in a transaction (in process, they cost no round trip).
        self._single_reads = (
            self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._single_reader = sessionmaker(self._single_reads, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        # Reentrant: a write opened inside another on the same thread waits in SQLite, as it did before.
        self._write_lock = threading.RLock() if self.is_sqlite else None
        # Per thread: the after-commit actions of the writes inside the outermost open one.
        self._writes = threading.local()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises. Once it has
        committed, the :func:`after_commit` actions registered on the session run before this returns.

        On SQLite, writers of this process queue on a lock first: SQLite lets one writer in at a time, and
        its busy handler makes the others sleep 1, 2, 5 … 100 ms between retries instead of waking them
        when the lock is free (other processes are still kept apart by SQLite and its busy timeout)."""
        queued: AbstractContextManager[object] = self._write_lock or nullcontext()
        writes = self._writes
        outermost = not hasattr(writes, "after_commit")
        if outermost:
            writes.after_commit = []
        try:
            with queued, self._writer() as session:
                with session.begin():
                    yield session
                writes.after_commit.extend(session.info.pop(AFTER_COMMIT, ()))
        finally:
            if outermost:
                actions = writes.after_commit
                del writes.after_commit
                for action in actions:
                    action(self)

    @contextmanager
    def read(self, *, transaction: bool = True) -> Iterator[Session]:
        """A session for reading. Closing it ends its transaction without committing; objects it loaded
        stay usable (detached) after the block.

        ``transaction=False`` is for reads that need nothing a transaction gives: no ``SET LOCAL``, no
        locks, no one snapshot shared by their statements. On PostgreSQL they run in autocommit, saving
        two round trips (BEGIN and ROLLBACK) and reading the same rows: sessions read at READ COMMITTED,
        where each statement sees what was committed before it began either way. On SQLite it is an
        ordinary read (in process, no round trips; there a transaction does keep one snapshot)."""
        with (self._reader if transaction else self._single_reader)() as session:
            yield session

    def connect_for_one_read(self) -> Connection:
        """A Core connection for reads that need no transaction (see :meth:`read`)."""
        return self._single_reads.connect()

    def connect_arguments(self) -> dict[str, Any]:
        """PostgreSQL: what ``psycopg.connect`` takes to open a connection as the engine opens its own."""
        _args, parameters = self.engine.dialect.create_connect_args(self.engine.url)
        return {**parameters, "options": _postgres_options(self.engine.url)}

    @contextmanager
    def autocommit_statement(self) -> Iterator[psycopg.Connection[Any]]:
        """PostgreSQL: a pooled connection's psycopg connection in autocommit, for one statement that is a
        transaction of its own: one round trip, where a SQLAlchemy connection would add BEGIN and COMMIT
        and about half as much CPU again as the statement. Back in the pool it is transactional again."""
        pooled = self.engine.raw_connection()
        try:
            connection = cast("psycopg.Connection[Any]", pooled.driver_connection)
            connection.autocommit = True
            try:
                yield connection
            finally:
                if not connection.broken:  # a broken one is replaced at its next checkout
                    connection.autocommit = False
        finally:
            pooled.close()

    def dispose(self) -> None:
        self.engine.dispose()
