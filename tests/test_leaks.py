"""Leaks: what Alice keeps private (a DTU, an artifact, a lens item, a bookmark; and a DTU only her
workspace may read) never reaches Bob or an anonymous caller, by any road: by id (node, dtu, artifact),
in lists (lensItems, Global's dtus and artifacts: nodes, search hits, totalCount, facet counts),
bookmarkStats, the REST download, exports, syncToLens, citations, merges and the citation graph.
Her unlisted DTU is readable by id but never listed to them. SQLite and PostgreSQL.

Every response Bob gets is also searched for Alice's secret words and the hidden things' ids.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from authz import (
    Account,
    Instance,
    assert_no_internals,
    bearer,
    cheap_passwords,
    database,
    gid,
    issue_key,
    make_user,
    mode_settings,
    open_instance,
)

from concord_core.operators import artifacts as artifact_ops
from concord_core.operators import dtus as dtu_ops
from concord_core.operators import lens_items as item_ops

SECRET = "zebrasecret"  # in titles, names and tags of everything hidden
SECRET_TAG = "secret-tag"
SECRET_TYPE = "secretkind"


@dataclass
class Leaks:
    instance: Instance
    alice: Account
    bob: Account
    private_dtu: str
    workspace_dtu: str  # visibility workspace, in Alice's personal workspace
    unlisted_dtu: str
    public_dtu: str  # cites the private one
    bobs_dtu: str
    private_artifact: str
    private_item: str

    @property
    def hidden_ids(self) -> list[str]:
        return [
            gid("Dtu", self.private_dtu),
            gid("Dtu", self.workspace_dtu),
            gid("Artifact", self.private_artifact),
            gid("LensItem", self.private_item),
        ]

    def ask(self, who: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Bob's (or the anonymous caller's) answer, checked for anything of Alice's hidden things."""
        headers = self.bob.headers if who == "bob" else {}
        response = self.instance.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert_not_leaked(self, response.text)
        body: dict[str, Any] = response.json()
        return body


def assert_not_leaked(leaks: Leaks, text: str) -> None:
    assert_no_internals(text)
    for marker in (SECRET, SECRET_TAG, SECRET_TYPE, *leaks.hidden_ids):
        assert marker not in text, f"{marker!r} leaked in {text[:1000]}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def leaks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaks]:
    directory = tmp_path_factory.mktemp(f"leaks-{request.param}")
    with (
        cheap_passwords(),
        database(request.param, directory) as url,
        open_instance(directory, url, **mode_settings("jwt")) as instance,
    ):
        yield build(instance)


def build(instance: Instance) -> Leaks:
    runtime = instance.runtime
    alice, bob = make_user(runtime, "alice@example.com"), make_user(runtime, "bob@example.com")
    for account in (alice, bob):
        account.headers = bearer(issue_key(runtime, account)[0])
    alice_ctx = runtime.operation_context(runtime.principal_for_user(alice.id))
    bob_ctx = runtime.operation_context(runtime.principal_for_user(bob.id))

    def dtu(ctx: Any, visibility: str, **fields: Any) -> str:
        data = {
            "title": f"{SECRET} {visibility}",
            "visibility": visibility,
            "tags": [SECRET_TAG],
            "dtu_type": SECRET_TYPE,
            "human": {"summary": f"{SECRET} summary"},
            **fields,
        }
        return dtu_ops.create_dtu(ctx, data).id

    private_dtu = dtu(alice_ctx, "private")
    workspace_dtu = dtu(alice_ctx, "workspace")
    unlisted_dtu = dtu(alice_ctx, "unlisted", title="unlisted thought", tags=[], dtu_type="note")
    public_dtu = dtu(
        alice_ctx,
        "public",
        title="a public thought",
        tags=["open"],
        dtu_type="note",
        human={"summary": "open to all"},
        citation_mode="citing",
        citations=[private_dtu, workspace_dtu],
    )
    bobs_dtu = dtu_ops.create_dtu(bob_ctx, {"title": "bob's own", "human": {"summary": "mine"}}).id
    private_artifact = artifact_ops.create_artifact(
        alice_ctx,
        {"name": f"{SECRET}.txt", "tags": [SECRET_TAG], "media_type": "text/plain"},
        io.BytesIO(f"{SECRET} bytes".encode()),
    )[0].id
    private_item = item_ops.create_item(
        alice_ctx,
        {
            "lens_id": "knowledge",
            "item_type": "dtu_ref",
            "data": {"title": SECRET, "sourceKind": "dtu", "sourceId": private_dtu},
        },
    ).id
    leaks = Leaks(
        instance,
        alice,
        bob,
        private_dtu,
        workspace_dtu,
        unlisted_dtu,
        public_dtu,
        bobs_dtu,
        private_artifact,
        private_item,
    )
    if "importBookmarks" in json.dumps(instance.data("{ __schema { mutationType { fields { name } } } }")):
        html = f'<DL><p><DT><A HREF="https://example.org/{SECRET}" TAGS="{SECRET_TAG}">{SECRET}</A></DL><p>'
        imported = instance.mutate(
            "mutation($h: String!) { importBookmarks(html: $h) { created errors { code } } }",
            {"h": html},
            alice.headers,
        )
        assert imported["created"] == 1
    return leaks


WHO = ["bob", "anonymous"]


@pytest.mark.parametrize("who", WHO)
def test_hidden_things_are_not_found_by_id(leaks: Leaks, who: str) -> None:
    text = """query($d: ID!, $w: ID!, $a: ID!, $i: ID!) {
      dtu(id: $d) { id } workspaceDtu: dtu(id: $w) { id } artifact(id: $a) { id }
      dn: node(id: $d) { id } wn: node(id: $w) { id } an: node(id: $a) { id } item: node(id: $i) { id }
    }"""
    variables = {
        "d": gid("Dtu", leaks.private_dtu),
        "w": gid("Dtu", leaks.workspace_dtu),
        "a": gid("Artifact", leaks.private_artifact),
        "i": gid("LensItem", leaks.private_item),
    }
    body = leaks.ask(who, text, variables)
    assert not body.get("errors"), body
    assert set(body["data"].values()) == {None}
    # The unlisted one is readable by anyone who has its id ...
    unlisted = leaks.ask(
        who, "query($id: ID!) { dtu(id: $id) { title } }", {"id": gid("Dtu", leaks.unlisted_dtu)}
    )
    assert unlisted["data"]["dtu"] == {"title": "unlisted thought"}


@pytest.mark.parametrize("who", WHO)
def test_lists_searches_counts_and_facets_leave_them_out(leaks: Leaks, who: str) -> None:
    # ... and never listed: Bob sees Alice's public DTU and his own; anonymous the public one only.
    expected = {gid("Dtu", leaks.public_dtu)} | ({gid("Dtu", leaks.bobs_dtu)} if who == "bob" else set())
    facets = "facets { field values { value count } }"
    dtus = leaks.ask(who, f"{{ dtus(first: 100) {{ nodes {{ id }} totalCount {facets} }} }}")["data"]["dtus"]
    assert {n["id"] for n in dtus["nodes"]} == expected
    assert dtus["totalCount"] == len(expected)
    visibility = {
        v["value"].lower(): v["count"]
        for f in dtus["facets"]
        if f["field"] == "visibility"
        for v in f["values"]
    }
    assert visibility == ({"public": 1, "private": 1} if who == "bob" else {"public": 1})
    for facet in dtus["facets"]:
        if facet["field"] in ("visibility", "type", "tier", "status"):  # one value per DTU
            assert sum(v["count"] for v in facet["values"]) == len(expected), facet
    # Searching for the secret words finds nothing, counts nothing.
    for field_name in ("dtus", "artifacts"):
        found = leaks.ask(
            who,
            f'{{ {field_name}(search: "{SECRET}", first: 100) {{ nodes {{ id }} totalCount {facets} }} }}',
        )["data"][field_name]
        assert found["nodes"] == [] and found["totalCount"] == 0
        assert all(v["count"] == 0 for f in found["facets"] for v in f["values"])
    artifacts = leaks.ask(who, f"{{ artifacts(first: 100) {{ nodes {{ id }} totalCount {facets} }} }}")
    assert artifacts["data"]["artifacts"]["totalCount"] == 0
    items = leaks.ask(who, '{ lensItems(lensId: "knowledge", first: 100) { nodes { id } totalCount } }')
    assert items["data"]["lensItems"] == {"nodes": [], "totalCount": 0}
    if "bookmarkStats" in json.dumps(leaks.ask(who, "{ __schema { queryType { fields { name } } } }")):
        stats = leaks.ask(who, "{ bookmarkStats { total untagged tags { tag count } } }")
        assert stats["data"]["bookmarkStats"] == {"total": 0, "untagged": 0, "tags": []}
        tagged = leaks.ask(who, f'{{ bookmarkStats(tag: "{SECRET_TAG}") {{ total }} }}')
        assert tagged["data"]["bookmarkStats"]["total"] == 0


@pytest.mark.parametrize("who", WHO)
def test_the_rest_download_is_not_found(leaks: Leaks, who: str) -> None:
    headers = leaks.bob.headers if who == "bob" else {}
    client = leaks.instance.client
    hidden = client.get(f"/api/artifacts/{leaks.private_artifact}/versions/1/content", headers=headers)
    unknown = client.get(
        "/api/artifacts/00000000-0000-4000-8000-000000000000/versions/1/content", headers=headers
    )
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json()
    assert_not_leaked(leaks, hidden.text)
    mine = client.get(
        f"/api/artifacts/{leaks.private_artifact}/versions/1/content", headers=leaks.alice.headers
    )
    assert mine.status_code == 200 and SECRET.encode() in mine.content


def codes(body: dict[str, Any], name: str) -> list[tuple[str | None, str]]:
    assert not body.get("errors"), body
    return [(e["field"], e["code"]) for e in body["data"][name]["errors"]]


@pytest.mark.parametrize("hidden", ["private_dtu", "workspace_dtu"])
def test_mutations_cannot_reach_them(leaks: Leaks, hidden: str) -> None:
    target = gid("Dtu", getattr(leaks, hidden))
    out = "{ errors { field code message } }"
    exported = leaks.ask("bob", f"mutation($id: ID!) {{ exportDtus(ids: [$id]) {out} }}", {"id": target})
    assert codes(exported, "exportDtus") == [("ids.0", "NOT_FOUND")]
    markdown = leaks.ask(
        "bob", f"mutation($id: ID!) {{ knowledgeExportMarkdown(ids: [$id]) {out} }}", {"id": target}
    )
    assert [c for _, c in codes(markdown, "knowledgeExportMarkdown")] == ["NOT_FOUND"]
    synced = leaks.ask(
        "bob", f'mutation($id: ID!) {{ syncToLens(lensId: "knowledge", ids: [$id]) {out} }}', {"id": target}
    )
    assert codes(synced, "syncToLens") == [("ids.0", "NOT_FOUND")]
    cite = f"""mutation($id: ID!) {{ createDtu(input: {{title: "citing", citationMode: CITING,
      citations: [$id]}}) {out} }}"""
    assert codes(leaks.ask("bob", cite, {"id": target}), "createDtu") == [("citations.0", "NOT_FOUND")]
    edit = f"""mutation($mine: ID!, $id: ID!) {{ editDtu(input: {{id: $mine, expectedVersion: 1,
      citationMode: CITING, citations: [$id]}}) {out} }}"""
    edited = leaks.ask("bob", edit, {"mine": gid("Dtu", leaks.bobs_dtu), "id": target})
    assert codes(edited, "editDtu") == [("citations.0", "NOT_FOUND")]
    mine = gid("Dtu", leaks.bobs_dtu)
    merge = f"mutation($t: ID!, $s: ID!) {{ mergeDtus(targetId: $t, sourceIds: [$s]) {out} }}"
    assert [c for _, c in codes(leaks.ask("bob", merge, {"t": mine, "s": target}), "mergeDtus")] == [
        "NOT_FOUND"
    ]
    assert [c for _, c in codes(leaks.ask("bob", merge, {"t": target, "s": mine}), "mergeDtus")] == [
        "NOT_FOUND"
    ]
    # Nothing of Bob's changed along the way.
    version = leaks.ask(
        "bob", "query($id: ID!) { dtu(id: $id) { version citationIds: citations { id } } }", {"id": mine}
    )
    assert version["data"]["dtu"] == {"version": 1, "citationIds": []}


@pytest.mark.parametrize("who", WHO)
def test_citations_and_the_citation_graph_leave_them_out(leaks: Leaks, who: str) -> None:
    public = gid("Dtu", leaks.public_dtu)
    text = """query($id: ID!, $hidden: ID!) {
      dtu(id: $id) { citations { id } }
      knowledgeCitationGraph(id: $id, depth: 3) { nodes { id } edges { fromId toId } truncated }
      hiddenGraph: knowledgeCitationGraph(id: $hidden, depth: 1) { nodes { id } }
    }"""
    body = leaks.ask(who, text, {"id": public, "hidden": gid("Dtu", leaks.private_dtu)})
    assert body["data"]["dtu"] == {"citations": []}
    graph = body["data"]["knowledgeCitationGraph"]
    assert graph == {"nodes": [{"id": public}], "edges": [], "truncated": False}
    assert body["data"]["hiddenGraph"] is None


def test_history_does_not_reveal_the_ids_of_unreadable_citations(leaks: Leaks) -> None:
    body = leaks.ask(
        "bob",
        "query($id: ID!) { dtu(id: $id) { history { citationIds } } }",
        {"id": gid("Dtu", leaks.public_dtu)},
    )
    assert not body.get("errors"), body
    history = body["data"]["dtu"]["history"]
    assert history and all(version["citationIds"] == [] for version in history), history


@pytest.mark.parametrize("who", WHO)
def test_rest_pages_leave_them_out(leaks: Leaks, who: str) -> None:
    headers = leaks.bob.headers if who == "bob" else {}
    own = 1 if who == "bob" else 0
    expected = {"dtus": 1 + own, "artifacts": 0, "lens_items": 0}  # Alice's public DTU (+ Bob's own)
    for name, total in expected.items():
        searches = ({}, {"search": SECRET}) + (({"tags": SECRET_TAG},) if name != "lens_items" else ())
        for params in searches:
            response = leaks.instance.client.get(f"/api/{name}/paginated", params=params, headers=headers)
            assert response.status_code == 200, response.text
            assert_not_leaked(leaks, response.text)
            page = response.json()
            assert page["total"] == (total if not params else 0), (name, params, page)
            assert len(page["items"]) == page["total"]
            # Facets are disjunctive (a field's counts ignore its own filter), so with tags=secret-tag the
            # tags facet still counts what else is readable; it must never count the hidden things.
            if name == "dtus" and not params:
                visibility = {v["value"]: v["count"] for v in page["facets"]["visibility"]["values"]}
                assert visibility == ({"public": 1, "private": 1} if own else {"public": 1})
