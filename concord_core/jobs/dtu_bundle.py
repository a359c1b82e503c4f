"""Reading a bundle of DTUs to import: a ``.zip`` of Markdown and JSON files, or one such file.

Each file becomes records (plain dicts of DTU fields, plus ``ref``, the id a record had where it came from,
and ``source``, the file it came from). JSON may be Concord's own export (``concord.dtus.v1``, as
:func:`concord_core.operators.artifacts.export_dtus` writes it), a list of DTU objects, or one DTU object.
A Markdown file is one DTU: the title comes from front matter, else the first heading, else the file
name; top-level list items become bullets and the rest the summary.

Nothing here raises on bad content: problems are collected, one line each, and the file is skipped.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from concord_core.operators.artifacts import EXPORT_FORMAT

MAX_FILES = 10_000
MAX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024 * 1024
DTU_KEYS = ("title", "human", "core", "machine", "tags", "tier", "dtu_type", "citation_mode", "citations")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^[-*+]\s+(.+)$")


@dataclass
class Bundle:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: int = 0


def _front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    values: dict[str, Any] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            continue
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            values[key.strip().lower()] = [
                v.strip().strip("\"'") for v in value[1:-1].split(",") if v.strip()
            ]
        else:
            values[key.strip().lower()] = value.strip("\"'")
    return values, text[match.end() :]


def parse_markdown(name: str, text: str) -> dict[str, Any]:
    """One Markdown note as a DTU record."""
    meta, body = _front_matter(text.replace("\r\n", "\n"))
    title = str(meta.get("title", "")).strip()
    summary: list[str] = []
    bullets: list[str] = []
    for line in body.split("\n"):
        heading = _HEADING.match(line)
        if heading and not title:
            title = heading.group(2)
            continue
        bullet = _BULLET.match(line)
        if bullet:
            bullets.append(bullet.group(1).strip())
        else:
            summary.append(line)
    tags = meta.get("tags", [])
    record: dict[str, Any] = {
        "title": title or PurePosixPath(name).stem,
        "human": {"summary": "\n".join(summary).strip(), "bullets": bullets},
        "tags": tags if isinstance(tags, list) else [t.strip() for t in str(tags).split(",") if t.strip()],
        "format": "markdown",
        "source": name,
    }
    for key, target in (("tier", "tier"), ("type", "dtu_type"), ("dtu_type", "dtu_type")):
        if key in meta:
            record[target] = meta[key]
    return record


def _from_json_object(value: dict[str, Any], name: str) -> dict[str, Any]:
    record = {key: value[key] for key in DTU_KEYS if key in value}
    record.update(format="json", source=name)
    if isinstance(value.get("id"), str):
        record["ref"] = value["id"]
    return record


def parse_json(name: str, data: bytes, bundle: Bundle) -> None:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        bundle.problems.append(f"{name}: not valid JSON ({exc})")
        return
    if isinstance(document, dict) and document.get("format") == EXPORT_FORMAT:
        entries = document.get("dtus")
        if not isinstance(entries, list):
            bundle.problems.append(f"{name}: a {EXPORT_FORMAT} document without a dtus list")
            return
        items = [entry.get("dtu") if isinstance(entry, dict) else None for entry in entries]
    elif isinstance(document, dict) and "format" in document:
        bundle.problems.append(f"{name}: unknown format {document['format']!r}")
        return
    else:
        items = document if isinstance(document, list) else [document]
    for index, item in enumerate(items):
        if isinstance(item, dict):
            bundle.records.append(_from_json_object(item, f"{name}#{index}"))
        else:
            bundle.problems.append(f"{name}#{index}: not a DTU object")


def _add_file(name: str, data: bytes, bundle: Bundle) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".json":
        bundle.files += 1
        parse_json(name, data, bundle)
    elif suffix in (".md", ".markdown"):
        bundle.files += 1
        try:
            bundle.records.append(parse_markdown(name, data.decode("utf-8-sig")))
        except UnicodeDecodeError:
            bundle.problems.append(f"{name}: not UTF-8 text")
    else:
        bundle.problems.append(f"{name}: skipped (only .md, .markdown and .json files are imported)")


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.endswith("/") or any(part.startswith(".") or part == "__MACOSX" for part in parts)


def read_bundle(data: bytes, filename: str | None, media_type: str) -> Bundle:
    """Every record in an uploaded bundle, in file order (zip members sorted by name)."""
    bundle = Bundle()
    name = filename or "upload"
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = sorted(
                (m for m in archive.infolist() if not _skipped(m.filename)), key=lambda m: m.filename
            )
            if len(members) > MAX_FILES:
                bundle.problems.append(f"{name}: more than {MAX_FILES} files; only the first were read")
                members = members[:MAX_FILES]
            total = 0
            for member in members:
                total += member.file_size
                if member.file_size > MAX_FILE_BYTES or total > MAX_UNCOMPRESSED_BYTES:
                    bundle.problems.append(f"{member.filename}: too large to import")
                    continue
                _add_file(member.filename, archive.read(member), bundle)
        return bundle
    if PurePosixPath(name).suffix.lower() not in (".json", ".md", ".markdown"):
        name += ".json" if "json" in media_type else ".md"
    _add_file(name, data, bundle)
    return bundle
