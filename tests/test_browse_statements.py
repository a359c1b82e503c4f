"""Totals', facets' and first pages' statements are built once per principal and request
(BrowseService._memoized), and never serve anyone whose access differs: the key holds the principal's own
fields, so a membership gained or lost is a different key, and a browsable whose access predicate reads more
than the principal (a lens's own) is never memoized."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from global_world import BACKENDS, Query, World, all_rows, expected, expected_facet, open_world, seed

from concord_core.auth.principal import Principal
from concord_core.browse.service import BrowseRequest, BrowseService
from concord_core.browse.sources import DTUS
from concord_core.operators import accounts as account_ops


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with open_world(request.param, tmp_path) as opened:
        seed(opened, random.Random(11))
        yield opened


def _answers(service: BrowseService, world: World, principal: Principal) -> tuple[Any, ...]:
    request = BrowseRequest()
    with world.runtime.db.read() as session:
        page = service.page(session, principal, DTUS, request, first=100, columns=["title"])
        total = service.total(session, principal, DTUS, request)
    facets = service.facets(principal, DTUS, request, ["visibility", "tags"], 100)
    return (
        sorted(item["id"] for item in page.items),
        total,
        {facet.field: {value.value: value.count for value in facet.values} for facet in facets},
    )


def _reference(world: World, who: str) -> tuple[Any, ...]:
    query = Query(source="dtus")
    rows = all_rows(world, "dtus")
    listed = expected(world, who, query, rows)
    facets = {
        name: {
            value["value"]: value["count"]
            for value in expected_facet(world, who, query, name, 100, rows)["values"]
        }
        for name in ("visibility", "tags")
    }
    return sorted(row.id for row in listed), len(listed), facets


def test_an_equal_principal_reuses_the_statements(world: World) -> None:
    service = world.runtime.browse
    carol = world.people["carol"].principal
    first = _answers(service, world, carol)
    kept = dict(service._statements)
    again = _answers(service, world, replace(carol, roles=dict(carol.roles)))  # equal, not the same object
    assert again == first == _reference(world, "carol")
    assert service._statements == kept  # nothing built anew: three statements, each reused
    assert {key[0] for key in kept} == {"page", "total", "facets"}


def test_every_page_after_a_cursor_shares_one_plan(world: World) -> None:
    """The cursor is a parameter of the statement: a deep page costs what the second page costs."""
    service = world.runtime.browse
    alice = world.people["alice"].principal
    seen: list[str] = []
    after = None
    with world.runtime.db.read() as session:
        while True:
            page = service.page(
                session, alice, DTUS, BrowseRequest(), first=3, after=after, columns=["title"]
            )
            seen += [item["id"] for item in page.items]
            if not page.has_next_page:
                break
            after = page.cursors[-1]
            if len(seen) == 6:
                kept = dict(service._statements)  # the first page's plan and the one after a cursor
    assert service._statements == kept
    assert len(seen) == len(set(seen)) == _reference(world, "alice")[1] > 6
    with world.runtime.db.read() as session:  # an empty cursor is no cursor, as it always was
        first = service.page(session, alice, DTUS, BrowseRequest(), first=3, columns=["title"])
        empty = service.page(session, alice, DTUS, BrowseRequest(), first=3, after="", columns=["title"])
    assert empty == first and not empty.has_previous_page


def test_a_membership_gained_is_a_different_question(world: World) -> None:
    service = world.runtime.browse
    carol = world.people["carol"]
    before = _answers(service, world, carol.principal)
    assert before == _reference(world, "carol")
    alice = world.ctx("alice")
    account_ops.set_member(alice, world.shared_workspace, "carol@example.com", "viewer")
    joined = world.runtime.principal_for_user(carol.user_id)
    world.people["carol"] = replace(carol, principal=joined)
    after = _answers(service, world, joined)
    assert after == _reference(world, "carol")
    assert after[1] > before[1]  # the shared workspace's rows are now hers to list
    # The old principal (a request authenticated before the change) still gets its own answer.
    world.people["carol"] = carol
    assert _answers(service, world, carol.principal) == before


def test_a_lens_access_predicate_is_never_memoized(world: World) -> None:
    service = world.runtime.browse
    calls: list[Principal] = []

    def access(principal: Principal, model: type) -> Any:
        calls.append(principal)
        return DTUS.access(principal, model)

    lens_dtus = replace(DTUS, access=access)
    carol = world.people["carol"].principal
    kept = dict(service._statements)
    with world.runtime.db.read() as session:
        for _ in range(2):
            service.total(session, carol, lens_dtus, BrowseRequest())
            service.page(session, carol, lens_dtus, BrowseRequest(), first=5)
    service.facets(carol, lens_dtus, BrowseRequest(), ["visibility"])
    service.facets(carol, lens_dtus, BrowseRequest(), ["visibility"])
    assert len(calls) >= 6  # built every time: memoized, the second of each would not have called it
    assert service._statements == kept
