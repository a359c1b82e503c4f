"""event outbox: events committed but not yet sealed into the hash chain

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

On PostgreSQL a transaction that finds the chain busy stages its event in ``event_outbox`` instead of
waiting for it, so such transactions commit (and fsync) concurrently; ``concord_seal_events`` moves
committed rows into ``events`` in ``id`` order, with their sequence numbers and hashes (the protocol and
why it keeps causal order: ``concord_core.events.log``). SQLite never uses the table (it serializes writers
itself) but has it, so the models are the same on both.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import concord_core.db.types

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# concord_seal_events(staged): seal every committed outbox row, in id order, unless ``staged`` is given and
# none of those ids is still in the outbox (a sealer has committed them already: nothing to wait for).
# Returns how many rows it sealed. One statement for the client; run it in a transaction of its own
# (autocommit). It takes the chain lock (the transaction-level advisory lock 0x636F6E636F7264, "concord"),
# and VOLATILE functions under READ COMMITTED take a new snapshot per statement, so everything after the
# lock sees what earlier sealers committed. The head row is locked only once there is something to seal,
# so finding nothing takes no transaction id and writes no WAL. The hash is the one
# concord_core.events.log.event_hash computes: sha256(prev_hash, hashed_before_seq, seq, hashed_after_seq).
SEAL_EVENTS = """
CREATE FUNCTION concord_seal_events(staged bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_seq bigint;
    head_hash text;
    next_hash text;
    sealed integer := 0;
    pending record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM event_outbox WHERE staged IS NULL OR id = ANY (staged)) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(x'636F6E636F7264'::bigint);
    FOR pending IN SELECT * FROM event_outbox ORDER BY id LOOP
        IF head_seq IS NULL THEN
            SELECT seq, hash INTO head_seq, head_hash FROM event_head WHERE id = 1 FOR UPDATE;
        END IF;
        head_seq := head_seq + 1;
        next_hash := encode(sha256(convert_to(head_hash, 'UTF8') || pending.hashed_before_seq
                                   || convert_to(head_seq::text, 'UTF8') || pending.hashed_after_seq), 'hex');
        INSERT INTO events (seq, event_type, workspace_id, actor_id, request_id, entity_type, entity_id,
                            payload, created_at, prev_hash, hash)
        VALUES (head_seq, pending.event_type, pending.workspace_id, pending.actor_id, pending.request_id,
                pending.entity_type, pending.entity_id, pending.payload, pending.created_at, head_hash,
                next_hash);
        DELETE FROM event_outbox WHERE id = pending.id;
        head_hash := next_hash;
        sealed := sealed + 1;
    END LOOP;
    IF sealed > 0 THEN
        UPDATE event_head SET seq = head_seq, hash = head_hash WHERE id = 1;
    END IF;
    RETURN sealed;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=36), nullable=True),
        sa.Column("actor_id", sa.String(length=36), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("entity_type", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=100), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", concord_core.db.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("hashed_before_seq", sa.LargeBinary(), nullable=False),
        sa.Column("hashed_after_seq", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_outbox")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SEAL_EVENTS)


def downgrade() -> None:
    raise NotImplementedError("Concord migrations are forward-only; restore the backup taken before upgrade")
