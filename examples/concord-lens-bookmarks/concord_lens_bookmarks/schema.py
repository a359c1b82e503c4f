"""GraphQL the bookmarks lens adds: ``bookmarkStats`` and ``importBookmarks``.

Every type name starts with ``Bookmark`` and every root field name mentions bookmarks, so the lens never
collides with the kernel or another lens (Concord refuses a lens whose names collide). Kernel types
(``LensItem``, ``FieldError``) are reused as they are, never redefined.
"""

from __future__ import annotations

import strawberry

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.lenses import LensItem
from concord_core.operators.errors import OperatorError
from concord_lens_bookmarks.importer import ImportResult, import_bookmarks
from concord_lens_bookmarks.items import normalize_tag, readable_bookmarks, tag_counts


@strawberry.type(description="How many bookmarks carry a tag.")
class BookmarkTagCount:
    tag: str
    count: int


@strawberry.type(description="Tag counts over the active bookmarks you can read.")
class BookmarkStats:
    total: int = strawberry.field(description="Bookmarks counted (with `tag`: those carrying it).")
    untagged: int = strawberry.field(description="Of those, how many have no tag.")
    tags: list[BookmarkTagCount] = strawberry.field(
        description="Bookmarks per tag, most used first (with `tag`: the tags used together with it)."
    )


@strawberry.type(description="What importBookmarks stored; with errors, see each one.")
class BookmarkImportPayload:
    created: int = 0
    duplicates: int = strawberry.field(
        default=0, description="Links skipped because you already have their URL (or it came up earlier)."
    )
    unsupported: int = strawberry.field(
        default=0, description="Links skipped because they are not http(s) (place:, javascript:, ...)."
    )
    items: list[LensItem] = strawberry.field(default_factory=list, description="The bookmarks created.")
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class BookmarkQueries:
    @strawberry.field(
        description="Tag counts over the active bookmarks you can read; with `tag`, over those "
        "carrying it. Needs: nothing (counts only what you can read)."
    )
    async def bookmark_stats(self, info: GqlInfo, tag: str | None = None) -> BookmarkStats:
        wanted = normalize_tag(tag) if tag is not None else None
        query = readable_bookmarks(info.context.principal)
        bookmarks = await info.context.read(lambda session: list(session.scalars(query)))
        if tag is not None and wanted is None:
            bookmarks = []  # a tag no bookmark can carry
        total, untagged, counts = tag_counts(bookmarks, wanted)
        return BookmarkStats(
            total=total,
            untagged=untagged,
            tags=[
                BookmarkTagCount(tag=name, count=count)
                for name, count in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
            ],
        )


def _payload(result: ImportResult) -> BookmarkImportPayload:
    return BookmarkImportPayload(
        created=len(result.items),
        duplicates=result.duplicates,
        unsupported=result.unsupported,
        items=[LensItem.from_row(row) for row in result.items],
        errors=[FieldErrorType.from_error(error) for error in result.errors],
    )


@strawberry.type
class BookmarkMutations:
    @strawberry.mutation(
        description="Import a browser's bookmark export (Netscape bookmark-file HTML) as your private "
        "bookmarks; URLs you already have are skipped. Any invalid link means nothing is stored. "
        "Needs: editor or owner of your workspace."
    )
    async def import_bookmarks(self, info: GqlInfo, html: str) -> BookmarkImportPayload:
        ctx = info.context.ops
        try:
            result = await info.context.run(import_bookmarks, ctx, html)
        except OperatorError as exc:
            return BookmarkImportPayload(errors=payload_errors(exc))
        return _payload(result)
