"""Credentials: argon2id passwords (rehash, minimum length, throttling, equal-time refusals), API keys
(scopes, expiry, shown once, lastUsedAt, revocation) and tokens (logout, refresh rotation and reuse, admin
revocation, disabled accounts). SQLite and PostgreSQL; the timing comparison runs on SQLite only.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from authz import (
    LOGIN,
    PASSWORD,
    VIEWER,
    Account,
    Instance,
    assert_unauthenticated,
    audit_rows,
    bearer,
    cheap_passwords,
    gid,
    key_of,
    make_user,
    metric,
    mode_settings,
    new_key,
    open_instance,
    sign_in,
)
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from concord_core.auth import passwords
from concord_core.db.models import ApiKey, AuditEntry, AuthThrottle, Dtu, Event, User, Workspace
from concord_core.operators import accounts as account_ops
from concord_core.operators.errors import OperatorError

CREATE_DTU = """mutation Create($title: String!) {
  createDtu(input: {title: $title}) { dtu { id } errors { code message } }
}"""
API_KEYS = "{ apiKeys { id name prefix scopes expiresAt lastUsedAt revokedAt } }"
REVOKE_KEY = (
    "mutation Revoke($id: ID!) { revokeApiKey(id: $id) { apiKey { id revokedAt } errors { code message } } }"
)
REFRESH = """mutation Refresh($token: String!) {
  refreshToken(refreshToken: $token) { accessToken refreshToken errors { code message } }
}"""
LOGOUT = "mutation { logout { ok errors { code message } } }"
REVOKE_ALL = """mutation RevokeAll($user: ID!) {
  adminRevokeCredentials(userId: $user, sessions: true, apiKeys: true) { ok count errors { code message } }
}"""
DISABLE = """mutation Disable($user: ID!, $disabled: Boolean!) {
  adminSetUserDisabled(userId: $user, disabled: $disabled) { user { disabled } errors { code message } }
}"""
REGISTER = """mutation Register($email: String!, $password: String!) {
  register(email: $email, password: $password, displayName: "Someone") { accessToken errors { field code } }
}"""


@pytest.fixture
def jwt_instance(tmp_path: Path, database_url: str) -> Iterator[Instance]:
    with open_instance(tmp_path, database_url, **mode_settings("jwt"), registration=True) as instance:
        yield instance


def who(instance: Instance, headers: dict[str, str]) -> str | None:
    """The viewer's email with these credentials, or None when they are refused with a 401."""
    response = instance.client.post("/graphql", json={"query": VIEWER}, headers=headers)
    if response.status_code == 401:
        assert_unauthenticated(response)
        return None
    assert response.status_code == 200, response.text
    user = response.json()["data"]["viewer"]["user"]
    return user["email"] if user else "anonymous"


def stored_hash(instance: Instance, account: Account) -> str:
    with instance.runtime.db.read() as session:
        value = session.scalar(select(User.password_hash).where(User.id == account.id))
    assert value is not None
    return value


# --- passwords --------------------------------------------------------------------------------------


def test_passwords_are_argon2id_and_rehashed_when_parameters_change(jwt_instance: Instance) -> None:
    account = make_user(jwt_instance.runtime, "hash@example.com")
    current = stored_hash(jwt_instance, account)
    assert current.startswith("$argon2id$")
    assert passwords._hasher.check_needs_rehash(current) is False
    assert PASSWORD not in current

    # A hash made with older (weaker) parameters is replaced at the next successful sign-in.
    old = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    with jwt_instance.runtime.db.write() as session:
        session.execute(update(User).where(User.id == account.id).values(password_hash=old))
    sign_in(jwt_instance, account)
    renewed = stored_hash(jwt_instance, account)
    assert renewed != old
    assert renewed.startswith("$argon2id$")
    assert passwords._hasher.check_needs_rehash(renewed) is False
    assert passwords.verify_password(renewed, PASSWORD)


def test_password_minimum_length(jwt_instance: Instance) -> None:
    with cheap_passwords():
        body = jwt_instance.data(REGISTER, {"email": "short@example.com", "password": "x" * 9})
        assert body["register"]["errors"] == [{"field": "password", "code": "VALIDATION"}]
        ctx = jwt_instance.runtime.operation_context(jwt_instance.runtime.principal_for_user("nobody"))
        with pytest.raises(OperatorError) as refused:
            account_ops.admin_create_user(ctx, "short@example.com", "x" * 9, "Short", False, system=True)
        assert refused.value.errors[0].field == "password"
        with jwt_instance.runtime.db.read() as session:
            assert session.scalars(select(User)).all() == []
        ok = jwt_instance.data(REGISTER, {"email": "long@example.com", "password": "x" * 10})
        assert ok["register"]["accessToken"]


class Clock:
    """utcnow for the account operators, moved by hand (throttle delays without sleeping)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def try_login(client: TestClient, email: str, password: str) -> tuple[str | None, int | None]:
    """(error code or None, retry-after seconds when RATE_LIMITED) of one login attempt."""
    response = client.post(
        "/graphql", json={"query": LOGIN, "variables": {"email": email, "password": password}}
    )
    payload = response.json()["data"]["login"]
    if not payload["errors"]:
        return None, None
    [error] = payload["errors"]
    wait = re.search(r"try again in (\d+) s", error["message"])
    return error["code"], int(wait.group(1)) if wait else None


def test_login_delays_grow_per_account_and_per_address(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(account_ops, "utcnow", clock)
    settings = mode_settings("jwt") | {"login_free_attempts": 2}
    with cheap_passwords(), open_instance(tmp_path, database_url, **settings) as instance:
        alice = make_user(instance.runtime, "alice@example.com")
        bob = make_user(instance.runtime, "bob@example.com")
        app = instance.client.app
        first = TestClient(app, client=("10.0.0.1", 40001))
        second = TestClient(app, client=("10.0.0.2", 40002))
        failures_before = metric(instance.client, "concord_auth_failures_total", reason="bad_credentials")

        # Two free attempts, then each failure locks the account (and the address) for longer.
        assert try_login(first, alice.email, "wrong password 1") == ("UNAUTHENTICATED", None)
        assert try_login(first, alice.email, "wrong password 2") == ("UNAUTHENTICATED", None)
        waits = []
        for attempt in range(3):
            assert try_login(first, alice.email, f"wrong again {attempt}")[0] == "UNAUTHENTICATED"
            code, wait = try_login(first, alice.email, PASSWORD)  # even the right password waits
            assert code == "RATE_LIMITED" and wait is not None
            waits.append(wait)
            clock.advance(wait + 1)
        assert waits[0] < waits[1] < waits[2], waits
        assert metric(instance.client, "concord_auth_failures_total", reason="bad_credentials") >= (
            failures_before + 5
        )

        # Locked per account: from another address too ...
        assert try_login(first, alice.email, "wrong again")[0] == "UNAUTHENTICATED"
        assert try_login(second, alice.email, PASSWORD)[0] == "RATE_LIMITED"
        # ... and per address: another account from the same address waits as well.
        assert try_login(first, bob.email, PASSWORD)[0] == "RATE_LIMITED"
        assert try_login(second, bob.email, PASSWORD) == (None, None)
        # Once the delay has passed, the right password works (and clears the account's count).
        clock.advance(3600)
        assert try_login(second, alice.email, PASSWORD) == (None, None)
        with instance.runtime.db.read() as session:
            keys = set(session.scalars(select(AuthThrottle.key)))
        assert "account:alice@example.com" not in keys
        assert "addr:10.0.0.1" in keys

        # IPv6 clients are counted per address, not per connection (whose port changes every time).
        for port in range(3):
            client = TestClient(app, client=("2001:db8::7", 50000 + port))
            assert try_login(client, f"nobody{port}@example.com", "wrong")[0] == "UNAUTHENTICATED"
        assert try_login(TestClient(app, client=("2001:db8::7", 50009)), bob.email, PASSWORD)[0] == (
            "RATE_LIMITED"
        )

        with instance.runtime.db.read() as session:
            refused = session.scalars(
                select(AuditEntry).where(AuditEntry.action == "auth.login", AuditEntry.outcome == "denied")
            ).all()
        assert len(refused) >= 10
        assert {row.client_addr.rsplit(":", 1)[0] for row in refused if row.client_addr} >= {
            "10.0.0.1",
            "10.0.0.2",
        }


def test_unknown_accounts_take_as_long_to_refuse_as_wrong_passwords(tmp_path: Path) -> None:
    settings = mode_settings("jwt") | {"login_free_attempts": 100}
    with open_instance(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", **settings) as instance:
        account = make_user(instance.runtime, "timing@example.com")  # production argon2 parameters
        try_login(instance.client, "warm-up@example.com", "wrong password")  # the decoy hash is made once

        def median(email: str) -> float:
            took = []
            for _ in range(3):
                start = time.perf_counter()
                assert try_login(instance.client, email, "wrong password")[0] == "UNAUTHENTICATED"
                took.append(time.perf_counter() - start)
            return statistics.median(took)

        unknown, wrong = median("nobody@example.com"), median(account.email)
        assert 0.5 < unknown / wrong < 2.0, (unknown, wrong)


# --- API keys ---------------------------------------------------------------------------------------


def test_api_keys_scopes_expiry_shown_once_and_revocation(jwt_instance: Instance) -> None:
    instance, runtime = jwt_instance, jwt_instance.runtime
    with cheap_passwords():
        owner = make_user(runtime, "keys@example.com")
        admin = make_user(runtime, "admin@example.com", admin=True)
        stranger = make_user(runtime, "stranger@example.com")
        token_headers = bearer(sign_in(instance, owner)["accessToken"])
        admin_headers = bearer(sign_in(instance, admin)["accessToken"])
        stranger_headers = bearer(sign_in(instance, stranger)["accessToken"])

    made = new_key(instance, token_headers, name="read only", scopes=["read"])
    read_key, read_id = made["token"], made["apiKey"]["id"]
    assert re.fullmatch(r"ck_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", read_key)
    assert made["apiKey"]["prefix"] == read_key[:12] and made["apiKey"]["scopes"] == ["read"]
    assert made["apiKey"]["lastUsedAt"] is None

    # Shown once: the list has the prefix only; the database keeps only the hash.
    listed = instance.data(API_KEYS, headers=token_headers)["apiKeys"]
    assert [k["prefix"] for k in listed] == [read_key[:12]]
    assert (
        read_key not in instance.client.post("/graphql", json={"query": API_KEYS}, headers=token_headers).text
    )
    with runtime.db.read() as session:
        row = session.get(ApiKey, key_of(read_id))
        assert row is not None and row.key_hash == hashlib.sha256(read_key.encode()).hexdigest()
        stored = " ".join(
            str(value)
            for model in (ApiKey, AuditEntry, Event)
            for entity in session.scalars(select(model))
            for value in vars(entity).values()
        )
    assert read_key not in stored and read_key[12:] not in stored

    # A read key reads, and cannot write anything, not even another key or a workspace.
    key_headers = bearer(read_key)
    assert who(instance, key_headers) == owner.email
    assert who(instance, {"X-API-Key": read_key}) == owner.email
    refused = instance.data(CREATE_DTU, {"title": "no"}, key_headers)["createDtu"]
    assert [e["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    refused = instance.data(
        'mutation { createApiKey(name: "more", scopes: ["read"]) { token errors { code } } }',
        headers=key_headers,
    )["createApiKey"]
    assert refused == {"token": None, "errors": [{"code": "FORBIDDEN"}]}
    refused = instance.data(
        'mutation { createWorkspace(name: "w") { workspace { id } errors { code } } }', headers=key_headers
    )["createWorkspace"]
    assert [e["code"] for e in refused["errors"]] == ["FORBIDDEN"]
    with runtime.db.read() as session:
        assert session.scalars(select(Dtu)).all() == []
        assert len(session.scalars(select(ApiKey)).all()) == 1
        assert len(session.scalars(select(Workspace)).all()) == 3  # the personal ones

    # lastUsedAt is kept.
    used = instance.data(API_KEYS, headers=token_headers)["apiKeys"][0]["lastUsedAt"]
    assert used is not None

    # A write key writes.
    write_key = new_key(instance, token_headers, name="writer")["token"]
    assert instance.mutate(CREATE_DTU, {"title": "yes"}, bearer(write_key))["dtu"]["id"]

    # Expiry: a key past its expiry is refused.
    expiring = new_key(instance, token_headers, name="soon", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert who(instance, bearer(expiring["token"])) == owner.email
    with runtime.db.write() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_of(expiring["apiKey"]["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert who(instance, bearer(expiring["token"])) is None
    past = instance.data(
        CREATE_KEY_AT, {"at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}, token_headers
    )["createApiKey"]
    assert [(e["field"], e["code"]) for e in past["errors"]] == [("expiresAt", "VALIDATION")]

    # Revocation takes effect on the very next request: by the owner ...
    assert instance.mutate(REVOKE_KEY, {"id": read_id}, token_headers)["apiKey"]["revokedAt"]
    assert who(instance, key_headers) is None
    # ... by an administrator (anyone's key), but not by someone else (who learns nothing).
    write_id = next(
        k["id"] for k in instance.data(API_KEYS, headers=token_headers)["apiKeys"] if k["name"] == "writer"
    )
    theirs = instance.data(REVOKE_KEY, {"id": write_id}, stranger_headers)["revokeApiKey"]
    unknown = instance.data(
        REVOKE_KEY, {"id": gid("ApiKey", "4b0c3c8e-0000-4000-8000-000000000000")}, stranger_headers
    )
    assert (
        theirs
        == unknown["revokeApiKey"]
        == {"apiKey": None, "errors": [{"code": "NOT_FOUND", "message": "API key not found"}]}
    )
    assert who(instance, bearer(write_key)) == owner.email
    assert instance.mutate(REVOKE_KEY, {"id": write_id}, admin_headers)["apiKey"]["revokedAt"]
    assert who(instance, bearer(write_key)) is None


CREATE_KEY_AT = """mutation At($at: DateTime!) {
  createApiKey(name: "late", expiresAt: $at) { token errors { field code } }
}"""


# --- tokens -----------------------------------------------------------------------------------------


def refresh(instance: Instance, token: str) -> dict[str, Any]:
    payload: dict[str, Any] = instance.data(REFRESH, {"token": token})["refreshToken"]
    return payload


def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(jwt_instance: Instance) -> None:
    instance = jwt_instance
    with cheap_passwords():
        account = make_user(instance.runtime, "rotate@example.com")
        first = sign_in(instance, account)
    assert who(instance, bearer(first["accessToken"])) == account.email

    second = refresh(instance, first["refreshToken"])
    assert second["errors"] == []
    assert second["refreshToken"] != first["refreshToken"]
    assert who(instance, bearer(second["accessToken"])) == account.email

    third = refresh(instance, second["refreshToken"])
    assert third["errors"] == []
    # Someone replays an old refresh token: the whole session ends, the newest tokens included.
    reused = refresh(instance, first["refreshToken"])
    assert reused["accessToken"] is None
    assert [e["code"] for e in reused["errors"]] == ["UNAUTHENTICATED"]
    for access in (first["accessToken"], second["accessToken"], third["accessToken"]):
        assert who(instance, bearer(access)) is None
    assert [e["code"] for e in refresh(instance, third["refreshToken"])["errors"]] == ["UNAUTHENTICATED"]
    for garbage in ("", "nonsense", "a.b", "x" * 300):
        assert [e["code"] for e in refresh(instance, garbage)["errors"]] == ["UNAUTHENTICATED"]


def test_logout_admin_revocation_and_disabling_take_effect_at_once(jwt_instance: Instance) -> None:
    instance = jwt_instance
    with cheap_passwords():
        account = make_user(instance.runtime, "person@example.com")
        admin = make_user(instance.runtime, "admin@example.com", admin=True)
        admin_headers = bearer(sign_in(instance, admin)["accessToken"])

        # Logout ends exactly the session of the token used.
        kept, ended = sign_in(instance, account), sign_in(instance, account)
        response = instance.client.post(
            "/graphql",
            json={"query": LOGOUT},
            headers={**bearer(ended["accessToken"]), "X-Request-ID": "bye-1"},
        )
        assert response.json()["data"]["logout"] == {"ok": True, "errors": []}
        assert who(instance, bearer(ended["accessToken"])) is None
        assert [e["code"] for e in refresh(instance, ended["refreshToken"])["errors"]] == ["UNAUTHENTICATED"]
        assert who(instance, bearer(kept["accessToken"])) == account.email
        assert [(r.action, r.outcome) for r in audit_rows(instance.runtime, "bye-1")] == [
            ("auth.logout", "allowed")
        ]
        # Logout needs a token (a key has no session).
        key = new_key(instance, bearer(kept["accessToken"]))["token"]
        body = instance.data(LOGOUT, headers=bearer(key))["logout"]
        assert [e["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]

        # An administrator ends every session and key of a person.
        done = instance.mutate(REVOKE_ALL, {"user": account.global_id}, admin_headers)
        assert done["count"] == 2  # the session still open and the key
        assert who(instance, bearer(kept["accessToken"])) is None
        assert who(instance, bearer(key)) is None
        assert [e["code"] for e in refresh(instance, kept["refreshToken"])["errors"]] == ["UNAUTHENTICATED"]

        # Disabling an account stops its tokens and keys at once, and sign-in.
        fresh = sign_in(instance, account)
        key = new_key(instance, bearer(fresh["accessToken"]))["token"]
        assert instance.mutate(DISABLE, {"user": account.global_id, "disabled": True}, admin_headers)[
            "user"
        ] == {"disabled": True}
        assert who(instance, bearer(fresh["accessToken"])) is None
        assert who(instance, bearer(key)) is None
        assert [e["code"] for e in refresh(instance, fresh["refreshToken"])["errors"]] == ["UNAUTHENTICATED"]
        login = instance.data(LOGIN, {"email": account.email, "password": PASSWORD})["login"]
        assert [e["code"] for e in login["errors"]] == ["UNAUTHENTICATED"]
        # Re-enabled, the person signs in again; disabling suspended the keys, revoking is separate.
        instance.mutate(DISABLE, {"user": account.global_id, "disabled": False}, admin_headers)
        assert who(instance, bearer(sign_in(instance, account)["accessToken"])) == account.email
        assert who(instance, bearer(key)) == account.email
        # Only administrators do any of this.
        mine = bearer(sign_in(instance, account)["accessToken"])
        for query, variables in (
            (REVOKE_ALL, {"user": admin.global_id}),
            (DISABLE, {"user": admin.global_id, "disabled": True}),
        ):
            payload = next(iter(instance.data(query, variables, mine).values()))
            assert [e["code"] for e in payload["errors"]] == ["FORBIDDEN"]
        assert who(instance, admin_headers) == admin.email
