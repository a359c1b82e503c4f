"""Crash safety: SIGKILL a real ``concord serve`` mid-upload, mid-edit-loop and (PostgreSQL) between the
commit of a staged event and its seal, restart it, check the state.

Issue "Bad input and crashes": after the restart every acknowledged edit is there, no partial artifact is
visible, and ``concord events verify`` and ``concord replay --verify`` pass. Each test runs on SQLite and
on PostgreSQL (the ``database_url`` fixture), against a server process started by :mod:`procs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from authz import key_of
from procs import Server, run_cli, server_env, start_server
from sqlalchemy import func, select, text

from concord_core.db import models
from concord_core.db.engine import Database
from concord_core.events.log import CHAIN_LOCK
from concord_core.storage import LocalStore

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BIG_UPLOAD = 256 * MiB
CREATE_ARTIFACT = """
mutation Upload($input: CreateArtifactInput!, $file: Upload!) {
  createArtifact(input: $input, file: $file) {
    artifact { id currentVersion }
    version { version sha256 size downloadUrl }
    errors { field code message }
  }
}"""
CREATE_DTU = """
mutation Create($input: CreateDtuInput!) {
  createDtu(input: $input) { dtu { id version title } errors { field code message } }
}"""
EDIT_DTU = """
mutation Edit($input: EditDtuInput!) {
  editDtu(input: $input) { dtu { version title } errors { field code message } }
}"""
DTU_HISTORY = """
query History($id: ID!) {
  dtu(id: $id) { version title history { version title change } }
}"""
ARTIFACT = """
query Artifact($id: ID!) {
  artifact(id: $id) { currentVersion versions { version sha256 size downloadUrl } }
}"""


@dataclass
class Deployment:
    """One Concord instance's files and settings, which servers come and go on."""

    env: dict[str, str]
    database_url: str
    root: Path
    starts: int = 0
    servers: list[Server] = field(default_factory=list)

    @property
    def store(self) -> LocalStore:
        return LocalStore(Path(self.env["CONCORD_STORAGE_URL"]))

    def start(self) -> Server:
        self.starts += 1
        server = start_server(self.env, self.root / f"server-{self.starts}.log")
        self.servers.append(server)
        return server

    def counts(self) -> dict[str, int]:
        db = Database(self.database_url)
        try:
            with db.read() as session:
                return {
                    table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
                    for table in (
                        models.Artifact,
                        models.ArtifactVersion,
                        models.Dtu,
                        models.Event,
                        models.AuditEntry,
                    )
                }
        finally:
            db.dispose()

    def version_rows_for(self, sha256: str) -> int:
        db = Database(self.database_url)
        try:
            with db.read() as session:
                query = select(func.count()).where(models.ArtifactVersion.blob_sha256 == sha256)
                return session.scalar(query) or 0
        finally:
            db.dispose()

    def assert_log_consistent(self) -> None:
        """``concord events verify`` and ``concord replay --verify`` both exit 0."""
        for args in (("events", "verify"), ("replay", "--verify")):
            result = run_cli(self.env, *args)
            assert result.returncode == 0, f"concord {' '.join(args)}:\n{result.stdout}\n{result.stderr}"

    def assert_store_intact(self) -> list[str]:
        """Every blob visible under a hash name is complete: its bytes hash to its name."""
        store = self.store
        hashes = list(store.iter_hashes())
        for sha256 in hashes:
            digest, size = hashlib.sha256(), 0
            for chunk in store.open_chunks(sha256):  # raises BlobCorrupted on a mismatch
                digest.update(chunk)
                size += len(chunk)
            assert digest.hexdigest() == sha256
            assert size == store.size(sha256)
        return hashes


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    data_dir = tmp_path / "data"
    deployment = Deployment(server_env(data_dir, database_url), database_url, tmp_path)
    yield deployment
    for server in deployment.servers:
        if server.alive():
            server.kill()


def graphql(client: httpx.Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body["errors"]
    data: dict[str, Any] = body["data"]
    return data


# --- a large upload killed part way -----------------------------------------------------------------


def big_chunks(total: int, seed: int = 7) -> Iterator[bytes]:
    """``total`` bytes of incompressible data, 1 MiB at a time, the same every time for one seed."""
    block = random.Random(seed).randbytes(MiB)
    for index in range(total // MiB):
        yield index.to_bytes(8, "big") + block[8:]


def big_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in big_chunks(total):
        digest.update(chunk)
    return digest.hexdigest()


class RawUpload:
    """A GraphQL multipart ``createArtifact`` written to a plain socket, so the test decides exactly how
    much of the body the server gets before it dies (and never holds the body in memory)."""

    BOUNDARY = "concord-crash-test-boundary"

    def __init__(self, server: Server, name: str, total: int) -> None:
        operations = json.dumps(
            {
                "query": CREATE_ARTIFACT,
                "variables": {"input": {"name": name, "mediaType": "application/octet-stream"}, "file": None},
            }
        )
        b = self.BOUNDARY
        self.head = (
            f'--{b}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{operations}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
            '{"0": ["variables.file"]}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="0"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{b}--\r\n".encode()
        length = len(self.head) + total + len(self.tail)
        self.request = (
            f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {length}\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode()
        self.chunks = big_chunks(total)
        self.sent = 0
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(self.request + self.head)

    def send(self, up_to: int | None = None) -> None:
        """Send file bytes until ``up_to`` bytes of the file were sent (None: all, and the epilogue)."""
        for chunk in self.chunks:
            self.sock.sendall(chunk)
            self.sent += len(chunk)
            if up_to is not None and self.sent >= up_to:
                return
        self.sock.sendall(self.tail)

    def close(self) -> None:
        self.sock.close()


def upload(client: httpx.Client, name: str, content: bytes) -> dict[str, Any]:
    operations = {"query": CREATE_ARTIFACT, "variables": {"input": {"name": name}, "file": None}}
    response = client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("small.bin", content, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body
    payload: dict[str, Any] = body["data"]["createArtifact"]
    assert payload["errors"] == [], payload
    return payload


def wait_for_store_temp_file(store: LocalStore, min_size: int, server: Server, timeout: float = 20) -> None:
    """Block until the server is writing a blob: a temp file of at least ``min_size`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.alive(), server.log()
        try:
            entries = list(os.scandir(store.temp_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                if entry.name.startswith("put-") and entry.stat().st_size >= min_size:
                    return
            except FileNotFoundError:
                continue
        time.sleep(0.002)
    raise AssertionError("the server never started writing the upload to the object store")


@pytest.mark.parametrize("kill_point", ["mid_body", "while_storing"])
def test_sigkill_during_large_upload_leaves_no_partial_artifact(
    deployment: Deployment, kill_point: str
) -> None:
    small = os.urandom(3 * MiB + 17)
    server = deployment.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        kept = upload(client, "kept before the crash", small)
    before = deployment.counts()
    big_hash = big_sha256(BIG_UPLOAD)

    started = time.monotonic()
    raw = RawUpload(server, "killed mid-upload", BIG_UPLOAD)
    try:
        if kill_point == "mid_body":
            # Well past anything the socket buffers hold, well short of the end of the body.
            raw.send(up_to=64 * MiB)
            time.sleep(0.3)
        else:
            raw.send()  # the whole body: the server parses it, then streams the file into the store
            wait_for_store_temp_file(deployment.store, 8 * MiB, server)
        server.kill()
    finally:
        raw.close()
    killed_after = time.monotonic() - started

    server = deployment.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # The killed upload left nothing: no rows, no event, no blob under its hash.
        assert deployment.counts() == before, f"killed after {killed_after:.1f}s"
        assert deployment.version_rows_for(big_hash) == 0
        # Whatever is visible in the store is whole (a killed write may leave only a temp file) ...
        assert deployment.assert_store_intact() == [kept["version"]["sha256"]]
        # ... and the killed upload is not among it.
        assert not deployment.store.exists(big_hash)

        # The upload acknowledged before the crash survived, byte for byte.
        found = graphql(client, ARTIFACT, {"id": kept["artifact"]["id"]})["artifact"]
        assert found["currentVersion"] == 1
        assert [v["sha256"] for v in found["versions"]] == [hashlib.sha256(small).hexdigest()]
        download = client.get(kept["version"]["downloadUrl"])
        assert download.status_code == 200
        assert download.content == small

        # And the restarted server takes uploads again.
        again = upload(client, "after the restart", small[::-1])
        assert again["version"]["size"] == len(small)

    deployment.assert_log_consistent()


# --- a loop of edits killed at a random moment ------------------------------------------------------


@dataclass
class Editor:
    """A client that edits one DTU as fast as it can, remembering every acknowledged version."""

    url: str
    dtu_id: str
    acknowledged: dict[int, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        version = 1
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                title = f"edit {version + 1} {uuid.uuid4().hex}"
                variables = {"input": {"id": self.dtu_id, "expectedVersion": version, "title": title}}
                try:
                    response = client.post("/graphql", json={"query": EDIT_DTU, "variables": variables})
                except httpx.TransportError:
                    return  # the server died: this edit was never acknowledged
                body = response.json() if response.status_code == 200 else {}
                payload = (body.get("data") or {}).get("editDtu") or {}
                if response.status_code != 200 or body.get("errors") or payload.get("errors"):
                    self.unexpected.append(f"{response.status_code} {response.text[:500]}")
                    return
                acknowledged = payload["dtu"]
                if acknowledged["version"] != version + 1 or acknowledged["title"] != title:
                    self.unexpected.append(f"asked for v{version + 1} {title!r}, got {acknowledged}")
                    return
                version += 1
                self.acknowledged[version] = title


def test_sigkill_during_edit_loop_keeps_every_acknowledged_edit(deployment: Deployment) -> None:
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    server = deployment.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ids = [
            graphql(client, CREATE_DTU, {"input": {"title": f"loop {n}", "tags": ["crash"]}})["createDtu"]
            for n in range(2)
        ]
    editors = [Editor(server.url, created["dtu"]["id"]) for created in ids]
    threads = [threading.Thread(target=editor.run, daemon=True) for editor in editors]
    for thread in threads:
        thread.start()

    # Let the loop get going, then kill at a random moment of it.
    deadline = time.monotonic() + 10
    while min(len(e.acknowledged) for e in editors) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(chance.uniform(0.1, 1.5))
    server.kill()
    for thread in threads:
        thread.join(timeout=15)
    for editor in editors:
        editor.stop.set()
    assert not any(t.is_alive() for t in threads)
    assert all(len(e.acknowledged) >= 5 for e in editors), f"seed {seed}: the edit loop barely ran"
    assert not [e.unexpected for e in editors if e.unexpected], f"seed {seed}"

    server = deployment.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for editor in editors:
            dtu = graphql(client, DTU_HISTORY, {"id": editor.dtu_id})["dtu"]
            last = max(editor.acknowledged)
            # Every acknowledged edit is there; at most the one edit in flight at the kill went beyond.
            assert last <= dtu["version"] <= last + 1, f"seed {seed}: {dtu['version']} vs {last}"
            history = {row["version"]: row for row in dtu["history"]}
            assert sorted(history) == list(range(1, dtu["version"] + 1)), f"seed {seed}"
            for version, title in editor.acknowledged.items():
                assert history[version]["title"] == title, f"seed {seed}: version {version}"
                assert history[version]["change"] == "edited"
            # The DTU is not stuck: the next edit from its current version succeeds.
            edited = graphql(
                client,
                EDIT_DTU,
                {"input": {"id": editor.dtu_id, "expectedVersion": dtu["version"], "title": "after"}},
            )["editDtu"]
            assert edited["errors"] == [] and edited["dtu"]["version"] == dtu["version"] + 1

    deployment.assert_log_consistent()


# --- killed between the commit of a staged event and its seal (PostgreSQL) ---------------------------


# SQLite serializes writers itself, so an event is never staged there: PostgreSQL only.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_sigkill_between_commit_and_seal_loses_no_event(deployment: Deployment) -> None:
    """On PostgreSQL an edit that finds the chain busy stages its event, commits, then seals it. The test
    holds the chain lock so the server commits the edit and waits to seal; it kills the server there and
    ends the server's waiting statement, so the event is committed but in no log. The next start seals it,
    and ``events verify`` / ``replay --verify`` pass."""
    server = deployment.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        dtu = graphql(client, CREATE_DTU, {"input": {"title": "v1"}})["createDtu"]["dtu"]
    key = key_of(dtu["id"])
    db = Database(deployment.database_url)
    try:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": CHAIN_LOCK})

            def edit() -> None:
                variables = {"input": {"id": dtu["id"], "expectedVersion": 1, "title": "v2"}}
                with httpx.Client(base_url=server.url, timeout=60) as client, suppress(httpx.TransportError):
                    client.post("/graphql", json={"query": EDIT_DTU, "variables": variables})

            editor = threading.Thread(target=edit, daemon=True)
            editor.start()
            deadline = time.monotonic() + 30
            while not holder.execute(SEAL_WAITERS).all():
                assert time.monotonic() < deadline, "the edit never came to wait for its seal"
                time.sleep(0.02)
            server.kill()
            # The server's seal statement was sent before the kill; a process killed a moment earlier
            # would not have sent it. End it, as the server going away before sending it would.
            for (pid,) in holder.execute(SEAL_WAITERS).all():
                holder.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CHAIN_LOCK})
            editor.join(30)

        def dtu_events() -> list[str]:
            with db.read() as session:
                query = select(models.Event.event_type).where(models.Event.entity_id == key)
                return list(session.scalars(query.order_by(models.Event.seq)))

        def outbox() -> int:
            with db.read() as session:
                return session.scalar(select(func.count()).select_from(models.EventOutbox)) or 0

        with db.read() as session:
            assert session.scalar(text("SELECT version FROM dtus WHERE id = :id"), {"id": key}) == 2
        assert (dtu_events(), outbox()) == (["DTU_CREATED"], 1)  # committed, not in the log

        restarted = deployment.start()
        assert (dtu_events(), outbox()) == (["DTU_CREATED", "DTU_EDITED"], 0)
        assert "sealed 1 event(s) left in the outbox" in restarted.log()  # at start-up, before serving
        deployment.assert_log_consistent()
    finally:
        db.dispose()


# Server processes waiting for the chain lock (the killed server's seal, and its maintenance loop's).
SEAL_WAITERS = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
)
