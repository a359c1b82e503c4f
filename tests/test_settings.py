"""Settings: a bad CONCORD_* value stops start-up with one message naming the variable; nothing falls back
silently to a default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from concord_core.cli.main import main
from concord_core.settings import AuthMode, SettingsError, load_settings

CONCORD = str(Path(sys.executable).with_name("concord"))


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_DATA_DIR"] = str(tmp_path / "var")
    env.update(values)
    return env


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONCORD_PORT", "abc"),
        ("CONCORD_DATABASE_URL", "mysql://x"),
        ("CONCORD_STORAGE_URL", "ftp://x"),
        ("CONCORD_AUTH_MODE", "bogus"),
    ],
)
def test_serve_refuses_a_bad_value(tmp_path: Path, variable: str, value: str) -> None:
    result = subprocess.run(
        [CONCORD, "serve"],
        env=clean_env(tmp_path, **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one message, no traceback
    assert lines[0].startswith("concord: invalid configuration: ")
    assert variable in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "var").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONCORD_PORT", "0"),
        ("CONCORD_PORT", "70000"),
        ("CONCORD_PORT", ""),
        ("CONCORD_MAX_UPLOAD_BYTES", "0"),
        ("CONCORD_MAX_UPLOAD_BYTES", "5GB"),
        ("CONCORD_REDIS_URL", "http://localhost:6379"),
        ("CONCORD_LOG_LEVEL", "LOUD"),
        ("CONCORD_ENVIRONMENT", "staging"),
        ("CONCORD_STORAGE_URL", "s3://"),
        ("CONCORD_S3_ADDRESSING_STYLE", "sideways"),
        ("CONCORD_LOG_JSON", "maybe"),
    ],
)
def test_every_command_refuses_bad_values(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv(variable, value)
    for argv in (["serve"], ["migrate"], ["db", "status"], ["events", "verify"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert variable in err
    assert not (tmp_path / "var").exists()


def test_two_bad_values_are_named_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_PORT", "abc")
    monkeypatch.setenv("CONCORD_AUTH_MODE", "bogus")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "CONCORD_PORT" in message and "CONCORD_AUTH_MODE" in message
    assert "\n" not in message


def test_good_values_are_read_and_normalised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONCORD_PORT", "9123")
    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://concord@db:5432/concord")
    monkeypatch.setenv("CONCORD_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("CONCORD_AUTH_MODE", "apikey")
    monkeypatch.setenv("CONCORD_LOG_LEVEL", "debug")
    monkeypatch.setenv("CONCORD_MAX_UPLOAD_BYTES", "1048576")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.database_url == "postgresql+psycopg://concord@db:5432/concord"
    assert not settings.is_sqlite
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.auth_mode is AuthMode.APIKEY
    assert settings.log_level == "DEBUG"
    assert settings.max_upload_bytes == 1048576


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CONCORD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'var' / 'concord.db').resolve()}"
    assert settings.resolved_storage_url == str((tmp_path / "var" / "objects").resolve())
    assert settings.redis_url is None
    assert settings.auth_mode is AuthMode.PUBLIC
