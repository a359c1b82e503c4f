"""The deployment files, checked as files: docker-compose.yml, Dockerfile and .dockerignore.

No Docker engine runs in CI, so these tests hold the files to what the engine would need: pinned images,
health checks, dependencies on services that exist, and ``CONCORD_*`` values that the settings accept and
that point at the services defined beside them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from concord_core.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; "$$" is a literal "$".
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# A MinIO release tag: RELEASE.2024-10-13T13-34-11Z.
_MINIO_RELEASE = re.compile(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ")
# Exact releases are major.minor for PostgreSQL, major.minor.patch for everything else we use.
_VERSION_PARTS = {"postgres": 2}
_HEALTH_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def interpolate(value: str) -> str:
    """Resolve compose variables to their defaults (what ``docker compose up`` uses with no .env)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        op, arg = match.group("op"), match.group("arg")
        if op in ("-", ":-"):
            return str(arg)
        pytest.fail(f"variable {match.group('name')} has no default in docker-compose.yml")

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(name): interpolate(str(value)) for name, value in raw.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait on to *finish*: they run once and exit, so they have no health check."""
    return {
        name
        for service in services.values()
        for name, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run Concord itself (built from this repository)."""
    return {name: service for name, service in services.items() if "build" in service}


def concord_settings(service: dict[str, Any]) -> Settings:
    values = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in environment(service).items()
        if name.startswith(ENV_PREFIX)
    }
    return load_settings(**values)


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@digest]`` → (repo, tag, digest); a registry port is not mistaken for a tag."""
    reference, _, digest = reference.partition("@")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :], digest or None
    return reference, None, digest or None


def assert_pinned(reference: str) -> None:
    repo, tag, digest = split_image(reference)
    if digest:
        return
    assert tag, f"{reference}: no tag, so it floats to latest"
    assert tag != "latest", f"{reference}: 'latest' floats"
    if repo.endswith(("minio/minio", "minio/mc")):
        assert _MINIO_RELEASE.fullmatch(tag), f"{reference}: pin a RELEASE.<timestamp> tag"
        return
    version = re.match(r"\d+(?:\.\d+)*", tag)
    assert version, f"{reference}: the tag names no version"
    needed = _VERSION_PARTS.get(repo.rsplit("/", 1)[-1], 3)
    parts = version.group(0).split(".")
    assert len(parts) >= needed, f"{reference}: {version.group(0)} floats; pin an exact release"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def console_script() -> str:
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert scripts.get("concord") == "concord_core.cli.main:main"
    return "concord"


# --- images ------------------------------------------------------------------------------------------


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            # Built here: the tag names this build, and must not pretend to be a pulled "latest".
            assert split_image(service.get("image", f"{name}:x"))[1] != "latest"
            continue
        assert "image" in service, f"{name}: neither image nor build"
        assert_pinned(service["image"])


def test_dockerfile_base_images_are_pinned_python_311_slim() -> None:
    bases = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert bases
    for base in bases:
        assert_pinned(base)
        repo, tag, _ = split_image(base)
        assert repo in ("python", "docker.io/library/python")
        assert tag and re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), base


@pytest.mark.parametrize(
    "reference",
    [
        "postgres",
        "postgres:latest",
        "postgres:16",
        "postgres:16-alpine",
        "redis:7-alpine",
        "redis:7.4-alpine",
    ],
)
def test_pin_check_rejects_floating_tags(reference: str) -> None:
    with pytest.raises(AssertionError):
        assert_pinned(reference)


# --- health and dependencies -------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    finished = one_shots(services)
    assert finished == {"createbucket", "migrate"}
    for name, service in services.items():
        if name in finished:
            assert service.get("restart", "no") == "no", f"{name} runs once; it must not restart"
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"


def test_depends_on_names_existing_services_with_valid_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in _HEALTH_CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}, which has no check"


def test_app_services_wait_for_everything_they_use(services: dict[str, dict[str, Any]]) -> None:
    apps = app_services(services)
    assert set(apps) == {"api", "worker", "migrate"}
    for name in ("api", "worker"):
        assert depends_on(apps[name]) == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "minio": "service_healthy",
            "createbucket": "service_completed_successfully",
            "migrate": "service_completed_successfully",
        }, name
    assert depends_on(apps["migrate"]) == {"postgres": "service_healthy"}
    assert apps["migrate"]["command"] == ["concord", "migrate"]
    assert depends_on(services["createbucket"]) == {"minio": "service_healthy"}


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source}"
    for stateful in ("postgres", "redis", "minio"):
        assert services[stateful].get("volumes"), f"{stateful} would lose its data with the container"


# --- settings ----------------------------------------------------------------------------------------


def test_every_concord_variable_is_a_settings_field(services: dict[str, dict[str, Any]]) -> None:
    dockerfile_env = " ".join(
        arguments for keyword, arguments in dockerfile_instructions() if keyword == "ENV"
    )
    names = set(re.findall(r"\b(CONCORD_[A-Z0-9_]+)=", dockerfile_env))
    for service in services.values():
        names |= {name for name in environment(service) if name.startswith(ENV_PREFIX)}
    assert names
    unknown = sorted(
        name for name in names if name.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields
    )
    assert not unknown, f"not settings fields: {unknown}"


def test_concord_values_pass_settings_validation(services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services(services).items():
        settings = concord_settings(service)
        assert settings.environment == "production", name
        assert settings.auth_mode == "apikey", name
        assert not settings.is_sqlite, name
        assert settings.redis_url, name
        assert urlparse(settings.resolved_storage_url).scheme == "s3", name
        assert settings.s3_addressing_style == "path", name
    assert concord_settings(services["api"]).host == "0.0.0.0"


def test_api_and_worker_share_one_configuration(services: dict[str, dict[str, Any]]) -> None:
    api, worker = concord_settings(services["api"]), concord_settings(services["worker"])
    for field in ("database_url", "redis_url", "storage_url", "s3_endpoint_url", "s3_access_key_id"):
        assert getattr(api, field) == getattr(worker, field), field


def test_settings_point_at_services_defined_here(services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services(services).items():
        settings = concord_settings(service)
        database = urlparse(settings.resolved_database_url)
        redis = urlparse(settings.redis_url or "")
        s3 = urlparse(settings.s3_endpoint_url or "")
        used = [(database, "postgres", 5432)]
        if name != "migrate":  # it only touches the database
            used += [(redis, "redis", 6379), (s3, "minio", 9000)]
        for url, service_name, port in used:
            assert url.hostname == service_name, f"{name}: {url.geturl()} is not the {service_name} service"
            assert url.hostname in services
            assert (url.port or port) == port
            assert url.hostname in depends_on(service)


def test_credentials_and_bucket_agree_across_services(services: dict[str, dict[str, Any]]) -> None:
    settings = concord_settings(services["api"])
    postgres = environment(services["postgres"])
    database = urlparse(settings.resolved_database_url)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]

    minio = environment(services["minio"])
    assert settings.s3_access_key_id == minio["MINIO_ROOT_USER"]
    assert settings.s3_secret_access_key == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses to start with a shorter one

    bucket = urlparse(settings.resolved_storage_url).netloc
    create = services["createbucket"]
    alias = urlparse(environment(create)["MC_HOST_local"])
    assert (alias.hostname, alias.port) == ("minio", 9000)
    assert (alias.username, alias.password) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert create["command"] == ["mb", "--ignore-existing", f"local/{bucket}"]


def test_interpolation_defaults_are_used() -> None:
    assert interpolate("a${X:-b}c${Y-d}$$") == "abcd$"


# --- commands ----------------------------------------------------------------------------------------


def test_commands_use_the_console_script(services: dict[str, dict[str, Any]]) -> None:
    script = console_script()
    assert services["api"]["command"] == [script, "serve"]
    assert services["worker"]["command"] == [script, "worker"]
    commands = [exec_form(arguments) for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]
    assert commands == [[script, "serve"]]
    assert not [keyword for keyword, _ in dockerfile_instructions() if keyword == "ENTRYPOINT"]


def test_api_port_and_healthcheck_agree(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    port = concord_settings(api).port
    assert f"{port}:{port}" in api["ports"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe


def test_api_keeps_backups_on_a_named_volume_it_can_write(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    image_env = " ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "ENV")
    data_dir = re.search(r"\bCONCORD_DATA_DIR=(\S+)", image_env)
    assert data_dir, "the image sets CONCORD_DATA_DIR"
    api = concord_settings(services["api"])
    backup_dir = str(api.backup_dir or PurePosixPath(data_dir.group(1)) / "backups")
    mounts = dict(volume.split(":", 1)[::-1] for volume in services["api"].get("volumes") or [])
    assert mounts.get(backup_dir) in set(compose.get("volumes") or {}), f"no named volume at {backup_dir}"
    # A named volume takes the ownership of the image's directory: it must exist there, owned by the user.
    user = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"][-1]
    assert any(
        keyword == "RUN" and f"install -d -o {user} -g {user} {backup_dir}" in arguments
        for keyword, arguments in dockerfile_instructions()
    )


# --- Dockerfile --------------------------------------------------------------------------------------


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


def test_dockerfile_healthcheck_uses_python_against_healthz() -> None:
    (check,) = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    command = exec_form(check[check.index("CMD") + len("CMD") :].strip())
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {
        pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied: set[str] = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied |= {source.rstrip("/") for source in arguments.split()[:-1]}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    assert "RUN /opt/concord/bin/pip install ." in {f"{k} {a}" for k, a in dockerfile_instructions()}

    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), f".dockerignore drops {path}"
