"""REST browsing (plan B3): ``GET /api/<browsable>/paginated`` -> ``{items, total, facets, pageInfo}``,
served by the same browse service, filters, search, cursors and access rules as the GraphQL connections."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.orm import Mapper

from concord_core.api.rest import error_response, principal, runtime
from concord_core.api.runtime import Runtime
from concord_core.auth.principal import Principal
from concord_core.browse.service import (
    DEFAULT_FACET_VALUES,
    MAX_FACET_VALUES,
    BrowseRequest,
    FilterValue,
    RangeFilter,
    TagFilter,
)
from concord_core.browse.source import Browsable, FilterKind
from concord_core.operators.errors import ErrorCode, OperatorError


class FacetValueOut(BaseModel):
    value: str
    count: int


class FacetOut(BaseModel):
    values: list[FacetValueOut]
    truncated: bool
    timedOut: bool


class PageInfoOut(BaseModel):
    hasNextPage: bool
    hasPreviousPage: bool
    startCursor: str | None
    endCursor: str | None


class PaginatedOut(BaseModel):
    items: list[dict[str, Any]]
    total: int | None
    facets: dict[str, FacetOut]
    pageInfo: PageInfoOut


def _names(browsable: Browsable) -> list[tuple[str, str]]:
    """(attribute, column name) of every column of the browsable's table."""
    mapper: Mapper[Any] = inspect(browsable.model)
    return [(attribute.key, attribute.columns[0].name) for attribute in mapper.column_attrs]


def row_json(row: Mapping[str, Any], names: list[tuple[str, str]]) -> dict[str, Any]:
    """A row of a page (every column, by attribute) as JSON by column name, timestamps as ISO 8601."""
    values: dict[str, Any] = {}
    for key, name in names:
        value = row[key]
        values[name] = value.isoformat() if isinstance(value, datetime) else value
    return values


def _filters(browsable: Browsable, params: dict[str, Any]) -> dict[str, FilterValue]:
    filters: dict[str, FilterValue] = {}
    for name, spec in browsable.filters.items():
        if spec.kind is FilterKind.TAGS:
            any_of, all_of = params.get("tags") or [], params.get("allTags") or []
            if any_of or all_of:
                filters[name] = TagFilter(any_of=any_of, all_of=all_of)
        elif spec.kind is FilterKind.RANGE:
            start, end = params.get(f"{name}From"), params.get(f"{name}To")
            if start or end:
                filters[name] = RangeFilter(start=start, end=end)
        elif params.get(name):
            filters[name] = params[name]
    return filters


def add_paginated_routes(app: FastAPI, browsables: list[Browsable]) -> None:
    router = APIRouter(tags=["global"])
    for browsable in browsables:
        router.add_api_route(
            f"/api/{browsable.name}/paginated",
            _endpoint(browsable),
            methods=["GET"],
            response_model=PaginatedOut,
            summary=f"Browse {browsable.name}: items you can read, total and facets",
            description=(
                f"Filters: {', '.join(browsable.filters)}; facets: {', '.join(browsable.facets)}; sorts: "
                f"{', '.join(browsable.sorts)}{', relevance' if browsable.search else ''}. Tag filters: "
                "`tags` (any of, repeatable) and `allTags`; ranges: `<name>From` / `<name>To`."
            ),
        )
    app.include_router(router)


def _endpoint(browsable: Browsable) -> Any:
    column_names = _names(browsable)
    attributes = [key for key, _name in column_names]

    async def paginated(
        rt: Annotated[Runtime, Depends(runtime)],
        who: Annotated[Principal, Depends(principal)],
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        search: Annotated[str | None, Query(max_length=500)] = None,
        sort: str | None = None,
        direction: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        facets: Annotated[
            str | None, Query(description="comma-separated facet names; empty for none")
        ] = None,
        facet_limit: Annotated[
            int, Query(alias="facetLimit", ge=1, le=MAX_FACET_VALUES)
        ] = DEFAULT_FACET_VALUES,
        total: bool = True,
        tags: Annotated[list[str] | None, Query()] = None,
        all_tags: Annotated[list[str] | None, Query(alias="allTags")] = None,
        type: Annotated[list[str] | None, Query()] = None,
        tier: Annotated[list[str] | None, Query()] = None,
        visibility: Annotated[list[str] | None, Query()] = None,
        status: Annotated[list[str] | None, Query()] = None,
        owner: Annotated[list[str] | None, Query()] = None,
        workspace: Annotated[list[str] | None, Query()] = None,
        lens: Annotated[list[str] | None, Query()] = None,
        created_from: Annotated[datetime | None, Query(alias="createdFrom")] = None,
        created_to: Annotated[datetime | None, Query(alias="createdTo")] = None,
        updated_from: Annotated[datetime | None, Query(alias="updatedFrom")] = None,
        updated_to: Annotated[datetime | None, Query(alias="updatedTo")] = None,
    ) -> Any:
        params = {
            "tags": tags,
            "allTags": all_tags,
            "type": type,
            "tier": tier,
            "visibility": visibility,
            "status": status,
            "owner": owner,
            "workspace": workspace,
            "lens": lens,
            "createdFrom": created_from,
            "createdTo": created_to,
            "updatedFrom": updated_from,
            "updatedTo": updated_to,
        }
        unsupported = [
            k
            for k, v in params.items()
            if v and k.removesuffix("From").removesuffix("To") not in {*browsable.filters, "allTags"}
        ]
        service = rt.browse
        try:
            if unsupported:
                raise OperatorError.single(
                    ErrorCode.VALIDATION,
                    f"{browsable.name} cannot be filtered by {', '.join(unsupported)}",
                    unsupported[0],
                )
            request = BrowseRequest(
                filters=_filters(browsable, params), search=search, sort=sort, descending=direction == "desc"
            )
            names = browsable.facets if facets is None else [n for n in facets.split(",") if n]

            def work() -> PaginatedOut:
                with rt.db.read() as session:
                    page = service.page(
                        session,
                        who,
                        browsable,
                        request,
                        first=first,
                        after=after,
                        last=last,
                        before=before,
                        columns=attributes,
                    )
                    count = service.total(session, who, browsable, request) if total else None
                results = service.facets(who, browsable, request, list(names), facet_limit) if names else []
                return PaginatedOut(
                    items=[row_json(row, column_names) for row in page.items],
                    total=count,
                    facets={
                        r.field: FacetOut(
                            values=[FacetValueOut(value=v.value, count=v.count) for v in r.values],
                            truncated=r.truncated,
                            timedOut=r.timed_out,
                        )
                        for r in results
                    },
                    pageInfo=PageInfoOut(
                        hasNextPage=page.has_next_page,
                        hasPreviousPage=page.has_previous_page,
                        startCursor=page.cursors[0] if page.cursors else None,
                        endCursor=page.cursors[-1] if page.cursors else None,
                    ),
                )

            return await anyio.to_thread.run_sync(work)
        except OperatorError as exc:
            return error_response(exc)

    paginated.__name__ = f"browse_{browsable.name}"
    return paginated
