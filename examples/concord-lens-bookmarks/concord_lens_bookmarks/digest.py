"""The HTML digest (the lens's ``html`` export format): bookmarks grouped by tag, then the untagged ones.

The output depends only on the bookmarks (no clock), so a re-run writes byte-identical content and the
content-addressed store keeps one copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from concord_lens_bookmarks.items import tags_of


def _entry(bookmark: Mapping[str, Any]) -> str:
    url = str(bookmark.get("url", ""))
    title = escape(str(bookmark.get("title") or url))
    # The data type only admits http(s) URLs; checked again so a digest can never carry a javascript: link.
    link = f'<a href="{escape(url)}">{title}</a>' if url.startswith(("http://", "https://")) else title
    note = bookmark.get("note")
    return f"<li>{link}" + (f" &mdash; {escape(str(note))}" if note else "") + "</li>"


def _section(heading: str, anchor: str, bookmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f'<h2 id="{escape(anchor)}">{escape(heading)} <small>({len(bookmarks)})</small></h2>',
        "<ul>",
        *(_entry(bookmark) for bookmark in bookmarks),
        "</ul>",
    ]


def render_digest(bookmarks: Sequence[Mapping[str, Any]], title: str) -> str:
    """A standalone HTML page; a bookmark with several tags appears under each of them."""
    by_tag: dict[str, list[Mapping[str, Any]]] = {}
    untagged = []
    for bookmark in bookmarks:
        tags = tags_of(bookmark)
        for tag in tags:
            by_tag.setdefault(tag, []).append(bookmark)
        if not tags:
            untagged.append(bookmark)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><title>' + escape(title) + "</title></head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>{len(bookmarks)} bookmark{'s' if len(bookmarks) != 1 else ''}, {len(by_tag)} tags.</p>",
    ]
    for tag in sorted(by_tag):
        lines += _section(tag, "tag-" + "-".join(tag.split()), by_tag[tag])
    if untagged:
        lines += _section("Untagged", "untagged", untagged)
    lines += ["</body>", "</html>"]
    return "\n".join(lines) + "\n"
