"""The three auth modes (public, apikey, jwt), sign-up open and closed, the first admin from the command
line, and start-up refusing what it must (an unknown mode, a public instance on a non-loopback address).

Instance tests run on SQLite and PostgreSQL; the start-up checks happen before the database matters and run
once, on SQLite.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from authz import (
    JWT_SECRET,
    LOGIN,
    PASSWORD,
    VIEWER,
    Instance,
    assert_unauthenticated,
    bearer,
    cheap_passwords,
    first_message,
    gid,
    issue_key,
    make_user,
    mode_settings,
    new_key,
    open_instance,
    row_counts,
    served,
    sign_in,
)
from procs import CONCORD, free_port, server_env
from sqlalchemy import select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import concord_core.api.gql.schema as gql_schema
import concord_core.observability.logging as observability_logging
from concord_core.cli.main import main
from concord_core.db.models import AuditEntry, User
from concord_core.settings import SettingsError, load_settings

SERVER_INFO = "{ serverInfo { authMode version } }"
CREATE_DTU = """mutation Create($input: CreateDtuInput!) {
  createDtu(input: $input) { dtu { id ownerId workspaceId } errors { field code message } }
}"""
REGISTER = """mutation Register($email: String!, $password: String!, $name: String!) {
  register(email: $email, password: $password, displayName: $name) {
    accessToken refreshToken user { id email isAdmin } errors { field code message }
  }
}"""
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(autouse=True)
def _cheap_hashing() -> Iterator[None]:
    with cheap_passwords():
        yield


def reports_mode(instance: Instance, mode: str, headers: dict[str, str] | None = None) -> None:
    ready = instance.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["authMode"] == mode
    assert instance.data(SERVER_INFO, headers=headers)["serverInfo"]["authMode"] == mode


# --- public -----------------------------------------------------------------------------------------


def test_public_mode_acts_as_the_local_owner(tmp_path: Path, database_url: str) -> None:
    with open_instance(tmp_path, database_url, **mode_settings("public")) as instance:
        reports_mode(instance, "public")
        viewer = instance.data(VIEWER)["viewer"]
        assert viewer["user"]["email"] == "owner@localhost"
        assert viewer["user"]["isAdmin"] is True
        assert [w["personal"] for w in viewer["workspaces"]] == [True]

        created = instance.mutate(CREATE_DTU, {"input": {"title": "mine"}})["dtu"]
        assert created["ownerId"] == viewer["user"]["id"]
        # Credentials that are wrong are still refused: no falling back to the owner.
        assert_unauthenticated(instance.client.post("/graphql", json={"query": VIEWER}, headers=bearer("x")))
        # Sign-in belongs to jwt mode.
        refused = instance.data(LOGIN, {"email": "owner@localhost", "password": PASSWORD})["login"]
        assert [e["code"] for e in refused["errors"]] == ["FORBIDDEN"]


def test_public_mode_refuses_a_non_loopback_bind_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"sqlite:///{tmp_path / 'concord.db'}"
    use_env(monkeypatch, server_env(tmp_path, database_url, auth_mode="public"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("must not serve"))
    monkeypatch.setattr(observability_logging, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        gql_schema, "load_lenses", lambda *args, **kwargs: pytest.fail("must not load lenses")
    )
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    stderr = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 in public mode" in stderr
    assert "CONCORD_ALLOW_PUBLIC_BIND" in stderr
    # Refused before anything else: nothing was migrated, not even an empty database file made.
    assert not (tmp_path / "concord.db").exists()
    assert "migrated" not in stderr

    # Allowed explicitly, a real server starts on all addresses.
    env = server_env(tmp_path, database_url, auth_mode="public", allow_public_bind="1")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*CONCORD, "serve", "--host", "0.0.0.0", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200, log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- apikey -----------------------------------------------------------------------------------------


def test_apikey_mode_needs_a_key_for_everything_but_health(tmp_path: Path, database_url: str) -> None:
    with open_instance(tmp_path, database_url, **mode_settings("apikey")) as instance:
        client = instance.client
        for path in OPEN_PATHS:
            assert client.get(path).status_code == 200, path
        assert_unauthenticated(client.post("/graphql", json={"query": SERVER_INFO}))
        assert_unauthenticated(client.get("/graphql", params={"query": SERVER_INFO}))
        assert_unauthenticated(client.get("/api/lens-manifest.schema.json"))
        assert_unauthenticated(client.get("/api/artifacts/x/versions/1/content"))

        account = make_user(instance.runtime, "automation@example.com")
        token, _key_id = issue_key(instance.runtime, account)
        for headers in (bearer(token), {"X-API-Key": token}):
            reports_mode(instance, "apikey", headers)
            assert instance.data(VIEWER, headers=headers)["viewer"]["user"]["email"] == account.email
        assert client.get("/api/lens-manifest.schema.json", headers=bearer(token)).status_code == 200

        # Tokens are refused, even one signed well: this mode has no sessions to tie them to.
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": account.id,
            "sid": "x",
            "iss": "concord",
            "aud": "concord-api",
            "typ": "access",
        }
        claims |= {"iat": int(now.timestamp()), "exp": int((now + timedelta(minutes=5)).timestamp())}
        forged = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert_unauthenticated(client.post("/graphql", json={"query": VIEWER}, headers=bearer(forged)))
        # Subscriptions too: a bad key in the handshake is refused there; with none, the key may come in
        # the connection_init payload (browsers cannot set websocket headers), and without one there the
        # connection is closed (4403) before anything runs.
        job = "subscription($id: ID!) { jobUpdated(id: $id) { id } }"
        unknown = {"id": gid("Job", "00000000-0000-4000-8000-000000000000")}
        with served(client.app) as url:
            with pytest.raises(InvalidStatus) as refused:
                first_message(url, job, unknown, bearer("ck_not_a_key"))
            assert refused.value.response.status_code == 401
            with pytest.raises(ConnectionClosed) as closed:
                first_message(url, job, unknown)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
            answered = first_message(url, job, unknown, bearer(token))
            assert answered is not None and answered["type"] in ("next", "error")
            for payload in ({"X-API-Key": token}, {"authorization": f"Bearer {token}"}):
                with connect(url, subprotocols=["graphql-transport-ws"], open_timeout=5) as ws:  # type: ignore[list-item]
                    ws.send(json.dumps({"type": "connection_init", "payload": payload}))
                    assert json.loads(ws.recv(timeout=5))["type"] == "connection_ack"
                    query = {"query": "subscription { events { type } }"}
                    ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
                    with pytest.raises(TimeoutError):  # subscribed, and quiet: nothing has happened since
                        ws.recv(timeout=0.5)
        # And nobody signs in or up here.
        body = instance.data(LOGIN, {"email": account.email, "password": PASSWORD}, bearer(token))
        assert [e["code"] for e in body["login"]["errors"]] == ["FORBIDDEN"]


# --- jwt --------------------------------------------------------------------------------------------


def test_jwt_mode_with_open_registration(tmp_path: Path, database_url: str) -> None:
    settings = mode_settings("jwt") | {"registration": True}
    with open_instance(tmp_path, database_url, **settings) as instance:
        reports_mode(instance, "jwt")
        anonymous = instance.data(VIEWER)["viewer"]
        assert anonymous == {"user": None, "scopes": ["read"], "workspaces": []}

        variables = {"email": "New.Person@Example.com", "password": PASSWORD, "name": "New Person"}
        registered = instance.mutate(REGISTER, variables)
        assert registered["user"]["email"] == "new.person@example.com"
        assert registered["user"]["isAdmin"] is False
        token_headers = bearer(registered["accessToken"])
        me = instance.data(VIEWER, headers=token_headers)["viewer"]
        assert me["user"]["id"] == registered["user"]["id"]
        assert [(w["personal"], w["yourRole"]) for w in me["workspaces"]] == [(True, "OWNER")]

        again = instance.data(REGISTER, variables)["register"]
        assert [(e["field"], e["code"]) for e in again["errors"]] == [("email", "CONFLICT")]

        # Log in; tokens and API keys both work.
        logged_in = instance.mutate(LOGIN, {"email": "new.person@example.com", "password": PASSWORD})
        assert logged_in["accessToken"] and logged_in["refreshToken"]
        key = new_key(instance, bearer(logged_in["accessToken"]))["token"]
        for headers in (bearer(logged_in["accessToken"]), bearer(key), {"X-API-Key": key}):
            assert instance.data(VIEWER, headers=headers)["viewer"]["user"]["id"] == me["user"]["id"]
            created = instance.mutate(CREATE_DTU, {"input": {"title": "t"}}, headers)["dtu"]
            assert created["ownerId"] == me["user"]["id"]
        # Without credentials nothing can be created.
        body = instance.data(CREATE_DTU, {"input": {"title": "t"}})["createDtu"]
        assert [e["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


def test_jwt_mode_with_closed_registration(tmp_path: Path, database_url: str) -> None:
    with open_instance(tmp_path, database_url, **mode_settings("jwt")) as instance:
        before = row_counts(instance.runtime)
        variables = {"email": "someone@example.com", "password": PASSWORD, "name": "Someone"}
        response = instance.client.post(
            "/graphql", json={"query": REGISTER, "variables": variables}, headers={"X-Request-ID": "closed-1"}
        )
        payload = response.json()["data"]["register"]
        assert payload["accessToken"] is None
        assert [e["code"] for e in payload["errors"]] == ["FORBIDDEN"]
        assert row_counts(instance.runtime) == before
        with instance.runtime.db.read() as session:
            audit = session.scalars(select(AuditEntry).where(AuditEntry.request_id == "closed-1")).all()
            assert [(a.action, a.outcome) for a in audit] == [("user.register", "denied")]


def test_admin_create_user_makes_the_first_admin_of_a_closed_instance(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, server_env(tmp_path, database_url, auth_mode="jwt", jwt_secret=JWT_SECRET))
    command = ["admin", "create-user", "--email", "Boss@Example.com", "--admin", "--password-stdin"]
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(command) == 1
    assert "at least 10 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(command) == 0
    assert "created administrator boss@example.com" in capsys.readouterr().out

    with open_instance(tmp_path, database_url, **mode_settings("jwt")) as instance:
        with instance.runtime.db.read() as session:
            users = session.scalars(select(User)).all()
            assert [(u.email, u.is_admin) for u in users] == [("boss@example.com", True)]
            assert users[0].password_hash is not None and PASSWORD not in users[0].password_hash
        signed = instance.mutate(LOGIN, {"email": "boss@example.com", "password": PASSWORD})
        assert signed["user"]["isAdmin"] is True
        listed = instance.data("{ users { email isAdmin } }", headers=bearer(signed["accessToken"]))
        assert listed["users"] == [{"email": "boss@example.com", "isAdmin": True}]
        # Sign-up stays closed.
        refused = instance.data(REGISTER, {"email": "x@example.com", "password": PASSWORD, "name": "X"})[
            "register"
        ]
        assert [e["code"] for e in refused["errors"]] == ["FORBIDDEN"]


# --- start-up -------------------------------------------------------------------------------------


def test_an_unknown_auth_mode_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, server_env(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", auth_mode="bogus"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("must not serve"))
    assert main(["serve", "--port", str(free_port())]) == 2
    stderr = capsys.readouterr().err
    assert "CONCORD_AUTH_MODE" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "c.db").exists()  # stopped before touching anything


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_jwt_mode_needs_a_long_secret(tmp_path: Path, secret: str | None) -> None:
    with pytest.raises(SettingsError, match="CONCORD_JWT_SECRET"):
        load_settings(data_dir=tmp_path, auth_mode="jwt", jwt_secret=secret)


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Make ``env`` (built by procs.server_env) this process's CONCORD_* environment."""
    for name in list(os.environ):
        if name.startswith("CONCORD_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CONCORD_"):
            monkeypatch.setenv(name, value)


def test_sign_in_works_for_an_account_made_by_the_operator(tmp_path: Path, database_url: str) -> None:
    """The helper path the other access tests rely on: create-user's operator, then GraphQL login."""
    with open_instance(tmp_path, database_url, **mode_settings("jwt")) as instance:
        account = make_user(instance.runtime, "person@example.com")
        signed = sign_in(instance, account)
        me = instance.data(VIEWER, headers=bearer(signed["accessToken"]))["viewer"]
        assert me["user"]["email"] == "person@example.com"
        assert me["scopes"] == ["read", "write"]
