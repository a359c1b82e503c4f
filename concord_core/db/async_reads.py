"""One-statement reads on PostgreSQL from the event loop itself, for what every request reads first (who is
asking) before any of its work.

Elsewhere a request's database work runs in a worker thread on SQLAlchemy's synchronous engine. On this
kind of machine a hand-off to a thread and back costs about 250 µs of CPU (two wake-ups), and executing a
cached Core select through a pooled SQLAlchemy connection about 350 µs more: a credential's lookup took
about 1 ms of CPU that way, against 0.14 ms as one query on a psycopg ``AsyncConnection`` awaited on the
loop (measured on the same machine). :class:`AsyncReads` keeps a few such connections (autocommit, with
the engine's session settings) for the loop that opened it, and runs Core selects on them, compiled for
the engine's dialect once each: the same SQL SQLAlchemy sends. Rows come back as named tuples with the
driver's values (JSON decoded, timestamps aware): the statements it runs select no column whose
SQLAlchemy type changes what the driver returns in a way its callers can tell (see
:mod:`concord_core.auth.authenticate`).

A connection that fails is dropped and the read tried once more on a new one (the server may have
restarted since it was last used). Used from another event loop than its own (or after :meth:`close`),
it says so (:meth:`usable`) and callers use the threaded path instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.sql import Select

from concord_core.db.engine import Database

#: Connections open at most, and reads at once; more readers wait (each read takes about a round trip).
MAX_CONNECTIONS = 4

Connection = psycopg.AsyncConnection[NamedTuple]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    values: dict[str, Any]  # every parameter, with the statement's own values (None where it has none)
    processors: dict[str, Callable[[Any], Any]]  # the parameters whose type processes what is bound


class AsyncReads:
    """A small pool of psycopg async connections on one event loop (see the module docstring)."""

    def __init__(self, db: Database, max_connections: int = MAX_CONNECTIONS) -> None:
        if not db.is_postgres:
            raise ValueError("async reads are for PostgreSQL")
        self._db = db
        self._loop = asyncio.get_running_loop()
        self._capacity = asyncio.Semaphore(max_connections)
        self._idle: list[Connection] = []
        self._closed = False
        self._compiled: dict[Select[Any], _Compiled] = {}

    def usable(self) -> bool:
        """Whether reads may run here: open, and called on the loop it was opened on."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return not self._closed and running is self._loop

    async def rows(self, statement: Select[Any], parameters: Mapping[str, Any]) -> list[NamedTuple]:
        """The rows of ``statement`` (a Core select whose parameters are all given, by name)."""
        compiled = self._compiled.get(statement) or self._compile(statement)
        values = {**compiled.values, **parameters}
        for name, process in compiled.processors.items():
            if values[name] is not None:
                values[name] = process(values[name])
        async with self._capacity:
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await self._connect()
                try:
                    cursor = await connection.execute(compiled.sql, values)
                    rows = await cursor.fetchall()
                except psycopg.OperationalError:
                    await connection.close()
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    await connection.close()
                    raise
                if self._closed:
                    await connection.close()
                else:
                    self._idle.append(connection)
                return rows
        raise AssertionError("unreachable")

    def _compile(self, statement: Select[Any]) -> _Compiled:
        dialect = self._db.engine.dialect
        compiled = statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("async reads take statements without expanding parameters")
        processors: dict[str, Callable[[Any], Any]] = {
            name: process
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        # The values the statement holds itself (a LIMIT), as defaults for those the caller gives.
        result = _Compiled(compiled.string, dict(compiled.params), processors)
        self._compiled[statement] = result
        return result

    async def _connect(self) -> Connection:
        return await psycopg.AsyncConnection.connect(
            **self._db.connect_arguments(), autocommit=True, row_factory=namedtuple_row
        )

    async def close(self) -> None:
        """Close the idle connections; those in use close when their reads end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()
