"""schema.graphql is what `concord schema export` writes; `concord schema check` fails when it drifts."""

from __future__ import annotations

from pathlib import Path

import pytest

from concord_core.cli.main import main

COMMITTED = Path(__file__).resolve().parent.parent / "schema.graphql"


def test_committed_schema_is_what_export_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "schema.graphql"
    assert main(["schema", "export", "--file", str(exported)]) == 0
    assert exported.read_text("utf-8") == COMMITTED.read_text("utf-8"), (
        "schema.graphql is stale: run `concord schema export` and commit it"
    )
    assert main(["schema", "check", "--file", str(COMMITTED)]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_check_detects_a_modified_or_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "schema.graphql"
    assert main(["schema", "export", "--file", str(exported)]) == 0
    capsys.readouterr()

    modified = tmp_path / "modified.graphql"
    modified.write_text(
        exported.read_text("utf-8").replace("serverInfo: ServerInfo!", "serverInfo: ServerInfo")
    )
    assert main(["schema", "check", "--file", str(modified)]) == 1
    captured = capsys.readouterr()
    assert "-  serverInfo: ServerInfo" in captured.out and "+  serverInfo: ServerInfo!" in captured.out
    assert "is stale" in captured.err

    assert main(["schema", "check", "--file", str(tmp_path / "missing.graphql")]) == 1
