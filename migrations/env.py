"""Alembic environment. The URL comes from the caller (concord_core.db.migrate) or CONCORD_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from concord_core.db.engine import make_engine
from concord_core.db.migrate import managed_by_models
from concord_core.db.models import Base
from concord_core.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=managed_by_models,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `concord migrate`")
run_migrations_online()
