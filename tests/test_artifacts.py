"""Artifacts through the public interfaces: GraphQL multipart uploads, new versions, REST downloads,
corruption on disk, and the upload size limit (TOO_LARGE / 413, with nothing written anywhere)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import make_settings
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from concord_core.api.app import create_app
from concord_core.api.gql.schema import load_lenses
from concord_core.api.runtime import Runtime
from concord_core.db.migrate import upgrade
from concord_core.db.models import Base, Event
from concord_core.storage import BlobCorrupted, LocalStore

GRAPHQL_DIR = Path(__file__).resolve().parent.parent / "graphql"
MiB = 1024 * 1024


def load_operation(name: str) -> str:
    """An operation document from graphql/, with the fragments it spreads appended."""
    text = (GRAPHQL_DIR / f"{name}.graphql").read_text()
    fragments = {
        match.group(1): match.group(0)
        for match in re.finditer(
            r"fragment\s+(\w+)\s+on\s+\w+\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}",
            (GRAPHQL_DIR / "fragments.graphql").read_text(),
        )
    }
    included: list[str] = []
    pending = [text]
    while pending:
        for name_used in re.findall(r"\.\.\.\s*(?!on\b)(\w+)", pending.pop()):
            if name_used not in included:
                included.append(name_used)
                pending.append(fragments[name_used])
    return "\n".join([text, *(fragments[n] for n in included)])


CREATE_ARTIFACT = load_operation("CreateArtifact")
UPLOAD_VERSION = load_operation("UploadArtifactVersion")
GET_ARTIFACT = load_operation("GetArtifact")


def upload(
    client: TestClient,
    query: str,
    variables: dict[str, Any],
    content: bytes,
    *,
    filename: str = "file.bin",
    media_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A GraphQL multipart request (operations / map / 0) with ``content`` as ``$file``."""
    operations = json.dumps({"query": query, "variables": {**variables, "file": None}})
    return client.post(
        "/graphql",
        data={"operations": operations, "map": json.dumps({"0": ["variables.file"]})},
        files={"0": (filename, content, media_type)},
        headers=headers or {},
    )


def upload_ok(client: TestClient, query: str, variables: dict[str, Any], content: bytes, **kw: Any) -> Any:
    response = upload(client, query, variables, content, **kw)
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    payload = next(iter(body["data"].values()))
    assert payload["errors"] == [], payload
    return payload


def row_counts(runtime: Runtime) -> dict[str, int]:
    with runtime.db.read() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def stored_files(store_root: Path) -> list[str]:
    """Every file under the object store (blobs and temp files alike)."""
    if not store_root.exists():
        return []
    return sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*") if p.is_file())


def test_upload_new_version_and_download(client: TestClient, runtime: Runtime) -> None:
    first = b"RIFF....WAVEfmt first take" * 100
    created = upload_ok(
        client,
        CREATE_ARTIFACT,
        {"input": {"name": "Take 1", "tags": ["Demo", "demo", "drums"]}},
        first,
        filename="take1.wav",
        media_type="audio/wav",
    )
    artifact, version = created["artifact"], created["version"]
    assert artifact["name"] == "Take 1"
    assert artifact["kind"] == "AUDIO"  # inferred from the upload's media type
    assert artifact["tags"] == ["demo", "drums"]
    assert artifact["visibility"] == "PRIVATE"
    assert artifact["currentVersion"] == 1
    assert version == {
        "version": 1,
        "label": "original",
        "sha256": hashlib.sha256(first).hexdigest(),
        "size": float(len(first)),
        "mediaType": "audio/wav",
        "filename": "take1.wav",
        "downloadUrl": version["downloadUrl"],
    }

    # A second version, larger than one streaming chunk, with its own label and media type.
    second = bytes(range(256)) * (3 * MiB // 256) + b"tail"
    added = upload_ok(
        client,
        UPLOAD_VERSION,
        {
            "input": {
                "artifactId": artifact["id"],
                "label": "mastered",
                "mediaType": "audio/flac",
                "expectedVersion": 1,
            }
        },
        second,
        filename="take1.flac",
        media_type="application/octet-stream",
    )
    assert added["artifact"]["currentVersion"] == 2
    assert added["version"]["version"] == 2
    assert added["version"]["label"] == "mastered"
    assert added["version"]["mediaType"] == "audio/flac"
    assert added["version"]["sha256"] == hashlib.sha256(second).hexdigest()
    assert added["version"]["size"] == len(second)

    body = client.post("/graphql", json={"query": GET_ARTIFACT, "variables": {"id": artifact["id"]}}).json()
    fetched = body["data"]["artifact"]
    assert [v["version"] for v in fetched["versions"]] == [1, 2]
    assert [v["label"] for v in fetched["versions"]] == ["original", "mastered"]
    assert fetched["latest"]["version"] == 2

    for expected, meta in ((first, fetched["versions"][0]), (second, fetched["versions"][1])):
        response = client.get(meta["downloadUrl"])
        assert response.status_code == 200
        assert response.content == expected
        assert response.headers["etag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
        assert response.headers["content-length"] == str(len(expected))
        assert response.headers["content-type"].startswith(meta["mediaType"])
        assert meta["filename"] in response.headers["content-disposition"]
        revalidated = client.get(meta["downloadUrl"], headers={"If-None-Match": response.headers["etag"]})
        assert revalidated.status_code == 304
        assert revalidated.content == b""

    # Both uploads were recorded as events carrying the version's full state.
    with runtime.db.read() as session:
        events = session.scalars(
            select(Event).where(Event.entity_type == "artifact").order_by(Event.seq)
        ).all()
        assert [e.event_type for e in events] == [
            "ARTIFACT_CREATED",
            "ARTIFACT_UPLOADED",
            "ARTIFACT_UPLOADED",
        ]
        assert events[-1].payload["version"]["blob_sha256"] == hashlib.sha256(second).hexdigest()
        assert events[-1].payload["version"]["label"] == "mastered"

    # Download errors: unknown version or artifact is a 404 NOT_FOUND, a malformed version a 422.
    created = upload_ok(
        client, CREATE_ARTIFACT, {"input": {"name": "doc"}}, b"hello", media_type="text/plain"
    )
    url = created["version"]["downloadUrl"]
    artifact_key = url.split("/")[3]
    assert created["artifact"]["kind"] == "DOCUMENT"

    missing_version = client.get(f"/api/artifacts/{artifact_key}/versions/2/content")
    assert missing_version.status_code == 404
    assert missing_version.json()["errors"][0]["code"] == "NOT_FOUND"
    unknown = client.get("/api/artifacts/00000000-0000-0000-0000-000000000000/versions/1/content")
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["code"] == "NOT_FOUND"
    assert client.get(f"/api/artifacts/{artifact_key}/versions/one/content").status_code == 422

    # A blob missing from the store is the server's fault, not the client's: a 500 carrying a request id.
    store = runtime.store
    assert isinstance(store, LocalStore)
    store.path_for(hashlib.sha256(b"hello").hexdigest()).unlink()
    with TestClient(client.app, raise_server_exceptions=False) as lenient:
        gone = lenient.get(url, headers={"X-Request-ID": "missing-blob-1"})
    assert gone.status_code == 500
    assert gone.headers["x-request-id"] == "missing-blob-1"
    assert gone.content != b"hello"


def corrupt(runtime: Runtime, content: bytes, offset: int) -> bytes:
    """Flip one byte of the stored blob of ``content`` (same size, different bytes); return the new bytes."""
    store = runtime.store
    assert isinstance(store, LocalStore)
    path = store.path_for(hashlib.sha256(content).hexdigest())
    damaged = bytearray(path.read_bytes())
    damaged[offset] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return bytes(damaged)


@pytest.fixture
def live_server(runtime: Runtime) -> Iterator[str]:
    """The app on a real HTTP server (uvicorn in a thread), for what only a real connection shows."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_corrupted_blob_is_detected_on_download(
    client: TestClient, runtime: Runtime, live_server: str
) -> None:
    for size in (1000, 2 * MiB + 123):  # all in one chunk; several chunks
        content = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        created = upload_ok(client, CREATE_ARTIFACT, {"input": {"name": f"data {size}"}}, content)
        url = created["version"]["downloadUrl"]
        assert client.get(url).content == content
        damaged = corrupt(runtime, content, size - 10)  # damage in the last chunk

        received = bytearray()
        with pytest.raises(BlobCorrupted), client.stream("GET", url) as response:
            assert response.status_code == 200  # the headers went out before the damage could be seen
            declared = int(response.headers["content-length"])
            for chunk in response.iter_raw():
                received.extend(chunk)
        # The client never gets a complete body: it holds fewer bytes than Content-Length announced, so
        # neither the original nor the damaged content can pass for a finished download.
        assert declared == size
        assert len(received) < declared
        assert bytes(received) != content and bytes(received) != damaged

    # Over a real connection the same download fails loudly for the client.
    content = b"payload that must arrive intact " * 64
    with httpx.Client(base_url=live_server, timeout=10) as http:
        operations = json.dumps(
            {"query": CREATE_ARTIFACT, "variables": {"input": {"name": "x"}, "file": None}}
        )
        response = http.post(
            "/graphql",
            data={"operations": operations, "map": json.dumps({"0": ["variables.file"]})},
            files={"0": ("x.bin", content, "application/octet-stream")},
        )
        url = response.json()["data"]["createArtifact"]["version"]["downloadUrl"]
        assert http.get(url).content == content
        corrupt(runtime, content, 0)
        # The server aborts the response before its body is complete: httpx reports a protocol error
        # instead of handing back bytes that look like a finished download.
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url)
        assert http.get("/healthz").status_code == 200  # the server itself carries on


@pytest.fixture
def small_limit(tmp_path: Path, database_url: str) -> Iterator[tuple[Runtime, TestClient]]:
    settings = make_settings(tmp_path, database_url, max_upload_bytes=1000)
    runtime = Runtime.open(settings, load_lenses(settings))
    upgrade(runtime.db)
    with TestClient(create_app(runtime)) as client:
        yield runtime, client
    runtime.close()


def test_oversized_uploads_write_nothing(small_limit: tuple[Runtime, TestClient], tmp_path: Path) -> None:
    runtime, client = small_limit
    store_root = tmp_path / "objects"

    # Exactly at the limit is accepted.
    at_limit = upload_ok(client, CREATE_ARTIFACT, {"input": {"name": "fits"}}, b"a" * 1000)
    assert at_limit["version"]["size"] == 1000
    counts, files = row_counts(runtime), stored_files(store_root)
    assert len([f for f in files if not f.startswith("tmp")]) == 1

    # One byte over: the body is small enough to parse, the store refuses it -> TOO_LARGE on `file`.
    over = upload(client, CREATE_ARTIFACT, {"input": {"name": "too big"}}, b"b" * 1001)
    assert over.status_code == 200
    payload = over.json()["data"]["createArtifact"]
    assert payload["artifact"] is None
    assert [(e["field"], e["code"]) for e in payload["errors"]] == [("file", "TOO_LARGE")]
    assert row_counts(runtime) == counts
    assert stored_files(store_root) == files

    # A new version over the limit is refused the same way.
    too_big_version = upload(
        client, UPLOAD_VERSION, {"input": {"artifactId": at_limit["artifact"]["id"]}}, b"c" * 5000
    )
    errors = too_big_version.json()["data"]["uploadArtifactVersion"]["errors"]
    assert [e["code"] for e in errors] == ["TOO_LARGE"]
    assert row_counts(runtime) == counts
    assert stored_files(store_root) == files

    # A body far past the limit is cut off while it streams in: 413 before anything is parsed.
    huge = upload(client, CREATE_ARTIFACT, {"input": {"name": "huge"}}, b"d" * (2 * MiB))
    assert huge.status_code == 413
    refusal = huge.json()
    assert (refusal.get("error") or refusal["errors"][0])["code"] == "TOO_LARGE"
    assert huge.headers["x-request-id"]
    assert row_counts(runtime) == counts
    assert stored_files(store_root) == files

    # The limit did not break the instance: the accepted artifact still downloads.
    assert client.get(at_limit["version"]["downloadUrl"]).content == b"a" * 1000
