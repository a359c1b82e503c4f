"""The PostgreSQL connection pool: no ping round trip for a connection that was just used, a ping (and a
fresh connection when it fails) for one that sat idle; the session settings every connection gets; reads of
one statement without a transaction; statements on the driver inside a write; JSON columns decoded as
json.loads decodes them."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import String, literal_column, select, text
from sqlalchemy.exc import IntegrityError

from concord_core.db import engine as engine_module
from concord_core.db.engine import Database, driver_fetchone
from concord_core.db.types import JsonDocument


def pings(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []
    ping = db.engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        sent.append(dbapi_connection)
        return bool(ping(dbapi_connection))

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    return sent


def test_a_connection_just_used_is_not_pinged(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(postgres_url)
    try:
        sent = pings(db, monkeypatch)
        for _ in range(5):
            with db.write() as session:
                assert session.execute(text("SELECT 1")).scalar() == 1
        assert sent == []
    finally:
        db.dispose()


def test_an_idle_connection_that_died_is_replaced(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(postgres_url)
    try:
        with db.write() as session:
            backend = session.execute(text("SELECT pg_backend_pid()")).scalar()
        # The server ends the pooled connection while it is idle (a restart, an idle timeout).
        admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        sent = pings(db, monkeypatch)
        with db.write() as session:
            assert session.execute(text("SELECT pg_backend_pid()")).scalar() != backend
        assert len(sent) == 1  # the dead one was pinged and replaced; the new one needs no ping
    finally:
        db.dispose()


def test_every_postgres_session_has_short_statement_settings(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        for read in (db.read(), db.read(transaction=False), db.write()):
            with read as session:
                assert session.execute(text("SHOW jit")).scalar() == "off"
                assert session.execute(text("SHOW max_parallel_workers_per_gather")).scalar() == "0"
    finally:
        db.dispose()


def test_options_in_the_database_url_still_apply_and_win(postgres_url: str) -> None:
    options = quote("-c statement_timeout=1234 -c jit=on")
    db = Database(f"{postgres_url}?options={options}")
    try:
        with db.read() as session:
            assert session.execute(text("SHOW statement_timeout")).scalar() == "1234ms"
            assert session.execute(text("SHOW jit")).scalar() == "on"
            assert session.execute(text("SHOW max_parallel_workers_per_gather")).scalar() == "0"
    finally:
        db.dispose()


def statement_times(db: Database, transaction: bool) -> tuple[Any, Any]:
    with db.read(transaction=transaction) as session:
        first = session.execute(text("SELECT now()")).scalar()
        time.sleep(0.01)
        return first, session.execute(text("SELECT now()")).scalar()


def test_a_read_of_one_statement_runs_outside_a_transaction(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        first, second = statement_times(db, transaction=True)
        assert first == second  # one transaction: now() is its start
        first, second = statement_times(db, transaction=False)
        assert second > first  # each statement its own
        # and a connection used that way goes back to the pool in its usual state
        for _ in range(3):
            first, second = statement_times(db, transaction=True)
            assert first == second
        with db.connect_for_one_read() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
            assert connection.connection.driver_connection.autocommit  # type: ignore[union-attr]
    finally:
        db.dispose()


def test_a_statement_on_the_driver_is_part_of_the_write_and_fails_as_sqlalchemy_would(
    postgres_url: str,
) -> None:
    """driver_fetchone runs inside the session's transaction (rolled back with it), and a driver error is
    the SQLAlchemy exception the statement would have raised through SQLAlchemy."""
    db = Database(postgres_url)
    try:
        with db.write() as session:
            session.execute(text("CREATE TABLE driven (n integer PRIMARY KEY)"))
        insert = "INSERT INTO driven (n) VALUES (%(n)s) RETURNING n * 10"
        with pytest.raises(RuntimeError), db.write() as session:
            assert driver_fetchone(session.connection(), insert, {"n": 1}) == (10,)
            raise RuntimeError("roll back")
        with pytest.raises(IntegrityError) as raised, db.write() as session:
            assert driver_fetchone(session.connection(), insert, {"n": 2}) == (20,)
            driver_fetchone(session.connection(), insert, {"n": 2})
        assert isinstance(raised.value.orig, psycopg.errors.UniqueViolation)
        with db.write() as session:  # the pool's connection is usable again
            assert driver_fetchone(session.connection(), insert, {"n": 3}) == (30,)
        with db.read() as session:
            assert session.execute(text("SELECT n FROM driven")).scalars().all() == [3]
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "document",
    [
        '{"huge": 1180591620717411303424, "below": -1180591620717411303424}',  # past 64 bits
        '{"big": 1e400, "text": "na\\u00efve \\u2014 \\ud83c\\udfb5"}',  # past a float (SQLite)
        '{"n": 1, "f": 0.1, "e": 1e16, "nested": [{"a": null}, true, "x"]}',  # orjson's own
    ],
)
def test_json_columns_read_as_json_reads_them(database_url: str, document: str) -> None:
    """JSON columns are decoded by orjson, and what orjson refuses by json: the values are what
    json.loads makes of the text the database returns."""
    db = Database(database_url)
    if db.is_sqlite:  # PostgreSQL refuses a lone surrogate; SQLite keeps the text as it is
        document = document[:-1] + ', "lone": "\\ud800"}'
    quoted = "'" + document.replace("'", "''") + "'"
    stored = f"CAST({quoted} AS jsonb)" if db.is_postgres else quoted
    as_text = f"CAST({stored} AS text)" if db.is_postgres else quoted
    try:
        with db.read() as session:
            value, returned = session.execute(
                select(literal_column(stored, JsonDocument), literal_column(as_text, String))
            ).one()
        assert value == json.loads(returned)
        assert "huge" not in value or value["huge"] == 2**70
    finally:
        db.dispose()
