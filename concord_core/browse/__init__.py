"""Browsing: keyset-paginated connections with exact counts, scoped by the one access policy."""

from concord_core.browse.connection import MAX_PAGE, Ordering, Page, count, paginate

__all__ = ["MAX_PAGE", "Ordering", "Page", "count", "paginate"]
