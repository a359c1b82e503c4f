"""Shared helpers for the access tests: instances per auth mode, accounts, credentials, and the checks
every refusal must pass (typed code, no internal detail, nothing written).

Accounts are made the way ``concord admin create-user`` makes them (the operator with ``system=True``);
people then sign in through GraphQL like any client. argon2 at its production parameters costs about a
quarter of a second per hash, so most tests hash with :func:`cheap_passwords` (still argon2id).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from argon2 import PasswordHasher
from conftest import make_settings, postgres_database, sqlalchemy_url
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from starlette.types import ASGIApp
from websockets.sync.client import connect

from concord_core.api.app import create_app
from concord_core.api.gql.schema import load_lenses
from concord_core.api.runtime import Runtime
from concord_core.auth import passwords
from concord_core.auth.principal import ANONYMOUS
from concord_core.db.migrate import upgrade
from concord_core.db.models import AuditEntry, Base, Workspace
from concord_core.operators import accounts as account_ops

PASSWORD = "correct horse battery"
JWT_SECRET = "s" * 48
#: Tables a refused request may still write to: its audit row and the sign-in throttle.
BOOKKEEPING_TABLES = frozenset({"audit_log", "auth_throttle"})

# --- databases and instances -----------------------------------------------------------------------


@contextmanager
def database(backend: str, directory: Path) -> Iterator[str]:
    """A fresh database URL for ``backend`` (sqlite or postgres) that lives as long as the block."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'concord.db'}"
        return
    with postgres_database() as name:
        yield sqlalchemy_url(name)


def mode_settings(mode: str) -> dict[str, Any]:
    """Settings overrides for an auth mode (jwt gets a secret)."""
    values: dict[str, Any] = {"auth_mode": mode}
    if mode == "jwt":
        values["jwt_secret"] = JWT_SECRET
    return values


@dataclass
class Instance:
    """A migrated runtime and a client of its app (lifespan running)."""

    runtime: Runtime
    client: TestClient

    def gql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        status: int = 200,
    ) -> dict[str, Any]:
        response = self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers or {}
        )
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    def data(
        self, query: str, variables: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``data`` of an operation that must not fail at the top level."""
        body = self.gql(query, variables, headers)
        assert not body.get("errors"), body
        result: dict[str, Any] = body["data"]
        return result

    def mutate(
        self, query: str, variables: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The single payload of a mutation that must succeed (no top-level or payload errors)."""
        payload: dict[str, Any] = next(iter(self.data(query, variables, headers).values()))
        assert payload["errors"] == [], payload
        return payload


@contextmanager
def open_instance(directory: Path, database_url: str, **overrides: Any) -> Iterator[Instance]:
    """A runtime on ``database_url`` with ``overrides`` (settings fields), served by a TestClient.

    Server exceptions become 500 responses, as a real client would see them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    settings = make_settings(directory, database_url, **overrides)
    runtime = Runtime.open(settings, load_lenses(settings))
    upgrade(runtime.db)
    try:
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            yield Instance(runtime, client)
    finally:
        runtime.close()


@contextmanager
def cheap_passwords() -> Iterator[None]:
    """Hash with tiny argon2id parameters for the block (hashing is not what those tests are about)."""
    real = passwords._hasher
    passwords._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    passwords._decoy_hash.cache_clear()
    try:
        yield
    finally:
        passwords._hasher = real
        passwords._decoy_hash.cache_clear()


# --- ids ------------------------------------------------------------------------------------------


def gid(type_name: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{key}".encode()).decode().rstrip("=")


def key_of(global_id: str) -> str:
    raw = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    return raw.split(":", 1)[1]


# --- accounts and credentials ---------------------------------------------------------------------


@dataclass
class Account:
    id: str
    email: str
    password: str
    workspace_id: str  # the personal workspace's key
    headers: dict[str, str] = field(default_factory=dict)  # a credential, once one is made

    @property
    def global_id(self) -> str:
        return gid("User", self.id)

    @property
    def workspace_gid(self) -> str:
        return gid("Workspace", self.workspace_id)


def make_user(runtime: Runtime, email: str, *, admin: bool = False, password: str = PASSWORD) -> Account:
    """An account, created as `concord admin create-user` does."""
    ctx = runtime.operation_context(ANONYMOUS)
    user = account_ops.admin_create_user(ctx, email, password, email.split("@")[0], admin, system=True)
    with runtime.db.read() as session:
        workspace = session.scalar(select(Workspace.id).where(Workspace.personal_owner_id == user.id))
    assert workspace is not None
    return Account(user.id, user.email, password, workspace)


def issue_key(
    runtime: Runtime, account: Account, *, scopes: list[str] | None = None, name: str = "tests"
) -> tuple[str, str]:
    """(token, key id): a key made through the operator, for instances where nobody can sign in."""
    ctx = runtime.operation_context(runtime.principal_for_user(account.id))
    data: dict[str, Any] = {"name": name}
    if scopes is not None:
        data["scopes"] = scopes
    key, token = account_ops.create_api_key(ctx, data)
    return token, key.id


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


LOGIN = """mutation Login($email: String!, $password: String!) {
  login(email: $email, password: $password) {
    accessToken refreshToken expiresAt user { id email isAdmin } errors { field code message }
  }
}"""
CREATE_KEY = """mutation Key($name: String!, $scopes: [String!], $expiresAt: DateTime) {
  createApiKey(name: $name, scopes: $scopes, expiresAt: $expiresAt) {
    token apiKey { id name prefix scopes expiresAt lastUsedAt revokedAt } errors { field code message }
  }
}"""
VIEWER = "{ viewer { user { id email isAdmin } scopes workspaces { id name personal yourRole } } }"


def sign_in(instance: Instance, account: Account) -> dict[str, Any]:
    """Log in through GraphQL; returns the payload (accessToken, refreshToken, ...)."""
    payload = instance.mutate(LOGIN, {"email": account.email, "password": account.password})
    return payload


def new_key(
    instance: Instance,
    headers: dict[str, str],
    name: str = "automation",
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """createApiKey through GraphQL; returns the payload (token, apiKey)."""
    variables: dict[str, Any] = {"name": name, "scopes": scopes}
    if expires_at is not None:
        variables["expiresAt"] = expires_at.isoformat()
    return instance.mutate(CREATE_KEY, variables, headers)


# --- checks ---------------------------------------------------------------------------------------


def row_counts(runtime: Runtime) -> dict[str, int]:
    """Rows per table, leaving out the tables a refusal may write (audit, throttle)."""
    with runtime.db.read() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
            if table.name not in BOOKKEEPING_TABLES
        }


def audit_rows(runtime: Runtime, request_id: str) -> list[AuditEntry]:
    with runtime.db.read() as session:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.request_id == request_id).order_by(AuditEntry.id)
        )
        result = list(rows)
        session.expunge_all()
        return result


_INTERNALS = (
    re.compile(
        r'traceback|file "|site-packages|concord_core|sqlalchemy|psycopg|sqlite'
        r"|\binsert into\b|\bselect\b.*\bfrom\b",
        re.IGNORECASE,
    ),
    re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b"),  # exception class names
)
#: Words that look like exception names but are the schema's own types.
_SCHEMA_WORDS = ("FieldError",)


def assert_no_internals(text: str) -> None:
    """A response body says what went wrong in Concord's words, never in the implementation's."""
    for word in _SCHEMA_WORDS:
        text = text.replace(word, "")
    for pattern in _INTERNALS:
        found = pattern.search(text)
        assert found is None, f"internal detail {found.group(0)!r} in {text[:500]}"


def assert_unauthenticated(response: httpx.Response) -> None:
    """The 401 every bad credential gets: typed, with the request id, and nothing more."""
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    body = response.json()
    assert set(body) == {"errors"}, body
    [error] = body["errors"]
    assert error["code"] == "UNAUTHENTICATED"
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["extensions"]["requestId"] == response.headers["x-request-id"]
    assert_no_internals(response.text)


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value from GET /metrics (0 when the series does not exist yet)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def error_codes(body: dict[str, Any], field_name: str) -> list[str]:
    """Every error code a response carries for ``field_name``: top-level ones and the payload's."""
    codes = [str(e.get("extensions", {}).get("code")) for e in body.get("errors") or []]
    payload = (body.get("data") or {}).get(field_name)
    if isinstance(payload, dict) and payload.get("errors"):
        codes += [str(e["code"]) for e in payload["errors"]]
    return codes


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --- subscriptions ------------------------------------------------------------------------------------


@contextmanager
def served(app: ASGIApp) -> Iterator[str]:
    """``app`` served by uvicorn in a thread (lifespan off: the runtime is already started); yields the
    websocket URL of its GraphQL endpoint. For subscriptions, whose silence needs a timeout to observe."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        thread.join(10)


def first_message(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    wait: float = 1.0,
) -> dict[str, Any] | None:
    """The first message a subscription sends (graphql-transport-ws: next, error or complete), or None
    when it sends nothing within ``wait`` seconds."""
    messages = subscription_messages(url, query, variables, headers, wait=wait, limit=1)
    return messages[0] if messages else None


def subscription_messages(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    wait: float = 1.0,
    limit: int = 1000,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """The messages a subscription sends until it completes, errs, goes quiet for ``wait`` seconds,
    ``limit`` have come, or one satisfies ``until`` (credentials in the websocket handshake's headers)."""
    received: list[dict[str, Any]] = []
    with connect(
        url,
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        additional_headers=headers or {},
        open_timeout=5,
        close_timeout=0.2,
    ) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "connection_ack"
        ws.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables or {}}}
            )
        )
        while len(received) < limit:
            try:
                message: dict[str, Any] = json.loads(ws.recv(timeout=wait))
            except TimeoutError:
                break
            if message["type"] == "ping":
                ws.send(json.dumps({"type": "pong"}))
                continue
            received.append(message)
            if message["type"] in ("error", "complete"):
                return received
            if until is not None and until(message):
                break
        ws.send(json.dumps({"id": "1", "type": "complete"}))  # stop it before hanging up
    return received
