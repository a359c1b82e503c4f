"""Reads from the event loop on PostgreSQL (concord_core.db.async_reads): the same principal as the threaded
path for every kind of credential, the same Global pages, no statement through SQLAlchemy, and a connection
the server dropped is replaced without failing the read."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from authz import Instance, bearer, make_user, mode_settings, new_key, open_instance, sign_in
from conftest import POSTGRES_ADMIN_URL
from global_world import World, open_world, seed, statements
from sqlalchemy import bindparam, func, select

from concord_core.auth.accounts import PRINCIPAL_OF_USER
from concord_core.auth.authenticate import AuthenticationFailed, authenticate_async, credential_from
from concord_core.browse.connection import Page
from concord_core.browse.service import BrowseRequest, RangeFilter, TagFilter
from concord_core.browse.sources import DTUS
from concord_core.db.async_reads import AsyncReads
from concord_core.db.engine import Database
from concord_core.db.migrate import upgrade
from concord_core.db.models import Dtu


@pytest.fixture
def instance(tmp_path: Path, postgres_url: str) -> Iterator[Instance]:
    with open_instance(tmp_path, postgres_url, **mode_settings("jwt")) as opened:
        yield opened


def test_both_paths_give_the_same_principal_for_every_credential(instance: Instance) -> None:
    runtime = instance.runtime
    owner = make_user(runtime, "owner@example.com")
    token = sign_in(instance, owner)["accessToken"]
    key = new_key(instance, bearer(token), scopes=["read"])["token"]
    credentials = {
        "token": bearer(token),
        "key": {"X-API-Key": key},
        "none": {},
        "bad key": {"X-API-Key": "ck_" + "0" * 40},
        "bad token": bearer("not.a.token"),
    }

    async def on_the_loop(headers: dict[str, str]) -> object:
        reads = AsyncReads(runtime.db)
        try:
            with statements(runtime.db.engine) as sent:
                principal = await authenticate_async(
                    reads, runtime.db, runtime.settings, credential_from(headers), runtime.local_owner_id
                )
            assert not [s for s in sent if "users" in s], sent  # read on the loop, not through SQLAlchemy
            return principal
        finally:
            await reads.close()

    for name, headers in credentials.items():
        try:
            threaded: object = runtime.authenticate(headers)
        except AuthenticationFailed as failed:
            threaded = ("refused", failed.reason)
        try:
            awaited: object = asyncio.run(on_the_loop(headers))
        except AuthenticationFailed as failed:
            awaited = ("refused", failed.reason)
        assert awaited == threaded, name
    assert instance.runtime.authenticate(credentials["key"]).scopes == frozenset({"read"})


def test_a_dropped_connection_is_replaced_and_other_loops_use_threads(postgres_url: str) -> None:
    db = Database(postgres_url)
    upgrade(db)
    try:

        async def read_twice_with_a_restart_between() -> None:
            reads = AsyncReads(db, max_connections=1)
            try:
                assert await reads.rows(PRINCIPAL_OF_USER, {"user_id": "nobody"}) == []
                # The server ends the pooled connection (as a restart or an idle timeout would).
                with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                    ended = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        [db.engine.url.database],
                    ).fetchall()
                assert ended
                assert await reads.rows(PRINCIPAL_OF_USER, {"user_id": "nobody"}) == []

                async def usable_here() -> bool:
                    return reads.usable()

                assert await usable_here()
                assert not await asyncio.to_thread(asyncio.run, usable_here())  # another loop
            finally:
                await reads.close()
            assert not reads.usable()

        asyncio.run(read_twice_with_a_restart_between())
    finally:
        db.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_world("postgres", tmp_path) as opened:
        seed(opened, random.Random(3))
        yield opened


def test_pages_read_on_the_loop_are_the_pages_read_in_threads(world: World) -> None:
    """BrowseService.page_async gives exactly what page gives (items, their values' types, cursors, flags)
    for first and later pages both ways, tag postings, a filter bound through a TypeDecorator, and an
    asker whose access predicate holds a list of workspaces; GraphQL pages are read that way."""
    runtime = world.runtime
    browse = runtime.browse
    carol = world.people["carol"].principal  # a member of the shared workspace: an IN in her predicate
    columns = ["title", "tags", "tier", "visibility", "created_at", "owner_id"]
    since = datetime(2000, 1, 1, tzinfo=UTC)
    requests = [
        BrowseRequest(),
        BrowseRequest(sort="title", descending=False),
        BrowseRequest(filters={"tags": TagFilter(any_of=["alpha", "beta"])}),
        BrowseRequest(filters={"created": RangeFilter(start=since, end=None)}),
    ]

    def threaded(request: BrowseRequest, **paging: Any) -> Page[Any]:
        with runtime.db.read(transaction=False) as session:
            return browse.page(session, carol, DTUS, request, columns=columns, **paging)

    async def compare() -> int:
        reads = AsyncReads(runtime.db)
        compared = 0
        try:
            for request in requests:
                for paging in ({"first": 3}, {"last": 3}):
                    cursor_side = "after" if "first" in paging else "before"
                    cursor = None
                    for _ in range(3):  # pages one, two and three
                        more = {**paging, cursor_side: cursor}
                        expected = threaded(request, **more)
                        awaited = await browse.page_async(
                            reads, carol, DTUS, request, **more, columns=columns
                        )
                        assert awaited == expected, (request, more)
                        if expected.items:
                            assert awaited is not None
                            assert awaited.items[0]["created_at"].tzinfo is not None
                        compared += len(expected.items)
                        if not expected.cursors:
                            break
                        cursor = expected.cursors[-1] if cursor_side == "after" else expected.cursors[0]
            # A statement's open parameter (a cursor's key) must be given; a list it holds may not be.
            owners = bindparam("owners", ["x", "y"], expanding=True)
            keyed = select(Dtu.id).where(Dtu.id > bindparam("after_id"), Dtu.owner_id.in_(owners))
            with pytest.raises(ValueError, match="required"):
                await reads.table(keyed, {})
            with pytest.raises(ValueError, match="lists"):
                await reads.table(keyed, {"after_id": "", "owners": ["z"]})
            assert await reads.table(keyed, {"after_id": ""}) == (["id"], [])
            # A value goes through its column type's processing, as SQLAlchemy would send it.
            since = select(Dtu.id).where(Dtu.created_at > bindparam("since"))
            with pytest.raises(ValueError, match="naive"):
                await reads.table(since, {"since": datetime(2020, 1, 1)})
        finally:
            await reads.close()
        return compared

    assert asyncio.run(compare()) > 20

    query = "{ dtus(first: 5) { edges { cursor node { id title } } } }"
    with statements(runtime.db.engine) as through_sqlalchemy, world.statements() as every:
        world.data("carol", query)
    assert not [sql for sql in through_sqlalchemy if "page_keys" in sql]
    assert [sql for sql in every if "page_keys" in sql]


def test_a_cancelled_read_fails_without_being_tried_again(postgres_url: str) -> None:
    """Only a lost connection earns a second try: a statement the server cancelled (as its timeout would)
    fails its read at once, and the next read is served."""
    db = Database(postgres_url)

    async def cancel_a_long_read() -> None:
        reads = AsyncReads(db, max_connections=1)
        try:
            sleep = select(func.pg_sleep(5))
            reading = asyncio.ensure_future(reads.rows(sleep, {}))
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                for _ in range(200):
                    cancelled = admin.execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND query LIKE 'SELECT pg_sleep%%'",
                        [db.engine.url.database],
                    ).fetchall()
                    if cancelled:
                        break
                    await asyncio.sleep(0.01)
            began = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                await reading
            assert time.monotonic() - began < 2  # not slept through again
            assert [tuple(row) for row in await reads.rows(select(func.abs(-1)), {})] == [(1,)]
        finally:
            await reads.close()

    try:
        asyncio.run(cancel_a_long_read())
    finally:
        db.dispose()
