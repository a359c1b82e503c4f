"""``importBookmarks``: a browser's bookmark export becomes bookmark items, through the kernel's operator.

Every link is first checked against the ``bookmark`` data type's JSON Schema (the manifest's), so a file
with any invalid link writes nothing and the payload lists each problem. Then each link is stored with
:func:`concord_core.operators.lens_items.create_item`, the same operator ``createLensItem`` uses: it checks
the data again, authorizes, and writes the item with its event and audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from concord_core.db.models import LensItem
from concord_core.operators.base import OperationContext
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError
from concord_core.operators.lens_items import check_data, create_item
from concord_lens_bookmarks.items import BOOKMARK, LENS_ID, own_bookmarks, unique_tags
from concord_lens_bookmarks.netscape import Link, parse_bookmark_file

MAX_LINKS = 5000
MAX_TITLE = 500  # the data type's title.maxLength
MAX_NOTE = 5000  # the data type's note.maxLength
WEB_SCHEMES = ("http://", "https://")


@dataclass
class ImportResult:
    items: list[LensItem] = field(default_factory=list)
    duplicates: int = 0  # already among your bookmarks, or earlier in the same file
    unsupported: int = 0  # not a web link (place:, javascript:, file:, ...)
    errors: list[FieldError] = field(default_factory=list)


def bookmark_data(link: Link) -> dict[str, Any]:
    """The item data for one link: titles and notes cut to the schema's limits, tags normalized."""
    data: dict[str, Any] = {"url": link.url, "title": (link.title or link.url)[:MAX_TITLE]}
    tags = unique_tags([*link.tags, *link.folders])
    if tags:
        data["tags"] = tags
    if link.note:
        data["note"] = link.note[:MAX_NOTE]
    return data


def _checked(ctx: OperationContext, links: list[tuple[int, Link]]) -> list[dict[str, Any]]:
    """The data for each link; raises VALIDATION listing every problem (``html.links.N.field``)."""
    validator = ctx.lenses.item_validator(LENS_ID, BOOKMARK) if ctx.lenses else None
    if validator is None:
        raise OperatorError.single(ErrorCode.NOT_FOUND, f"the {LENS_ID!r} lens is not active", "html")
    prepared, errors = [], []
    for index, link in links:
        data = bookmark_data(link)
        try:
            check_data(validator, data)
        except OperatorError as exc:
            errors += [
                FieldError(
                    f"html.links.{index}{(error.field or 'data').removeprefix('data')}",
                    error.code,
                    f"line {link.line}: {error.message}",
                )
                for error in exc.errors
            ]
        prepared.append(data)
    if errors:
        raise OperatorError(errors)
    return prepared


def import_bookmarks(ctx: OperationContext, html: str) -> ImportResult:
    """Store each web link of a Netscape bookmark file as one of the caller's bookmarks (private, in
    their own workspace), skipping URLs they already have."""
    links = parse_bookmark_file(html)
    if not links:
        raise OperatorError.single(
            ErrorCode.VALIDATION, "no links found: expected a browser's bookmark export (HTML)", "html"
        )
    result = ImportResult()
    with ctx.db.read() as session:
        known = {data.get("url") for data in session.scalars(own_bookmarks(ctx.principal, archived_too=True))}
    wanted: list[tuple[int, Link]] = []
    for index, link in enumerate(links):
        if not link.url.lower().startswith(WEB_SCHEMES):
            result.unsupported += 1
        elif link.url in known:
            result.duplicates += 1
        else:
            known.add(link.url)
            wanted.append((index, link))
    if len(wanted) > MAX_LINKS:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"{len(wanted)} new links; import at most {MAX_LINKS} at once", "html"
        )
    for (index, _link), data in zip(wanted, _checked(ctx, wanted), strict=True):
        try:
            result.items.append(create_item(ctx, {"lens_id": LENS_ID, "item_type": BOOKMARK, "data": data}))
        except OperatorError as exc:
            # Refused part-way (access, typically on the first one): report it with what was stored.
            result.errors = [
                FieldError(f"html.links.{index}", error.code, error.message) for error in exc.errors
            ]
            break
    return result
