"""The PostgreSQL connection pool: no ping round trip for a connection that was just used, a ping (and a
fresh connection when it fails) for one that sat idle."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from concord_core.db import engine as engine_module
from concord_core.db.engine import Database


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
