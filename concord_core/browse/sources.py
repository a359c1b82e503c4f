"""The kernel's browsables: DTUs, artifacts, lens items and jobs."""

from __future__ import annotations

from concord_core.auth.policy import readable_workspace_filter
from concord_core.browse.source import Browsable, Facet, Filter, FilterKind, Search
from concord_core.db.models import Artifact, Dtu, Job, LensItem

COMMON_FILTERS = {
    "visibility": Filter("visibility", "visibility"),
    "owner": Filter("owner", "owner_id"),
    "workspace": Filter("workspace", "workspace_id"),
    "created": Filter("created", "created_at", FilterKind.RANGE),
    "updated": Filter("updated", "updated_at", FilterKind.RANGE),
}


DTUS = Browsable(
    name="dtus",
    model=Dtu,
    node_type="Dtu",
    sorts={"created": "created_at", "updated": "updated_at", "title": "title"},
    filters={
        **COMMON_FILTERS,
        "tags": Filter("tags", None, FilterKind.TAGS),
        "type": Filter("type", "dtu_type"),
        "tier": Filter("tier", "tier"),
        "status": Filter("status", "status"),
    },
    facets={
        "tags": Facet("tags", None),
        "tier": Facet("tier", "tier"),
        "visibility": Facet("visibility", "visibility"),
        "type": Facet("type", "dtu_type"),
        "status": Facet("status", "status"),
        "workspace": Facet("workspace", "workspace_id", counted=False),
    },
    search=Search(
        sqlite_table="dtus_fts", postgres_column="search_vector", scoped=True, postgres_title="title"
    ),
    tagged=True,
)

ARTIFACTS = Browsable(
    name="artifacts",
    model=Artifact,
    node_type="Artifact",
    sorts={"created": "created_at", "updated": "updated_at", "title": "name"},
    filters={
        **COMMON_FILTERS,
        "tags": Filter("tags", None, FilterKind.TAGS),
        "type": Filter("type", "kind"),
    },
    facets={
        "tags": Facet("tags", None),
        "type": Facet("type", "kind"),
        "visibility": Facet("visibility", "visibility"),
        "workspace": Facet("workspace", "workspace_id", counted=False),
    },
    search=Search(
        sqlite_table="artifacts_fts", postgres_column="search_vector", scoped=True, postgres_title="name"
    ),
    tagged=True,
)

LENS_ITEMS = Browsable(
    name="lens_items",
    model=LensItem,
    node_type="LensItem",
    sorts={"created": "created_at", "updated": "updated_at"},
    filters={
        **COMMON_FILTERS,
        "lens": Filter("lens", "lens_id"),
        "type": Filter("type", "item_type"),
        "status": Filter("status", "status"),
    },
    facets={
        "lens": Facet("lens", "lens_id", counted=False),
        "type": Facet("type", "item_type", counted=False),
        "status": Facet("status", "status", counted=False),
        "visibility": Facet("visibility", "visibility", counted=False),
    },
    search=Search(sqlite_table="lens_items_fts", postgres_column="search_vector", scoped=True),
)

JOBS = Browsable(
    name="jobs",
    model=Job,
    node_type="Job",
    sorts={"created": "created_at", "updated": "updated_at"},
    filters={
        "owner": Filter("owner", "owner_id"),
        "workspace": Filter("workspace", "workspace_id"),
        "created": Filter("created", "created_at", FilterKind.RANGE),
        "updated": Filter("updated", "updated_at", FilterKind.RANGE),
        "type": Filter("type", "job_type"),
        "status": Filter("status", "status"),
    },
    facets={
        "type": Facet("type", "job_type", counted=False),
        "status": Facet("status", "status", counted=False),
    },
    access=readable_workspace_filter,
)

KERNEL_BROWSABLES = (DTUS, ARTIFACTS, LENS_ITEMS, JOBS)
