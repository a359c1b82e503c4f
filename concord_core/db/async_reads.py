"""One-statement reads on PostgreSQL from the event loop itself, for what most requests read first: who is
asking (every request), then a page of Global (:meth:`BrowseService.page_async`).

Elsewhere a request's database work runs in a worker thread on SQLAlchemy's synchronous engine. On this
kind of machine a hand-off to a thread and back costs about 250 µs of CPU (two wake-ups), and executing a
cached Core select through a pooled SQLAlchemy connection about 350 µs more: a credential's lookup took
about 1 ms of CPU that way, against 0.14 ms as one query on a psycopg ``AsyncConnection`` awaited on the
loop, and a page of 50 DTUs about 2 ms against 1 ms (measured on the same machine). :class:`AsyncReads`
keeps a few such connections (autocommit, with the engine's session settings and JSON decoding) for the
loop that opened it, and runs Core selects on them, compiled for the engine's dialect once each: the same
SQL SQLAlchemy sends, with the same processing of the values bound and of the values read (a
``TypeDecorator``'s, for one).

A connection that was lost is dropped and the read tried once more on a new one (the server may have
restarted since it was last used); a statement that fails (cancelled, say) fails its read. Used from
another event loop than its own (or after :meth:`close`), it says so (:meth:`usable`) and callers use the
threaded path instead.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import RowFactory, namedtuple_row, tuple_row
from psycopg.types.json import set_json_loads
from sqlalchemy.sql import Select

from concord_core.db.engine import Database, json_loads

#: Connections open at most (opened as reads need them), and reads at once; more readers wait. A
#: credential's read takes a round trip, a page's a few ms; a slower page keeps only one of them.
MAX_CONNECTIONS = 8
#: Statements kept compiled, the least recently read dropped first (a page's are made per question).
MAX_COMPILED = 1024

Connection = psycopg.AsyncConnection[Any]


@dataclass
class _Compiled:
    sql: str
    values: dict[str, Any]  # every parameter, with the statement's own values (None where it has none)
    processors: dict[str, Callable[[Any], Any]]  # the parameters whose type processes what is bound
    required: frozenset[str]  # the parameters the caller must give
    fixed: frozenset[str]  # lists the statement holds (IN), written out as one parameter per item
    types: list[Any]  # of the columns read, in order
    # The columns whose type processes the value read, by position, with what it does; known once a read
    # has told the driver's type of each column (None until then).
    readers: list[tuple[int, Callable[[Any], Any]]] | None = None


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
        self._compiled: OrderedDict[Select[Any], _Compiled] = OrderedDict()
        #: Called with each statement's SQL before it is sent, as SQLAlchemy's ``before_cursor_execute``
        #: is for the engine's own (statement counts, tracing).
        self.listeners: list[Callable[[str], None]] = []

    def usable(self) -> bool:
        """Whether reads may run here: open, and called on the loop it was opened on."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return not self._closed and running is self._loop

    async def rows(self, statement: Select[Any], parameters: Mapping[str, Any]) -> list[NamedTuple]:
        """The rows of ``statement`` (a Core select whose parameters are all given, by name)."""
        _names, rows = await self._read(statement, parameters, namedtuple_row)
        return rows

    async def table(
        self, statement: Select[Any], parameters: Mapping[str, Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The names of the columns of ``statement`` (as SQLAlchemy's result keys) and its rows, as tuples."""
        return await self._read(statement, parameters, tuple_row)

    async def _read(
        self, statement: Select[Any], parameters: Mapping[str, Any], row_factory: RowFactory[Any]
    ) -> tuple[list[str], list[Any]]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compile(statement)
        else:
            self._compiled.move_to_end(statement)
        if compiled.fixed & parameters.keys():
            raise ValueError("async reads take a statement's lists as it holds them, not as parameters")
        if missing := compiled.required - parameters.keys():
            raise ValueError(f"a value is required for the parameters {sorted(missing)}")
        values = {**compiled.values, **parameters}
        for name, process in compiled.processors.items():
            if values[name] is not None:
                values[name] = process(values[name])
        for listener in self.listeners:
            listener(compiled.sql)
        async with self._capacity:
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await self._connect()
                try:
                    cursor = connection.cursor(row_factory=row_factory)
                    await cursor.execute(compiled.sql, values)
                    rows = await cursor.fetchall()
                    description = cursor.description or []
                except psycopg.OperationalError:
                    lost = connection.broken  # the connection is gone, not just the statement
                    await connection.close()
                    if attempt == 2 or not lost:
                        raise
                    continue
                except BaseException:
                    await connection.close()
                    raise
                if self._closed:
                    await connection.close()
                else:
                    self._idle.append(connection)
                return [column.name for column in description], self._processed(compiled, description, rows)
        raise AssertionError("unreachable")

    def _processed(self, compiled: _Compiled, description: Any, rows: list[Any]) -> list[Any]:
        """``rows`` with each column's value as its SQLAlchemy type reads it (most types leave psycopg's
        alone)."""
        if compiled.readers is None:
            dialect = self._db.engine.dialect
            processors = (
                column_type.dialect_impl(dialect).result_processor(dialect, column.type_code)
                for column_type, column in zip(compiled.types, description, strict=True)
            )
            compiled.readers = [(index, read) for index, read in enumerate(processors) if read is not None]
        readers = compiled.readers
        if not readers or not rows:
            return rows
        make = type(rows[0])._make if hasattr(rows[0], "_make") else tuple
        processed = []
        for row in rows:
            values = list(row)
            for index, read in readers:
                values[index] = read(values[index])
            processed.append(make(values))
        return processed

    def _compile(self, statement: Select[Any]) -> _Compiled:
        dialect = self._db.engine.dialect
        compiled = statement.compile(dialect=dialect)
        # The parameters the caller must give (the others have their values in the statement).
        required = frozenset(name for bind, name in compiled.bind_names.items() if bind.required)
        # The SQL as SQLAlchemy sends it, with a list the statement holds (an IN of the asker's
        # workspaces) written out, one parameter per item; the values the statement holds itself (a
        # LIMIT, those items) are the defaults of the others, None until the caller gives them.
        expanded = compiled.construct_expanded_state({name: None for name in required})
        # What each parameter's type does to its value: the statement's own binds (anonymous ones by the
        # names in the SQL), then each item of a list written out (only those are in ``expanded``).
        processors: dict[str, Callable[[Any], Any]] = {
            name: process
            for bind, name in compiled.bind_names.items()
            if not bind.expanding
            and (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        processors.update(expanded.processors)
        result = _Compiled(
            sql=expanded.statement,
            values=dict(expanded.parameters),
            processors=processors,
            required=required,
            fixed=frozenset(expanded.parameter_expansion),
            types=[column.type for column in statement.selected_columns],
        )
        self._compiled[statement] = result
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return result

    async def _connect(self) -> Connection:
        connection = await psycopg.AsyncConnection.connect(**self._db.connect_arguments(), autocommit=True)
        set_json_loads(json_loads, connection)  # as the engine's connections decode JSON
        return connection

    async def close(self) -> None:
        """Close the idle connections; those in use close when their reads end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()
