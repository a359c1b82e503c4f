"""Concord with this lens installed: a runtime on a throwaway SQLite database, and a GraphQL client.

The lens is found the way a deployment finds it, through its ``concord.lenses`` entry point, so these
tests need the package installed (``pip install -e examples/concord-lens-bookmarks``). They use only
Concord's public pieces, never its own test fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bookmarks_support import GraphQL, make_settings
from fastapi.testclient import TestClient

from concord_core.api.app import create_app
from concord_core.api.runtime import Runtime
from concord_core.auth.accounts import create_user
from concord_core.auth.principal import Principal
from concord_core.db.migrate import upgrade
from concord_core.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.open(settings)  # the installed lenses, from the concord.lenses entry points
    upgrade(rt.db)
    rt.start()
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


@pytest.fixture
def gql(client: TestClient) -> GraphQL:
    return GraphQL(client)


@pytest.fixture
def someone(runtime: Runtime) -> Principal:
    """A second, ordinary (non-admin) user with a personal workspace of their own."""
    with runtime.db.write() as session:
        user_id = create_user(session, email="someone@example.org", display_name="Someone").id
    return runtime.principal_for_user(user_id)
