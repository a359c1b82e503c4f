"""Bookmarks as Concord lens items: the lens stores no tables of its own, only items of type ``bookmark``.

Queries here select the ``data`` of active bookmark items; who may see which is always the kernel's policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, select

from concord_core.auth.policy import readable_filter
from concord_core.auth.principal import Principal
from concord_core.db.models import LensItem

LENS_ID = "bookmarks"
BOOKMARK = "bookmark"
MAX_TAGS = 32  # the data type's tags.maxItems
MAX_TAG_LENGTH = 64  # ... and tags.items.maxLength


def normalize_tag(raw: str) -> str | None:
    """A tag as the data type's schema wants it: lower case, single spaces, no commas (they separate tags
    in browser exports), at most 64 characters; None if nothing is left."""
    tag = " ".join(raw.replace(",", " ").lower().split())
    return tag[:MAX_TAG_LENGTH].rstrip() or None


def unique_tags(raw: Iterable[str]) -> list[str]:
    """Normalized, without duplicates, in first-seen order, at most :data:`MAX_TAGS`."""
    tags: list[str] = []
    for value in raw:
        tag = normalize_tag(value)
        if tag and tag not in tags:
            tags.append(tag)
    return tags[:MAX_TAGS]


def _bookmarks() -> Select[tuple[dict[str, Any]]]:
    return select(LensItem.data).where(LensItem.lens_id == LENS_ID, LensItem.item_type == BOOKMARK)


def readable_bookmarks(principal: Principal) -> Select[tuple[dict[str, Any]]]:
    """The data of the active bookmarks ``principal`` may browse (the kernel's policy decides which)."""
    return _bookmarks().where(LensItem.status == "active", readable_filter(principal, LensItem))


def own_bookmarks(principal: Principal, *, archived_too: bool = False) -> Select[tuple[dict[str, Any]]]:
    """The data of ``principal``'s own bookmarks, oldest first (nothing for an anonymous caller)."""
    query = _bookmarks().where(LensItem.owner_id == principal.user_id)
    if not archived_too:
        query = query.where(LensItem.status == "active")
    return query.order_by(LensItem.created_at, LensItem.id)


def tags_of(bookmark: Mapping[str, Any]) -> list[str]:
    return [str(tag) for tag in bookmark.get("tags") or []]


def tag_counts(
    bookmarks: Iterable[Mapping[str, Any]], tag: str | None = None
) -> tuple[int, int, Counter[str]]:
    """(bookmarks counted, how many of them have no tag, bookmarks per tag); with ``tag``, only the
    bookmarks carrying it are counted (so the counter shows which tags go with it)."""
    total = untagged = 0
    counts: Counter[str] = Counter()
    for bookmark in bookmarks:
        tags = tags_of(bookmark)
        if tag is not None and tag not in tags:
            continue
        total += 1
        untagged += not tags
        counts.update(tags)
    return total, untagged, counts
