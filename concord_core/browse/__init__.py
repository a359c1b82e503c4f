"""Browsing: keyset-paginated connections with exact counts, scoped by the one access policy.

A lens describes its data sources for Global with the names exported here (``concord_core.browse.Browsable``
and its parts); the browse service does the paging, counting, facets and search for every source alike.
"""

from concord_core.browse.connection import MAX_PAGE, Ordering, Page
from concord_core.browse.source import Browsable, Facet, Filter, FilterKind, Search

__all__ = [
    "MAX_PAGE",
    "Browsable",
    "Facet",
    "Filter",
    "FilterKind",
    "Ordering",
    "Page",
    "Search",
]
