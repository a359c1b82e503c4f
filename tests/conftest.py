"""Shared fixtures: every test that touches a database runs on SQLite and on PostgreSQL.

Each PostgreSQL test gets a fresh database on the shared server (CONCORD_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432) that is dropped afterwards. Outside CI a missing server skips those
tests; with CI=true it is a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from fastapi.testclient import TestClient

from concord_core.api.app import create_app
from concord_core.api.gql.schema import load_lenses
from concord_core.api.runtime import Runtime
from concord_core.db.engine import Database
from concord_core.db.migrate import upgrade
from concord_core.settings import Settings, load_settings

POSTGRES_ADMIN_URL = os.environ.get(
    "CONCORD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, error: Exception) -> NoReturn:
    """A service the test needs is not there: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI and is not reachable: {error}")
    pytest.skip(f"{what} not reachable: {error}")


def sqlalchemy_url(name: str) -> str:
    """The URL of database ``name`` on the test server, for SQLAlchemy with psycopg 3."""
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


@contextmanager
def postgres_database(prefix: str = "concord_test", template: str | None = None) -> Iterator[str]:
    """A new database on the test server (a copy of ``template`` if given), named ``<prefix>_<random>``;
    yields its name and drops it afterwards. Outside CI a missing server skips the test; in CI, fails it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with postgres_database() as name:
        yield sqlalchemy_url(name)


REDIS_TEST_URL = os.environ.get("CONCORD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The shared Redis server (CONCORD_TEST_REDIS_URL); skipped outside CI when unreachable, a failure in
    CI. Tests keep apart by key prefix: give each its own ``redis_namespace``, never flush this server."""
    import redis

    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    return REDIS_TEST_URL


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key prefix (``CONCORD_REDIS_NAMESPACE``) of this test's own; its RQ keys are deleted afterwards."""
    import redis

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    connection = redis.Redis.from_url(redis_url)
    keys = list(connection.scan_iter(match=f"*{namespace}*", count=1000))
    if keys:
        connection.delete(*keys)
    connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with nothing in it, on each backend: for tests of migrating itself."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'concord.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per session; tests get copies of it."""
    path = tmp_path_factory.mktemp("template") / "concord.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head once per session, the template of every test's database."""
    with postgres_database("concord_template") as name:
        db = Database(sqlalchemy_url(name))
        upgrade(db)
        db.dispose()  # CREATE DATABASE ... TEMPLATE needs the template without connections
        yield name


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own at the latest migration, on each backend (a copy of a migrated
    template, which is what migrating a fresh one would give, only faster)."""
    if request.param == "sqlite":
        path = tmp_path / "concord.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), path)
        yield f"sqlite:///{path}"
        return
    with postgres_database(template=request.getfixturevalue("migrated_postgres_template")) as name:
        yield sqlalchemy_url(name)


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "storage_url": str(tmp_path / "objects"),
        "log_json": True,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.open(settings, load_lenses(settings))
    upgrade(rt.db)
    rt.start()
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


class GraphQL:
    """Posts GraphQL operations; ``run`` fails the test on top-level errors, ``raw`` returns the body."""

    def __init__(self, client: TestClient, headers: dict[str, str] | None = None) -> None:
        self.client = client
        self.headers = headers or {}

    def raw(self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        response = self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=self.headers, **kwargs
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def run(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.raw(query, variables)
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture
def gql(client: TestClient) -> GraphQL:
    return GraphQL(client)
