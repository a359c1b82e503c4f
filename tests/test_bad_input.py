"""Bad input writes nothing: unknown fields, wrong types, invalid values, unknown and malformed IDs, stale
versions. Each gets a typed error, and afterwards every table has exactly the rows it had before and the
object store holds exactly the files it held (oversized uploads: see test_artifacts.py).

One database per backend; each case is a subtest that snapshots everything before and after itself.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from concord_core.api.runtime import Runtime
from concord_core.db.models import Base

DTU_FIELDS = "dtu { id version title } errors { field code message }"
CREATE = f"mutation($i: CreateDtuInput!) {{ createDtu(input: $i) {{ {DTU_FIELDS} }} }}"
EDIT = f"mutation($i: EditDtuInput!) {{ editDtu(input: $i) {{ {DTU_FIELDS} }} }}"
PUBLISH = f"mutation($id: ID!, $v: Visibility!) {{ publishDtu(id: $id, visibility: $v) {{ {DTU_FIELDS} }} }}"
MERGE = f"mutation($t: ID!, $s: [ID!]!) {{ mergeDtus(targetId: $t, sourceIds: $s) {{ {DTU_FIELDS} }} }}"
DEDUPE = "mutation($w: ID) { dedupeDtus(workspaceId: $w) { groups { kept } errors { field code message } } }"
EXPORT = "mutation($ids: [ID!]!) { exportDtus(ids: $ids) { artifact { id } errors { field code message } } }"
CREATE_ARTIFACT = (
    "mutation($i: CreateArtifactInput!, $file: Upload!) "
    "{ createArtifact(input: $i, file: $file) { artifact { id } errors { field code message } } }"
)
UPLOAD_VERSION = (
    "mutation($i: UploadArtifactVersionInput!, $file: Upload!) "
    "{ uploadArtifactVersion(input: $i, file: $file) { version { version } errors { field code message } } }"
)
PUBLISH_ARTIFACT = (
    "mutation($id: ID!) "
    "{ publishArtifact(id: $id, visibility: PUBLIC) { artifact { id } errors { field code message } } }"
)


def gid(type_name: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{key}".encode()).decode().rstrip("=")


def key_of(global_id: str) -> str:
    raw = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return raw.split(":", 1)[1]


@dataclass
class Case:
    """A request that must be refused. ``top`` is the code of a top-level error (data null); otherwise
    ``payload`` lists the (field, code) pairs the mutation's payload must return."""

    query: str
    variables: dict[str, Any]
    top: str | None = None
    payload: list[tuple[str | None, str]] = field(default_factory=list)
    upload: bytes | None = None


@dataclass
class World:
    """What the cases refer to: a DTU at version 2, a merged DTU, an artifact at version 1."""

    dtu: str
    merged: str
    artifact: str
    workspace: str


@pytest.fixture
def world(gql: GraphQL, client: TestClient) -> World:
    made = gql.run(CREATE, {"i": {"title": "Kept", "human": {"summary": "s"}}})["createDtu"]["dtu"]
    gql.run(EDIT, {"i": {"id": made["id"], "expectedVersion": 1, "title": "Kept v2"}})
    other = gql.run(CREATE, {"i": {"title": "Absorbed"}})["createDtu"]["dtu"]
    assert gql.run(MERGE, {"t": made["id"], "s": [other["id"]]})["mergeDtus"]["errors"] == []
    response = post_upload(client, CREATE_ARTIFACT, {"i": {"name": "file"}}, b"first version", "setup")
    artifact = response.json()["data"]["createArtifact"]["artifact"]["id"]
    workspace = gql.run("query($id: ID!) { dtu(id: $id) { workspaceId } }", {"id": made["id"]})["dtu"]
    return World(dtu=made["id"], merged=other["id"], artifact=artifact, workspace=workspace["workspaceId"])


def post_upload(
    client: TestClient, query: str, variables: dict[str, Any], content: bytes, request_id: str
) -> Any:
    operations = json.dumps({"query": query, "variables": {**variables, "file": None}})
    return client.post(
        "/graphql",
        data={"operations": operations, "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("upload.bin", content, "application/octet-stream")},
        headers={"X-Request-ID": request_id},
    )


def snapshot(runtime: Runtime, store_root: Path) -> tuple[dict[str, int], list[str]]:
    with runtime.db.read() as session:
        counts = {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }
    files = sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*") if p.is_file())
    return counts, files


def cases(w: World) -> dict[str, Case]:
    unknown_dtu = gid("Dtu", str(uuid.uuid4()))
    unknown_artifact = gid("Artifact", str(uuid.uuid4()))
    return {
        # --- unknown fields ------------------------------------------------------------------------
        "unknown input field": Case(CREATE, {"i": {"title": "x", "colour": "red"}}, top="BAD_REQUEST"),
        "unknown nested field": Case(
            CREATE, {"i": {"title": "x", "human": {"mood": "ok"}}}, top="BAD_REQUEST"
        ),
        "unknown edit field": Case(
            EDIT, {"i": {"id": w.dtu, "expectedVersion": 2, "status": "active"}}, top="BAD_REQUEST"
        ),
        "unknown argument": Case(
            "mutation($id: ID!) { publishDtu(id: $id, visibility: PUBLIC, force: true) { dtu { id } } }",
            {"id": w.dtu},
            top="GRAPHQL_VALIDATION",
        ),
        "unknown selection": Case(
            'mutation { createDtu(input: {title: "x"}) { dtu { secret } } }', {}, top="GRAPHQL_VALIDATION"
        ),
        "unknown artifact input field": Case(
            CREATE_ARTIFACT, {"i": {"name": "x", "size": 5}}, top="BAD_REQUEST", upload=b"unknown-field"
        ),
        # --- wrong types -----------------------------------------------------------------------------
        "title is a number": Case(CREATE, {"i": {"title": 5}}, top="BAD_REQUEST"),
        "tier not in the enum": Case(CREATE, {"i": {"title": "x", "tier": "ULTRA"}}, top="BAD_REQUEST"),
        "tags of numbers": Case(CREATE, {"i": {"title": "x", "tags": ["ok", 2]}}, top="BAD_REQUEST"),
        "bullets as an object": Case(
            CREATE, {"i": {"title": "x", "human": {"bullets": {"a": 1}}}}, top="BAD_REQUEST"
        ),
        "expected version as text": Case(
            EDIT, {"i": {"id": w.dtu, "expectedVersion": "two", "title": "y"}}, top="BAD_REQUEST"
        ),
        "expected version missing": Case(EDIT, {"i": {"id": w.dtu, "title": "y"}}, top="BAD_REQUEST"),
        "visibility lower-case": Case(PUBLISH, {"id": w.dtu, "v": "public"}, top="BAD_REQUEST"),
        "machine layer not an object": Case(
            CREATE, {"i": {"title": "x", "machine": ["a", "list"]}}, payload=[("machine", "VALIDATION")]
        ),
        # --- values the schema accepts and the operator refuses ----------------------------------------
        "blank title": Case(CREATE, {"i": {"title": "   "}}, payload=[("title", "VALIDATION")]),
        "title too long": Case(CREATE, {"i": {"title": "t" * 501}}, payload=[("title", "VALIDATION")]),
        "bad type name": Case(
            CREATE, {"i": {"title": "x", "type": "Big Idea"}}, payload=[("type", "VALIDATION")]
        ),
        "bad tag": Case(
            CREATE, {"i": {"title": "x", "tags": ["ok", "!!"]}}, payload=[("tags.1", "VALIDATION")]
        ),
        "too many bullets": Case(
            CREATE,
            {"i": {"title": "x", "human": {"bullets": ["b"] * 201}}},
            payload=[("human.bullets", "VALIDATION")],
        ),
        "next action too long": Case(
            CREATE,
            {"i": {"title": "x", "core": {"nextActions": ["n" * 20_001]}}},
            payload=[("core.nextActions.0", "VALIDATION")],
        ),
        "machine layer too large": Case(
            CREATE,
            {"i": {"title": "x", "machine": {"blob": "m" * 200_001}}},
            payload=[("machine", "VALIDATION")],
        ),
        "expected version zero": Case(
            EDIT,
            {"i": {"id": w.dtu, "expectedVersion": 0, "title": "y"}},
            payload=[("expectedVersion", "VALIDATION")],
        ),
        "bad artifact label": Case(
            CREATE_ARTIFACT,
            {"i": {"name": "x", "label": "Not A Label"}},
            payload=[("label", "VALIDATION")],
            upload=b"bad-label",
        ),
        "bad media type": Case(
            UPLOAD_VERSION,
            {"i": {"artifactId": w.artifact, "mediaType": "nonsense"}},
            payload=[("mediaType", "VALIDATION")],
            upload=b"bad-media-type",
        ),
        # --- unknown IDs -----------------------------------------------------------------------------------
        "edit unknown dtu": Case(
            EDIT,
            {"i": {"id": unknown_dtu, "expectedVersion": 1, "title": "y"}},
            payload=[(None, "NOT_FOUND")],  # as for a DTU you cannot read: no hint which it is
        ),
        "publish unknown dtu": Case(
            PUBLISH, {"id": unknown_dtu, "v": "PUBLIC"}, payload=[(None, "NOT_FOUND")]
        ),
        "merge into unknown dtu": Case(
            MERGE, {"t": unknown_dtu, "s": [w.dtu]}, payload=[(None, "NOT_FOUND")]
        ),
        "merge unknown source": Case(MERGE, {"t": w.dtu, "s": [unknown_dtu]}, payload=[(None, "NOT_FOUND")]),
        "export unknown dtu": Case(EXPORT, {"ids": [w.dtu, unknown_dtu]}, payload=[("ids.1", "NOT_FOUND")]),
        "cite unknown dtu": Case(
            CREATE,
            {"i": {"title": "x", "citationMode": "CITING", "citations": [unknown_dtu]}},
            payload=[("citations.0", "NOT_FOUND")],
        ),
        "create in unknown workspace": Case(
            CREATE,
            {"i": {"title": "x", "workspaceId": gid("Workspace", str(uuid.uuid4()))}},
            payload=[("workspaceId", "NOT_FOUND")],
        ),
        "upload into unknown workspace": Case(
            CREATE_ARTIFACT,
            {"i": {"name": "x", "workspaceId": gid("Workspace", str(uuid.uuid4()))}},
            payload=[("workspaceId", "NOT_FOUND")],
            upload=b"unknown-workspace",
        ),
        "dedupe unknown workspace": Case(
            DEDUPE, {"w": gid("Workspace", str(uuid.uuid4()))}, payload=[("workspaceId", "NOT_FOUND")]
        ),
        "new version of unknown artifact": Case(
            UPLOAD_VERSION,
            {"i": {"artifactId": unknown_artifact}},
            payload=[(None, "NOT_FOUND")],
            upload=b"orphan",
        ),
        "publish unknown artifact": Case(
            PUBLISH_ARTIFACT, {"id": unknown_artifact}, payload=[(None, "NOT_FOUND")]
        ),
        # --- malformed global IDs --------------------------------------------------------------------------
        "id is not base64": Case(
            EDIT, {"i": {"id": "%%%", "expectedVersion": 1, "title": "y"}}, payload=[("id", "NOT_FOUND")]
        ),
        "id without a type": Case(
            EDIT,
            {
                "i": {
                    "id": base64.b64encode(key_of(w.dtu).encode()).decode(),
                    "expectedVersion": 2,
                    "title": "y",
                }
            },
            payload=[("id", "NOT_FOUND")],
        ),
        "empty id": Case(
            EDIT, {"i": {"id": "", "expectedVersion": 1, "title": "y"}}, payload=[("id", "NOT_FOUND")]
        ),
        "huge id": Case(
            EDIT,
            {"i": {"id": "A" * 10_000, "expectedVersion": 1, "title": "y"}},
            payload=[("id", "NOT_FOUND")],
        ),
        "artifact id used as a dtu id": Case(
            EDIT, {"i": {"id": w.artifact, "expectedVersion": 1, "title": "y"}}, payload=[("id", "NOT_FOUND")]
        ),
        "dtu id used as an artifact id": Case(
            UPLOAD_VERSION,
            {"i": {"artifactId": w.dtu}},
            payload=[("artifactId", "NOT_FOUND")],
            upload=b"x",
        ),
        "malformed merge source": Case(
            MERGE, {"t": w.dtu, "s": ["!!"]}, payload=[("sourceIds.0", "NOT_FOUND")]
        ),
        "malformed export id": Case(EXPORT, {"ids": ["?"]}, payload=[("ids.0", "NOT_FOUND")]),
        "malformed citation": Case(
            CREATE,
            {"i": {"title": "x", "citationMode": "CITING", "citations": ["@@"]}},
            payload=[("citations.0", "NOT_FOUND")],
        ),
        "malformed workspace id": Case(
            CREATE, {"i": {"title": "x", "workspaceId": "nope"}}, payload=[("workspaceId", "NOT_FOUND")]
        ),
        # --- stale versions ----------------------------------------------------------------------------
        "stale dtu edit": Case(
            EDIT,
            {"i": {"id": w.dtu, "expectedVersion": 1, "title": "y"}},
            payload=[("expectedVersion", "CONFLICT")],
        ),
        "edit of a merged dtu": Case(
            EDIT, {"i": {"id": w.merged, "expectedVersion": 2, "title": "y"}}, payload=[("id", "CONFLICT")]
        ),
        "merge a merged dtu": Case(
            MERGE, {"t": w.dtu, "s": [w.merged]}, payload=[("sourceIds.0", "CONFLICT")]
        ),
        "publish a merged dtu": Case(
            PUBLISH, {"id": w.merged, "v": "WORKSPACE"}, payload=[("id", "CONFLICT")]
        ),
        "stale artifact version": Case(
            UPLOAD_VERSION,
            {"i": {"artifactId": w.artifact, "expectedVersion": 0}},
            payload=[("expectedVersion", "CONFLICT")],
            upload=b"stale upload",
        ),
    }


def test_bad_input_writes_nothing(
    client: TestClient, runtime: Runtime, world: World, tmp_path: Path, subtests: Any
) -> None:
    store_root = tmp_path / "objects"
    for name, case in cases(world).items():
        with subtests.test(name):
            before = snapshot(runtime, store_root)
            request_id = "bad-" + uuid.uuid4().hex[:12]
            if case.upload is not None:
                response = post_upload(client, case.query, case.variables, case.upload, request_id)
            else:
                response = client.post(
                    "/graphql",
                    json={"query": case.query, "variables": case.variables},
                    headers={"X-Request-ID": request_id},
                )
            assert response.status_code == 200, response.text
            body = response.json()
            if case.top is not None:
                assert body.get("data") is None, body
                assert [e["extensions"]["code"] for e in body["errors"]] == [case.top], body
                assert body["errors"][0]["extensions"]["requestId"] == request_id
            else:
                assert not body.get("errors"), body
                payload = next(iter(body["data"].values()))
                assert all(value in (None, []) for key, value in payload.items() if key != "errors"), payload
                assert [(e["field"], e["code"]) for e in payload["errors"]] == case.payload, payload
                assert all(e["message"] for e in payload["errors"])
            assert snapshot(runtime, store_root) == before
    with subtests.test("malformed requests"):
        malformed_requests_write_nothing(client, runtime, store_root)


def malformed_requests_write_nothing(client: TestClient, runtime: Runtime, store_root: Path) -> None:
    """Requests that are not GraphQL at all (or broken multipart envelopes) are a 400, writing nothing."""
    before = snapshot(runtime, store_root)
    operations = json.dumps({"query": CREATE_ARTIFACT, "variables": {"i": {"name": "x"}, "file": None}})
    upload = {"0": ("a.bin", b"an upload that goes nowhere", "application/octet-stream")}
    refused = {
        "body is not JSON": client.post(
            "/graphql", content=b"{not json", headers={"content-type": "application/json"}
        ),
        "no query": client.post("/graphql", json={"variables": {}}),
        "map points nowhere": client.post(
            "/graphql",
            data={"operations": operations, "map": json.dumps({"0": ["variables.nothing.here"]})},
            files=upload,
        ),
        "map is not JSON": client.post(
            "/graphql", data={"operations": operations, "map": "{nope"}, files=upload
        ),
        "operations are not JSON": client.post(
            "/graphql",
            data={"operations": "{nope", "map": json.dumps({"0": ["variables.file"]})},
            files=upload,
        ),
        "no file at all": client.post("/graphql", data={"operations": operations, "map": "{}"}),
    }
    for name, response in refused.items():
        assert response.status_code == 400, (name, response.text)
        assert response.headers["x-request-id"], name
    assert snapshot(runtime, store_root) == before
