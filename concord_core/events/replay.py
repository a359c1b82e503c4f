"""Deterministic replay: rebuild DTU, artifact and lens item state from the event log alone, and compare it
with the tables.

Every event that changes an entity carries the entity's full new state, so a projection is a fold of
snapshots. ``concord replay --verify`` runs every projection and reports the first difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.db.models import Artifact, ArtifactVersion, Dtu, DtuVersion, Event, LensItem
from concord_core.db.snapshots import (
    DTU_FIELDS,
    artifact_snapshot,
    artifact_version_snapshot,
    dtu_snapshot,
    dtu_version_snapshot,
    lens_item_snapshot,
)
from concord_core.events.log import iter_events

State = dict[str, dict[str, Any]]


@dataclass
class Projection:
    """Rebuilt state of one kind of entity, keyed by a stable string key per row."""

    name: str
    apply: Callable[[Event, State], None]
    table_rows: Callable[[Session], Iterable[tuple[str, dict[str, Any]]]]
    state: State = field(default_factory=dict)


def _apply_dtu(event: Event, state: State) -> None:
    snapshot = event.payload.get("dtu")
    if event.entity_type != "dtu" or snapshot is None:
        return
    state[f"dtu:{snapshot['id']}"] = snapshot
    version = {name: snapshot[name] for name in DTU_FIELDS}
    version.update(
        dtu_id=snapshot["id"],
        version=snapshot["version"],
        workspace_id=snapshot["workspace_id"],
        owner_id=snapshot["owner_id"],
        actor_id=event.actor_id,
        change=event.payload["change"],
        created_at=snapshot["updated_at"],
    )
    state[f"dtu_version:{snapshot['id']}:{snapshot['version']}"] = version


def _dtu_rows(session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
    for dtu in session.scalars(select(Dtu).order_by(Dtu.id)):
        yield f"dtu:{dtu.id}", dtu_snapshot(dtu)
    for row in session.scalars(select(DtuVersion).order_by(DtuVersion.dtu_id, DtuVersion.version)):
        yield f"dtu_version:{row.dtu_id}:{row.version}", dtu_version_snapshot(row)


def _apply_artifact(event: Event, state: State) -> None:
    if event.entity_type != "artifact":
        return
    if "artifact" in event.payload:
        snapshot = event.payload["artifact"]
        state[f"artifact:{snapshot['id']}"] = snapshot
    if "version" in event.payload:
        version = event.payload["version"]
        state[f"artifact_version:{version['artifact_id']}:{version['version']}"] = version


def _artifact_rows(session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
    for artifact in session.scalars(select(Artifact).order_by(Artifact.id)):
        yield f"artifact:{artifact.id}", artifact_snapshot(artifact)
    for row in session.scalars(
        select(ArtifactVersion).order_by(ArtifactVersion.artifact_id, ArtifactVersion.version)
    ):
        yield f"artifact_version:{row.artifact_id}:{row.version}", artifact_version_snapshot(row)


def _apply_lens_item(event: Event, state: State) -> None:
    if event.entity_type != "lens_item":
        return
    if event.payload.get("deleted"):
        state.pop(f"lens_item:{event.entity_id}", None)
    else:
        state[f"lens_item:{event.entity_id}"] = event.payload["item"]


def _lens_item_rows(session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
    for item in session.scalars(select(LensItem).order_by(LensItem.id)):
        yield f"lens_item:{item.id}", lens_item_snapshot(item)


def projections() -> list[Projection]:
    return [
        Projection("dtus", _apply_dtu, _dtu_rows),
        Projection("artifacts", _apply_artifact, _artifact_rows),
        Projection("lens_items", _apply_lens_item, _lens_item_rows),
    ]


@dataclass(frozen=True)
class ReplayReport:
    events: int
    rows: int
    difference: str | None = None

    @property
    def ok(self) -> bool:
        return self.difference is None


def _first_difference(key: str, rebuilt: dict[str, Any], stored: dict[str, Any]) -> str:
    for name in sorted(set(rebuilt) | set(stored)):
        if rebuilt.get(name) != stored.get(name):
            return f"{key}: field {name!r}: events say {rebuilt.get(name)!r}, table has {stored.get(name)!r}"
    return f"{key}: differs"


def replay(session: Session) -> list[Projection]:
    """Fold the whole event log into fresh projections."""
    built = projections()
    for event in iter_events(session):
        for projection in built:
            projection.apply(event, projection.state)
    return built


def verify_replay(session: Session) -> ReplayReport:
    """Rebuild state from events and compare it, row by row, with the tables."""
    events = session.scalar(select(Event.seq).order_by(Event.seq.desc()).limit(1)) or 0
    rows = 0
    for projection in replay(session):
        remaining = dict(projection.state)
        for key, stored in projection.table_rows(session):
            rows += 1
            rebuilt = remaining.pop(key, None)
            if rebuilt is None:
                return ReplayReport(events, rows, f"{key}: in the table but no event created it")
            if rebuilt != stored:
                return ReplayReport(events, rows, _first_difference(key, rebuilt, stored))
        if remaining:
            key = sorted(remaining)[0]
            return ReplayReport(events, rows, f"{key}: the events create it but the table has no such row")
    return ReplayReport(events, rows)
