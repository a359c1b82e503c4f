"""Lenses at start-up: `concord serve` refuses an invalid installed lens and prints every problem; told
to skip it, it serves without it, lists it as failed in the `lenses` query and counts it in /metrics.

The invalid lens is installed without pip: a temporary ``*.dist-info`` folder on PYTHONPATH whose
entry_points.txt points at fixtures.lens_plugins:THREE_PROBLEMS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import GraphQL
from fastapi.testclient import TestClient
from fixtures.lens_plugins import TESTS_DIR, manifest, write_dist_info
from procs import free_port, run_cli, server_env, start_server

from concord_core.plugins.manifest import manifest_schema, validate_manifest

LENSES = """
query Lenses {
  lenses { lensId name version category status source manifest problems { path code message } }
}"""


@pytest.fixture
def broken_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `concord` process that has the invalid fixture lens installed (SQLite)."""
    site = tmp_path / "site"
    write_dist_info(site, {"fixture-three": "fixtures.lens_plugins:THREE_PROBLEMS"})
    env = server_env(tmp_path / "data", f"sqlite:///{tmp_path / 'concord.db'}", log_level="WARNING")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


def expected_problems() -> list[str]:
    problems = [str(problem) for problem in validate_manifest(manifest("three-problems"))]
    assert len(problems) == 3
    return problems


def test_serve_refuses_an_invalid_lens_and_prints_every_problem(broken_env: dict[str, str]) -> None:
    done = run_cli(broken_env, "serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    for problem in expected_problems():
        assert problem in done.stderr
    assert "CONCORD_SKIP_INVALID_LENSES=1" in done.stderr


def test_serve_skips_an_invalid_lens_when_told(broken_env: dict[str, str], tmp_path: Path) -> None:
    env = {**broken_env, "CONCORD_SKIP_INVALID_LENSES": "1"}
    with start_server(env, tmp_path / "server.log") as server:
        response = httpx.post(server.graphql_url, json={"query": LENSES}, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body
        lenses = {lens["lensId"]: lens for lens in body["data"]["lenses"]}
        failed = lenses["fixture-three-problems"]
        assert (failed["status"], failed["manifest"]) == ("failed", None)
        assert failed["source"] == "fixture-three = fixtures.lens_plugins:THREE_PROBLEMS"
        shown = [
            f"fixture-three-problems: {p['path']}: {p['code']}: {p['message']}" for p in failed["problems"]
        ]
        assert shown == expected_problems()
        assert lenses["knowledge"]["status"] == "active"

        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "concord_lenses_failed 1.0" in metrics.splitlines()
        server.stop()
    assert server.log().count("lens skipped") == 3


def test_lenses_query_lists_the_knowledge_lens_with_its_manifest(gql: GraphQL) -> None:
    lenses = {lens["lensId"]: lens for lens in gql.run(LENSES)["lenses"]}
    knowledge = lenses["knowledge"]
    shipped = json.loads(
        (Path(__file__).resolve().parent.parent / "lenses/knowledge/manifest.json").read_text()
    )
    assert knowledge["status"] == "active"
    assert knowledge["problems"] == []
    assert (knowledge["name"], knowledge["version"], knowledge["category"]) == (
        "Knowledge",
        "1.0.0",
        "knowledge",
    )
    assert knowledge["source"] == "knowledge = lenses.knowledge.plugin"
    assert knowledge["manifest"] == shipped
    assert all(lens["status"] == "active" for lens in lenses.values())


def test_manifest_schema_and_failed_lens_metric_are_served(client: TestClient) -> None:
    response = client.get("/api/lens-manifest.schema.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/schema+json")
    assert response.json() == manifest_schema()
    assert "concord_lenses_failed 0.0" in client.get("/metrics").text.splitlines()
