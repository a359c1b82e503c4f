"""The authoritative metadata tables (plan A1), as typed SQLAlchemy 2 models.

Every table that a migration creates is declared here; `migrations/` is generated from and checked
against this metadata.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from concord_core.db.types import JsonDocument, UtcDateTime, new_id, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = String(36)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JsonDocument, list[Any]: JsonDocument, datetime: UtcDateTime}


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- accounts -------------------------------------------------------------------------------------


class User(Timestamps, Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_at: Mapped[datetime | None]


class AuthSession(Base):
    """A login session; tokens are tied to one, so revoking it ends them at once."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    refresh_token_hash: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    client_addr: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Workspace(Timestamps, Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    personal_owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), unique=True)


class Membership(Base):
    __tablename__ = "memberships"

    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # owner | editor | viewer
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- knowledge ------------------------------------------------------------------------------------


class DtuColumns:
    """The state of a DTU that every version records in full."""

    title: Mapped[str] = mapped_column(String(500))
    human: Mapped[dict[str, Any]] = mapped_column(default=dict)
    core: Mapped[dict[str, Any]] = mapped_column(default=dict)
    machine: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    tier: Mapped[str] = mapped_column(String(16))
    dtu_type: Mapped[str] = mapped_column(String(64))
    visibility: Mapped[str] = mapped_column(String(16))
    citation_mode: Mapped[str] = mapped_column(String(16))
    citations: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | merged
    merged_into_id: Mapped[str | None] = mapped_column(Id)
    content_hash: Mapped[str] = mapped_column(String(64))


#: The columns the browse access predicate reads (concord_core.auth.policy.readable_filter).
BROWSE_ACCESS_COLUMNS = ("visibility", "workspace_id", "owner_id")


def browse_indexes(table: str, sort_keys: tuple[str, ...], counted: tuple[str, ...] | None) -> list[Index]:
    """The indexes Global reads (migration 0005):

    * per sort order, (sort key, id, the access columns): a keyset page, the first or a thousand deep, is a
      walk of this index alone with the access predicate checked on its entries; only the page's own rows
      are then read from the table;
    * with ``counted`` (the columns of the source's counted facets), (id, the access columns, those
      columns): a facet counted over the rows with some tag probes this index by id, never the table.
    """
    indexes = [Index(f"ix_{table}_by_{key}", key, "id", *BROWSE_ACCESS_COLUMNS) for key in sort_keys]
    if counted is not None:
        indexes.append(Index(f"ix_{table}_facets", "id", *BROWSE_ACCESS_COLUMNS, *counted))
    return indexes


class Dtu(DtuColumns, Timestamps, Base):
    __tablename__ = "dtus"
    __table_args__ = (
        Index("ix_dtus_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_dtus_content_hash", "workspace_id", "content_hash"),
        *browse_indexes("dtus", ("created_at", "updated_at", "title"), ("tier", "dtu_type", "status")),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class DtuVersion(DtuColumns, Base):
    """A full copy of a DTU as it stood after one change; history is the list of these."""

    __tablename__ = "dtu_versions"

    dtu_id: Mapped[str] = mapped_column(ForeignKey("dtus.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id)
    owner_id: Mapped[str] = mapped_column(Id)
    actor_id: Mapped[str | None] = mapped_column(Id)
    change: Mapped[str] = mapped_column(String(32))  # created | edited | merged | published ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DtuCitation(Base):
    __tablename__ = "dtu_citations"

    citing_id: Mapped[str] = mapped_column(ForeignKey("dtus.id"), primary_key=True)
    cited_id: Mapped[str] = mapped_column(ForeignKey("dtus.id"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- artifacts ------------------------------------------------------------------------------------


class Artifact(Timestamps, Base):
    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_workspace_created", "workspace_id", "created_at", "id"),
        *browse_indexes("artifacts", ("created_at", "updated_at", "name"), ("kind",)),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(32))  # audio | image | video | document | export | other
    visibility: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    current_version: Mapped[int] = mapped_column(Integer, default=0)


class ArtifactVersion(Base):
    __tablename__ = "artifact_versions"

    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(500))
    actor_id: Mapped[str | None] = mapped_column(Id)
    job_id: Mapped[str | None] = mapped_column(Id)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- lenses ---------------------------------------------------------------------------------------


class LensItem(Timestamps, Base):
    __tablename__ = "lens_items"
    __table_args__ = (
        UniqueConstraint("lens_id", "source_kind", "source_id", name="uq_lens_items_source"),
        Index("ix_lens_items_lens_type", "lens_id", "item_type", "created_at", "id"),
        *browse_indexes("lens_items", ("created_at", "updated_at"), None),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    lens_id: Mapped[str] = mapped_column(String(100))
    item_type: Mapped[str] = mapped_column(String(100))
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    visibility: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32), default="active")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source_kind: Mapped[str | None] = mapped_column(String(32))  # dtu | artifact, for synced items
    source_id: Mapped[str | None] = mapped_column(Id)
    version: Mapped[int] = mapped_column(Integer, default=1)


# --- jobs -----------------------------------------------------------------------------------------


class Job(Timestamps, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key", name="uq_jobs_idempotency"),
        Index("ix_jobs_claim", "status", "run_after"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    job_type: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(64), default="default")
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=600)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str | None] = mapped_column(Text)
    output: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_at: Mapped[datetime | None]


class JobRun(Base):
    __tablename__ = "job_runs"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class JobArtifact(Base):
    __tablename__ = "job_artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    step_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    artifact_version: Mapped[int] = mapped_column(Integer)


# --- event log and audit --------------------------------------------------------------------------


class EventContent:
    """The columns of an event's content besides its type and workspace: shared by the log and the outbox
    (which declare those two themselves: the log indexes them)."""

    actor_id: Mapped[str | None] = mapped_column(Id)
    request_id: Mapped[str | None] = mapped_column(String(128))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(EventContent, Base):
    """One entry of the append-only, hash-chained event log. ``seq`` is the order in which events become
    visible in the log, consistent with causality (see :mod:`concord_core.events.log`)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_entity", "entity_type", "entity_id"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    workspace_id: Mapped[str | None] = mapped_column(Id, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class EventOutbox(EventContent, Base):
    """Events committed by their transactions but not yet sealed into the log (PostgreSQL only).

    A transaction that finds the chain busy stages its event here, under no lock on the chain, so such
    transactions commit concurrently; sealing (``concord_seal_events``, migration 0007) moves committed
    rows into ``events`` in ``id`` order, numbering and hashing them; ``id`` only orders the rows. The
    event's hash will be SHA-256 of the previous hash, ``hashed_before_seq``, its sequence number and
    ``hashed_after_seq``: the text that :func:`concord_core.events.log.event_hash` hashes, either side of
    the sequence number."""

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    workspace_id: Mapped[str | None] = mapped_column(Id)
    hashed_before_seq: Mapped[bytes] = mapped_column(LargeBinary)
    hashed_after_seq: Mapped[bytes] = mapped_column(LargeBinary)


class EventHead(Base):
    """The single row that serializes appends: the last sequence number and its hash."""

    __tablename__ = "event_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[str | None] = mapped_column(Id, index=True)
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(100))
    workspace_id: Mapped[str | None] = mapped_column(Id)
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # allowed | denied | failed
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuthThrottle(Base):
    """Failed sign-in attempts per account or client address, and until when further ones wait."""

    __tablename__ = "auth_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)  # "account:<email>" | "addr:<ip>"
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]


# --- workflows ------------------------------------------------------------------------------------


class Workflow(Timestamps, Base):
    """A resumable chain of steps (plan D2): each ``job`` step runs as a job whose result is recorded before
    the next step starts; a ``review`` step waits for a person to approve or reject it."""

    __tablename__ = "workflows"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key", name="uq_workflows_idempotency"),
        Index("ix_workflows_workspace_created", "workspace_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    workflow_type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="running")
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    step_count: Mapped[int] = mapped_column(Integer)
    output: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]


class WorkflowStep(Base):
    __tablename__ = "workflow_steps"

    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # job | review
    job_type: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    output: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str | None] = mapped_column(Text)


# --- browse indexes (derived; rebuilt by `concord browse rebuild`) --------------------------------------


#: What a tag posting carries besides its key: the row's sort keys (by the browsable's sort names
#: created, updated, title), its access columns, and its values of the single-valued facets (by facet
#: name: a DTU's tier, type and status, an artifact's type; None where the browsable has no such facet).
POSTING_SORTS = {"created": "created_at", "updated": "updated_at", "title": "title"}
POSTING_FACETS = ("tier", "type", "status")


class EntityTag(Base):
    """One tag of one browsable row: a posting. Tag filters and tag facets use an index on both databases,
    and since a posting carries its row's sort keys, access columns and facet values (migration 0008), a
    page filtered by one tag reads that tag's postings in sort order (index only) and a facet filtered by
    one tag counts them, without visiting the rows."""

    __tablename__ = "entity_tags"
    __table_args__ = (
        Index(
            "ix_entity_tags_by_created_at",
            "source",
            "tag",
            "created_at",
            "entity_id",
            *BROWSE_ACCESS_COLUMNS,
            *POSTING_FACETS,
        ),
        Index(
            "ix_entity_tags_by_updated_at", "source", "tag", "updated_at", "entity_id", *BROWSE_ACCESS_COLUMNS
        ),
        Index("ix_entity_tags_by_title", "source", "tag", "title", "entity_id", *BROWSE_ACCESS_COLUMNS),
    )

    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # the browsable: dtus, artifacts, ...
    entity_id: Mapped[str] = mapped_column(Id, primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    title: Mapped[str] = mapped_column(String(500))
    visibility: Mapped[str] = mapped_column(String(16))
    workspace_id: Mapped[str] = mapped_column(Id)
    owner_id: Mapped[str] = mapped_column(Id)
    tier: Mapped[str | None] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))


class BrowseCount(Base):
    """How many rows of a browsable fall in one access bucket (visibility, workspace, owner) and have one
    facet value; facet "" counts the rows themselves. Kept in the write transaction, so unfiltered totals
    and facets are sums over a few buckets instead of scans over millions of rows."""

    __tablename__ = "browse_counts"
    __table_args__ = (
        Index("ix_browse_counts_lookup", "source", "facet", "visibility", "workspace_id", "owner_id"),
    )

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    facet: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    visibility: Mapped[str] = mapped_column(String(16), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Id, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class BrowseTagCount(Base):
    """The postings of one tag counted by what they carry besides their row and sort keys: how many rows
    of a browsable with ``tag`` fall in one access bucket (visibility, workspace, owner) with one
    combination of tier, type and status ("" where the browsable has no such facet). A total or facet of
    a request that requires one tag and otherwise filters only on these columns is then a sum over a few
    counters, however many rows carry the tag (migration 0009). Kept in the same transaction as
    entity_tags."""

    __tablename__ = "browse_tag_counts"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    visibility: Mapped[str] = mapped_column(String(16), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Id, primary_key=True)
    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class BrowseScopeCount(Base):
    """browse_counts of the tags facet summed by access scope (public; an owner's rows that are not
    public; a workspace's rows its members list; both of the last two) instead of by bucket, so a caller's
    tags facet reads a few counters per tag (see concord_core.browse.scopes). Kept in the same
    transaction as browse_counts."""

    __tablename__ = "browse_scope_counts"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    facet: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
