"""Helpers the tests share (importable because pyproject.toml puts this folder on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from concord_core.api.gql.context import Context
from concord_core.api.gql.schema import build_schema
from concord_core.api.runtime import Runtime
from concord_core.auth.principal import Principal
from concord_core.settings import Settings, load_settings


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{tmp_path / 'concord.db'}",
        "storage_url": str(tmp_path / "objects"),
        "log_json": True,
    }
    values.update(overrides)
    return load_settings(**values)


class GraphQL:
    """Posts GraphQL operations as the instance's local owner; ``run`` fails on top-level errors."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def run(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body["errors"]
        data: dict[str, Any] = body["data"]
        return data


def run_as(runtime: Runtime, principal: Principal, query: str, **variables: Any) -> dict[str, Any]:
    """Execute an operation as ``principal`` (the HTTP API in public mode always acts as the owner)."""
    result = asyncio.run(
        build_schema(runtime.lenses).execute(
            query, variable_values=variables, context_value=Context(runtime, principal)
        )
    )
    assert not result.errors, result.errors
    assert result.data is not None
    return result.data
