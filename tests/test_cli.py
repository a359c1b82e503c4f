"""The `concord` command and the operational endpoints of what it serves: `concord serve` for real
(migrate, then serve; health, readiness, metrics, the JSON request log), readiness failing when a
dependency is down, and the request id and request log of in-process requests."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import GraphQL, make_settings
from fastapi.testclient import TestClient

from concord_core.api.app import create_app
from concord_core.api.gql.schema import load_lenses
from concord_core.api.runtime import Runtime
from concord_core.cli.main import main
from concord_core.observability.logging import JsonFormatter

CONCORD = str(Path(sys.executable).with_name("concord"))
CREATE = "mutation Make($i: CreateDtuInput!) { createDtu(input: $i) { dtu { id ownerId } errors { code } } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def concord_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env.update(
        CONCORD_DATA_DIR=str(tmp_path / "var"),
        CONCORD_DATABASE_URL=database_url,
        CONCORD_STORAGE_URL=str(tmp_path / "objects"),
        CONCORD_LOG_JSON="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def key_of(global_id: str) -> str:
    raw = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return raw.split(":", 1)[1]


def test_serve_migrates_then_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The embedded default, as the README runs it (the PostgreSQL form is covered by tests/test_crash.py).
    env = concord_env(tmp_path, f"sqlite:///{tmp_path / 'var' / 'concord.db'}")
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [CONCORD, "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log_path.read_text()
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)

            assert http.get("/healthz").json() == {"status": "ok"}
            ready = http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "ready"
            assert ready.json()["checks"] == {"database": "ok", "objectStore": "ok"}

            made = http.post(
                "/graphql",
                json={"query": CREATE, "variables": {"i": {"title": "over real HTTP"}}},
                headers={"X-Request-ID": "serve-smoke-1"},
            )
            assert made.status_code == 200
            assert made.headers["x-request-id"] == "serve-smoke-1"
            owner = key_of(made.json()["data"]["createDtu"]["dtu"]["ownerId"])
            assert http.get("/graphql", headers={"Accept": "text/html"}).status_code == 200  # GraphiQL

            metrics = http.get("/metrics").text
            assert 'concord_http_requests_total{method="POST",route="/graphql",status="200"} 1.0' in metrics
            assert "concord_http_request_duration_seconds" in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    output = log_path.read_text()
    # A graceful stop: uvicorn shuts the app down, then re-raises the signal it caught.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete." in output
    assert "migrated the database from empty to " in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    [request_line] = [line for line in lines if line.get("request_id") == "serve-smoke-1"]
    assert request_line["route"] == "/graphql"
    assert request_line["user_id"] == owner
    assert request_line["operation"] == "Make"
    assert request_line["status"] == 200
    assert request_line["method"] == "POST"
    assert request_line["latency_ms"] >= 0

    # What the server left behind verifies with the same settings.
    for name, value in env.items():
        if name.startswith("CONCORD_"):
            monkeypatch.setenv(name, value)
    assert main(["events", "verify"]) == 0
    assert main(["replay", "--verify"]) == 0


# --- readiness and the request log, in-process --------------------------------------------------------


def unready(runtime: Runtime) -> dict[str, Any]:
    # No lifespan: start-up would need the database that is down.
    client = TestClient(create_app(runtime))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert client.get("/healthz").status_code == 200  # alive, but not ready
    body: dict[str, Any] = response.json()
    assert body["status"] == "unavailable"
    return body


@pytest.fixture
def closed_port() -> int:
    port = free_port()  # nothing listens there once the probe socket is closed
    return port


def test_readiness_fails_when_postgres_is_unreachable(tmp_path: Path, closed_port: int) -> None:
    settings = make_settings(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/concord")
    runtime = Runtime.open(settings, load_lenses(settings))
    try:
        checks = unready(runtime)["checks"]
        assert checks["database"].startswith("error: ")
        assert checks["objectStore"] == "ok"
    finally:
        runtime.close()


def test_readiness_fails_when_the_sqlite_directory_is_gone(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    settings = make_settings(tmp_path, f"sqlite:///{db_dir / 'concord.db'}")
    runtime = Runtime.open(settings, load_lenses(settings))
    shutil.rmtree(db_dir)
    try:
        checks = unready(runtime)["checks"]
        assert checks["database"].startswith("error: ")
        assert checks["objectStore"] == "ok"
    finally:
        runtime.close()


def test_readiness_fails_when_the_object_store_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store should be")
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'concord.db'}", storage_url=str(blocker))
    runtime = Runtime.open(settings, load_lenses(settings))
    try:
        checks = unready(runtime)["checks"]
        assert checks["database"] == "ok"
        assert checks["objectStore"].startswith("error: ")
    finally:
        runtime.close()


class JsonLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def request_log() -> Iterator[JsonLines]:
    logger = logging.getLogger("concord.request")
    capture, level = JsonLines(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(level)


def test_health_metrics_request_ids_and_the_request_log(
    client: TestClient, gql: GraphQL, runtime: Runtime, request_log: JsonLines
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "objectStore": "ok"}
    assert body["authMode"] == "public"
    gql.run(CREATE, {"i": {"title": "counted"}})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'concord_http_requests_total{method="POST",route="/graphql",status="200"}' in metrics.text
    assert 'concord_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics.text

    # The request id is taken from the header (or made) and echoed; the request log line carries it.
    response = client.post(
        "/graphql",
        json={"query": CREATE, "variables": {"i": {"title": "logged"}}, "operationName": "Make"},
        headers={"X-Request-ID": "log-me-1"},
    )
    assert response.headers["x-request-id"] == "log-me-1"
    generated = client.get("/healthz").headers["x-request-id"]
    assert generated and generated != "log-me-1"

    [line] = [entry for entry in request_log.lines if entry.get("request_id") == "log-me-1"]
    assert line["route"] == "/graphql"
    assert line["user_id"] == runtime.local_owner_id
    assert line["operation"] == "Make"
    assert (line["method"], line["status"]) == ("POST", 200)
    assert line["client_addr"] == "testclient:50000"
    assert isinstance(line["latency_ms"], float | int)
    [health] = [entry for entry in request_log.lines if entry.get("request_id") == generated]
    assert health["route"] == "/healthz"
