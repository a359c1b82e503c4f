"""Settings: every configuration value, read once from ``CONCORD_*`` environment variables.

A bad value stops start-up with one message naming the variable (see :func:`load_settings`); nothing falls
back silently to a default when a value was given.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CONCORD_"


class AuthMode(enum.StrEnum):
    PUBLIC = "public"
    APIKEY = "apikey"
    JWT = "jwt"


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """The whole configuration. Field ``x`` is set by the variable ``CONCORD_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(Path("./var"), description="Where the embedded defaults keep their files.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    storage_url: str = Field(
        "", description="Object store: a local directory (path or file://) or s3://bucket/prefix."
    )
    backup_dir: Path | None = Field(
        None, description="Where `concord backup` keeps backups; unset means data_dir/backups."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000.")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: str = Field("auto", description="auto, path (MinIO) or virtual.")
    redis_url: str | None = Field(None, description="Redis for RQ job dispatch; unset runs jobs in-process.")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    environment: Environment = Environment.DEVELOPMENT
    auth_mode: AuthMode = AuthMode.PUBLIC
    max_upload_bytes: int = Field(5 * 1024**3, gt=0, description="Largest accepted upload, in bytes.")
    log_level: str = "INFO"
    log_json: bool = True
    skip_invalid_lenses: bool = False

    job_threads: int = Field(
        4, ge=0, le=64, description="In-process job runner threads (used without Redis); 0 runs no jobs."
    )
    job_lease_seconds: float = Field(
        15.0,
        ge=0.5,
        le=3600,
        description="A running job's lease; a worker silent this long is presumed dead.",
    )
    job_retry_base_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Delay before a failed job's first retry; doubles each attempt (jittered).",
    )
    job_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often the reaper, relay and live-update fallback look at the jobs table.",
    )
    redis_namespace: str = Field(
        "concord",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of Concord's RQ queues and channels.",
    )

    registration: bool = Field(False, description="Whether people may sign up (jwt mode).")
    allow_public_bind: bool = Field(False, description="Let public mode listen on a non-loopback address.")
    jwt_secret: str | None = Field(None, description="HMAC key for tokens; required in jwt mode (32+ chars).")
    jwt_issuer: str = "concord"
    jwt_audience: str = "concord-api"
    access_token_seconds: int = Field(900, ge=30, le=86400)
    refresh_token_seconds: int = Field(30 * 86400, ge=300, le=365 * 86400)
    password_min_length: int = Field(10, ge=8, le=128)
    login_free_attempts: int = Field(5, ge=1, le=100, description="Failures before delays start.")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            # One driver everywhere: psycopg 3.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not value:
            return value
        scheme = urlparse(value).scheme
        if scheme == "s3":
            if not urlparse(value).netloc:
                raise ValueError("s3 URLs need a bucket: s3://bucket/prefix")
        elif scheme not in ("", "file"):
            raise ValueError("must be a local path, file:///path or s3://bucket/prefix")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and urlparse(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value or None

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("s3_addressing_style")
    @classmethod
    def _addressing(cls, value: str) -> str:
        if value not in ("auto", "path", "virtual"):
            raise ValueError("must be auto, path or virtual")
        return value

    @model_validator(mode="after")
    def _jwt_needs_secret(self) -> Settings:
        if self.auth_mode is AuthMode.JWT and (not self.jwt_secret or len(self.jwt_secret) < 32):
            raise ValueError("CONCORD_JWT_SECRET must be set to at least 32 characters in jwt mode")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'concord.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return str((self.data_dir / "objects").resolve())

    @property
    def resolved_backup_dir(self) -> Path:
        return (self.backup_dir or self.data_dir / "backups").resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


class SettingsError(Exception):
    """A configuration value is wrong; the message names the variable."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if error["loc"]:
                problems.append(f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: {error['msg']}")
            else:  # a rule across fields; its message names the variables
                problems.append(str(error["msg"]).removeprefix("Value error, "))
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own with :func:`load_settings`)."""
    return load_settings()
