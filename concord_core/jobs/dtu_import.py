"""The ``dtu_import`` workflow: Import → Clean → Tag → (Review) → Sync, for a bundle uploaded as an artifact.

1. **Import** reads the artifact (a ``.zip`` of Markdown/JSON files, or one file; see
   :mod:`concord_core.jobs.dtu_bundle`) into records.
2. **Clean** normalises them to valid DTU fields (whitespace, lengths, unknown values), drops what cannot be
   a DTU and duplicates within the bundle, each with a reason.
3. **Tag** adds the requested tags and, for Markdown notes, their ``#hashtags``.
4. **Review** (when the input asks for one) waits for a person to approve.
5. **Sync** creates the DTUs (citations between them kept), then maps them into a lens with ``syncToLens``.

Each step's records are a JSON artifact the job writes (content-addressed, keyed by job and step), which
the next step reads. Sync checkpoints as it goes and looks a DTU up by content hash before creating it, so a
sync killed halfway creates no duplicates when it runs again. A JSON bundle in Concord's export format
round-trips: the imported DTUs have the exported ones' content, tags, tier, type and citations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from sqlalchemy import select

from concord_core.auth.policy import Visibility, can_read
from concord_core.db.models import Dtu, Job
from concord_core.jobs.catalog import JobSpec
from concord_core.jobs.dtu_bundle import read_bundle
from concord_core.jobs.workflows import StepDef, StepKind, WorkflowDef
from concord_core.operators.artifacts import get_artifact, get_version
from concord_core.operators.base import OperationContext
from concord_core.operators.dtus import (
    DEFAULTS,
    CitationMode,
    CreateDtuInput,
    Tag,
    Tier,
    content_hash,
    create_dtu,
    edit_dtu,
)
from concord_core.operators.errors import ErrorCode, OperatorError
from concord_core.operators.lens_items import sync_to_lens
from concord_core.plugins.contract import JobContext, PermanentJobError

READ = "concord.dtu_import.read"
CLEAN = "concord.dtu_import.clean"
TAG = "concord.dtu_import.tag"
SYNC = "concord.dtu_import.sync"

CHECKPOINT_EVERY = 20
MAX_TAGS = 64
_HASHTAG = re.compile(r"(?<![\w#&/])#([a-z0-9][a-z0-9_-]{0,62})", re.I)
_TYPE = re.compile(r"^[a-z][a-z0-9_-]*$")
_LAYER_LISTS = {
    "human": ("bullets", "examples"),
    "core": ("definitions", "invariants", "examples", "claims", "next_actions"),
}


class DtuImportInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    artifact_id: str = Field(min_length=1, max_length=100)
    version: int | None = Field(None, ge=1)
    lens_id: str = Field("knowledge", min_length=1, max_length=100)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    visibility: Visibility = Visibility.PRIVATE
    review: bool = False


# --- records between steps ----------------------------------------------------------------------------------


def _write_records(
    ctx: JobContext, step: str, records: list[dict[str, Any]], problems: list[str]
) -> dict[str, Any]:
    body = json.dumps({"records": records, "problems": problems}, ensure_ascii=False, sort_keys=True).encode()
    artifact_id, version = ctx.write_artifact(
        step=step,
        role="records",
        name=f"DTU import ({step})",
        content=body,
        media_type="application/json",
        label=step,
    )
    return {
        "records": {"artifactId": artifact_id, "version": version},
        "count": len(records),
        "problems": problems,
    }


def _read_records(ctx: JobContext, ref: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    ops = ctx.operations
    with ops.db.read() as session:
        version = get_version(ops, session, str(ref["artifactId"]), int(ref["version"]))
    document = json.loads(ops.store.read_bytes(version.blob_sha256))
    return list(document["records"]), list(document["problems"])


# --- 1. import ----------------------------------------------------------------------------------------------


def read_step(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    ops = ctx.operations
    with ops.db.read() as session:
        artifact = get_artifact(ops, session, str(payload["artifactId"]))
        number = payload.get("version") or artifact.current_version
        if not number:
            raise PermanentJobError("the artifact has no version to import")
        version = get_version(ops, session, artifact.id, int(number))
    ctx.progress(0.1, f"reading {version.filename or 'the upload'}")
    bundle = read_bundle(ops.store.read_bytes(version.blob_sha256), version.filename, version.media_type)
    if not bundle.records:
        raise PermanentJobError(
            "no DTUs found in the bundle" + "".join(f"; {p}" for p in bundle.problems[:20])
        )
    ctx.progress(0.8, f"read {len(bundle.records)} records from {bundle.files} files")
    return {**_write_records(ctx, "import", bundle.records, bundle.problems), "files": bundle.files}


# --- 2. clean -----------------------------------------------------------------------------------------------


def _texts(value: Any, limit: int) -> list[str]:
    items = value if isinstance(value, list) else []
    return [
        " ".join(str(item).split()) if "\n" not in str(item) else str(item).strip()
        for item in items
        if str(item).strip()
    ][:limit]


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """A record's DTU fields, made valid where that is unambiguous (unknown values get the defaults)."""
    human: dict[str, Any] = record["human"] if isinstance(record.get("human"), dict) else {}
    core: dict[str, Any] = record["core"] if isinstance(record.get("core"), dict) else {}
    fields: dict[str, Any] = {
        "title": " ".join(str(record.get("title") or "").split())[:500],
        "human": {"summary": str(human.get("summary") or "").strip()[:20_000]},
        "core": {},
        "machine": record.get("machine") if isinstance(record.get("machine"), dict) else {},
        "tags": [str(tag) for tag in record.get("tags", []) if isinstance(tag, str | int)],
        "tier": record.get("tier") if record.get("tier") in set(Tier) else DEFAULTS["tier"],
        "dtu_type": record.get("dtu_type")
        if _TYPE.match(str(record.get("dtu_type") or ""))
        else DEFAULTS["dtu_type"],
        "citations": [str(c) for c in record.get("citations", []) if isinstance(c, str)][:500],
    }
    for key in _LAYER_LISTS["human"]:
        fields["human"][key] = _texts(human.get(key), 200 if key == "bullets" else 100)
    for key in _LAYER_LISTS["core"]:
        fields["core"][key] = _texts(core.get(key), 200)
    mode = record.get("citation_mode")
    if mode not in set(CitationMode):
        mode = CitationMode.CITING.value if fields["citations"] else CitationMode.ORIGINAL.value
    if mode == CitationMode.ORIGINAL and fields["citations"]:
        mode = CitationMode.CITING.value
    if mode == CitationMode.DERIVATIVE and not fields["citations"]:
        mode = CitationMode.ORIGINAL.value
    fields["citation_mode"] = mode
    return fields


def clean_step(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    records, problems = _read_records(ctx, payload["records"])
    cleaned: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for index, record in enumerate(records):
        if index % 100 == 0:
            ctx.progress(index / max(len(records), 1), f"cleaning {index + 1} of {len(records)}")
        source = str(record.get("source", f"record {index}"))
        fields = normalise(record)
        if not fields["title"]:
            problems.append(f"{source}: no title; skipped")
            continue
        try:
            valid = CreateDtuInput.model_validate(fields).model_dump(
                mode="json", exclude={"workspace_id", "visibility"}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            problems.append(f"{source}: {where}: {first['msg']}; skipped")
            continue
        digest = content_hash({**DEFAULTS, **valid})
        if digest in seen:
            problems.append(f"{source}: the same content as {seen[digest]}; skipped")
            continue
        seen[digest] = source
        cleaned.append({**valid, "ref": record.get("ref"), "source": source, "format": record.get("format")})
    if not cleaned:
        raise PermanentJobError(
            "nothing left to import after cleaning" + "".join(f"; {p}" for p in problems[:20])
        )
    return _write_records(ctx, "clean", cleaned, problems)


# --- 3. tag -------------------------------------------------------------------------------------------------


def hashtags(texts: Iterable[str]) -> list[str]:
    return [match.lower() for text in texts for match in _HASHTAG.findall(text)]


def tag_step(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    records, problems = _read_records(ctx, payload["records"])
    extra = [str(tag) for tag in payload.get("tags", [])]
    for index, record in enumerate(records):
        if index % 100 == 0:
            ctx.progress(index / max(len(records), 1), f"tagging {index + 1} of {len(records)}")
        found = list(extra)
        if record.get("format") == "markdown":
            human = record["human"]
            found += hashtags([human.get("summary", ""), *human.get("bullets", [])])
        tags = sorted(set(record["tags"]) | {tag.lower() for tag in found})
        if len(tags) > MAX_TAGS:
            problems.append(f"{record['source']}: more than {MAX_TAGS} tags; kept the first {MAX_TAGS}")
            tags = tags[:MAX_TAGS]
        record["tags"] = tags
    return _write_records(ctx, "tag", records, problems)


# --- 5. sync ------------------------------------------------------------------------------------------------


def _order(records: list[dict[str, Any]]) -> list[int]:
    """Record indexes with cited records before citing ones where the citations allow (cycles keep file
    order; their citations are added in a second pass)."""
    index_of = {record["ref"]: i for i, record in enumerate(records) if record.get("ref")}
    placed: set[int] = set()
    order: list[int] = []

    def place(i: int, path: frozenset[int]) -> None:
        if i in placed or i in path:
            return
        for cited in records[i]["citations"]:
            if cited in index_of:
                place(index_of[cited], path | {i})
        placed.add(i)
        order.append(i)

    for i in range(len(records)):
        place(i, frozenset())
    return order


def _existing_dtu(ops: OperationContext, job_id: str, digest: str) -> str | None:
    """A DTU this job created in an earlier, interrupted attempt: same content, owner and workspace,
    created since the job was."""
    with ops.db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return session.scalar(
            select(Dtu.id).where(
                Dtu.workspace_id == job.workspace_id,
                Dtu.content_hash == digest,
                Dtu.owner_id == job.owner_id,
                Dtu.created_at >= job.created_at,
            )
        )


def _readable_dtus(ops: OperationContext, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    with ops.db.read() as session:
        rows = session.scalars(select(Dtu).where(Dtu.id.in_(sorted(ids))))
        return {row.id for row in rows if can_read(ops.principal, row)}


def sync_step(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    ops = ctx.operations
    records, problems = _read_records(ctx, payload["records"])
    refs = {record["ref"] for record in records if record.get("ref")}
    external = _readable_dtus(ops, {c for r in records for c in r["citations"] if c not in refs})
    created: dict[str, str] = dict((ctx.checkpoint_state or {}).get("created", {}))
    by_ref = {records[int(i)]["ref"]: dtu_id for i, dtu_id in created.items() if records[int(i)].get("ref")}
    new = 0
    order = _order(records)
    for done, index in enumerate(order):
        if str(index) in created:
            continue
        record = records[index]
        for cited in record["citations"]:
            if cited not in refs and cited not in external:
                problems.append(f"{record['source']}: cites {cited}, not in the bundle nor readable; dropped")
        # Citations of DTUs not created yet (a cycle) wait for the second pass.
        citations = [by_ref.get(c, c) for c in record["citations"] if c in by_ref or c in external]
        fields = {
            key: record[key] for key in ("title", "human", "core", "machine", "tags", "tier", "dtu_type")
        }
        mode = record["citation_mode"]
        if mode == CitationMode.DERIVATIVE and not citations:
            mode = CitationMode.CITING.value
        fields.update(citation_mode=mode, citations=citations)
        dtu_id = _existing_dtu(ops, ctx.job_id, content_hash({**DEFAULTS, **fields}))
        if dtu_id is None:
            dtu = create_dtu(
                ops,
                {
                    **fields,
                    "visibility": payload.get("visibility", "private"),
                    "workspace_id": _workspace(ops, ctx),
                },
            )
            dtu_id, new = dtu.id, new + 1
        created[str(index)] = dtu_id
        if record.get("ref"):
            by_ref[record["ref"]] = dtu_id
        if (done + 1) % CHECKPOINT_EVERY == 0:
            ctx.checkpoint({"created": created})
            ctx.progress(0.9 * (done + 1) / len(order), f"created {done + 1} of {len(order)} DTUs")
    ctx.checkpoint({"created": created})
    _second_pass(ops, records, created, by_ref, external)
    ids = [created[str(i)] for i in range(len(records))]
    ctx.progress(0.95, f"syncing {len(ids)} DTUs into {payload['lensId']}")
    items = []
    for start in range(0, len(ids), 500):
        items += sync_to_lens(
            ops, str(payload["lensId"]), [("dtu", dtu_id) for dtu_id in ids[start : start + 500]]
        )
    return {
        "dtuIds": ids,
        "created": new,
        "reused": len(ids) - new,
        "lensId": payload["lensId"],
        "itemIds": [item.id for item in items],
        "problems": problems,
    }


def _workspace(ops: OperationContext, ctx: JobContext) -> str:
    with ops.db.read() as session:
        job = session.get(Job, ctx.job_id)
        assert job is not None
        return job.workspace_id


def _second_pass(
    ops: OperationContext,
    records: list[dict[str, Any]],
    created: dict[str, str],
    by_ref: dict[str, str],
    external: set[str],
) -> None:
    """Give DTUs the citations (and citation mode) that had to wait for DTUs created after them."""
    for index, record in enumerate(records):
        wanted = [by_ref.get(c, c) for c in record["citations"] if c in by_ref or c in external]
        with ops.db.read() as session:
            dtu = session.get(Dtu, created[str(index)])
            assert dtu is not None
        mode = (
            record["citation_mode"]
            if wanted or record["citation_mode"] != CitationMode.DERIVATIVE
            else CitationMode.CITING.value
        )
        if dtu.citations == wanted and dtu.citation_mode == mode:
            continue
        try:
            edit_dtu(
                ops,
                {"id": dtu.id, "expected_version": dtu.version, "citations": wanted, "citation_mode": mode},
            )
        except OperatorError as exc:
            if exc.code is not ErrorCode.CONFLICT:
                raise
            raise RuntimeError(f"DTU {dtu.id} changed while its citations were being set; retrying") from exc


# --- the workflow -------------------------------------------------------------------------------------------


def _check(ctx: OperationContext, payload: dict[str, Any]) -> None:
    with ctx.db.read() as session:
        try:
            get_artifact(ctx, session, payload["artifactId"])
        except OperatorError:
            raise OperatorError.single(
                ErrorCode.NOT_FOUND, "artifact not found", "input.artifactId"
            ) from None
    lens = ctx.lenses.get(payload["lensId"]) if ctx.lenses is not None else None
    data_types = (lens.manifest or {}).get("dataTypes", []) if lens is not None else []
    if not any("dtu" in entry.get("syncFrom", []) for entry in data_types):
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"no active lens {payload['lensId']!r} accepts DTUs", "input.lensId"
        )


def _records_of(step: str) -> Any:
    return lambda _input, outputs: {"records": outputs[step]["records"]}


DTU_IMPORT = WorkflowDef(
    workflow_type="dtu_import",
    title="Import DTUs: Import → Clean → Tag → Sync",
    input_model=DtuImportInput,
    check=_check,
    steps=(
        StepDef(
            "import",
            StepKind.JOB,
            "Import",
            READ,
            lambda i, _o: {"artifactId": i["artifactId"], "version": i["version"]},
        ),
        StepDef("clean", StepKind.JOB, "Clean", CLEAN, _records_of("import")),
        StepDef(
            "tag",
            StepKind.JOB,
            "Tag",
            TAG,
            lambda i, o: {"records": o["clean"]["records"], "tags": i["tags"]},
        ),
        StepDef("review", StepKind.REVIEW, "Review", included=lambda i: bool(i.get("review"))),
        StepDef(
            "sync",
            StepKind.JOB,
            "Sync",
            SYNC,
            lambda i, o: {
                "records": o["tag"]["records"],
                "lensId": i["lensId"],
                "visibility": i["visibility"],
            },
        ),
    ),
    output=lambda outputs: {
        key: outputs["sync"][key] for key in ("dtuIds", "created", "reused", "lensId", "itemIds", "problems")
    },
)

JOB_SPECS = (
    JobSpec(READ, read_step, timeout_seconds=600),
    JobSpec(CLEAN, clean_step, timeout_seconds=600),
    JobSpec(TAG, tag_step, timeout_seconds=600),
    JobSpec(SYNC, sync_step, timeout_seconds=3600),
)
