"""DTUs rendered as one Markdown document (the lens's `markdown` export format)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from concord_core.db.models import Dtu

CORE_SECTIONS = (
    ("definitions", "Definitions"),
    ("invariants", "Invariants"),
    ("claims", "Claims"),
    ("examples", "Examples"),
    ("next_actions", "Next actions"),
)


def _escape(text: str) -> str:
    return text.replace("\r", "").strip()


def _bullets(items: Iterable[Any]) -> list[str]:
    return [f"- {_escape(str(item))}" for item in items]


def render_dtu(dtu: Dtu) -> str:
    lines = [f"## {_escape(dtu.title)}", ""]
    meta = f"*{dtu.dtu_type} · {dtu.tier} · version {dtu.version}*"
    if dtu.tags:
        meta += " · " + " ".join(f"`{tag}`" for tag in dtu.tags)
    lines += [meta, ""]
    if dtu.human.get("summary"):
        lines += [_escape(dtu.human["summary"]), ""]
    if dtu.human.get("bullets"):
        lines += [*_bullets(dtu.human["bullets"]), ""]
    for key, heading in CORE_SECTIONS:
        if dtu.core.get(key):
            lines += [f"### {heading}", "", *_bullets(dtu.core[key]), ""]
    if dtu.human.get("examples"):
        lines += ["### Worked examples", "", *_bullets(dtu.human["examples"]), ""]
    if dtu.citations:
        lines += ["### Cites", "", *(f"- `{cited}`" for cited in dtu.citations), ""]
    return "\n".join(lines)


def render(dtus: Iterable[Dtu], title: str = "DTU export") -> str:
    return "\n".join([f"# {_escape(title)}", "", *(render_dtu(dtu) for dtu in dtus)]).rstrip() + "\n"
