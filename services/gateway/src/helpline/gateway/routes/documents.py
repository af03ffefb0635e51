"""Documents: the pages in the index, as their last indexing left them (`query` scope).

Only the listing is built here; one document's text and lineage, and deleting one, are
not yet (issue 19).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from helpline.common.documents import Document, list_documents, under
from helpline.common.messages import PageState
from helpline.common.sources import SourceStore
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires, visible
from helpline.gateway.errors import NotFound
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import TasksDep, valid_key
from helpline.gateway.schemas import ErrorBody

router = APIRouter(tags=["documents"], dependencies=[requires(Scope.QUERY)], responses={**GUARDED})


class DocumentView(BaseModel):
    id: str
    url: str
    title: str
    brand: str | None = Field(description="None: indexed before brands were recorded.")
    chunks: int
    etag: str | None
    last_modified: str | None = Field(description="The site's Last-Modified header.")
    fetched_at: datetime | None = Field(description="When the indexed version was fetched.")
    indexed_at: datetime | None
    task_id: str | None = Field(description="The scrape that indexed this version.")

    @classmethod
    def of(cls, document: Document) -> DocumentView:
        state = document.state
        return cls(
            id=document.id,
            url=state.url,
            title=state.title,
            brand=state.brand,
            chunks=state.chunks,
            etag=state.etag,
            last_modified=state.last_modified,
            fetched_at=state.fetched_at,
            indexed_at=state.indexed_at,
            task_id=state.task_id,
        )


class DocumentList(BaseModel):
    items: list[DocumentView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


@router.get("/documents", response_model=DocumentList, responses={404: {"model": ErrorBody}})
async def list_indexed(
    tasks: TasksDep,
    caller: Caller,
    brand: Annotated[str | None, Query(max_length=100)] = None,
    source: Annotated[str | None, Query(max_length=128, description="A source's id.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
) -> DocumentList:
    """Indexed pages by URL (of `brand`, of a source: its brand's pages under its root URL;
    a brand-limited key: of its brands), `limit` at a time."""
    if brand is not None:
        check_brand(caller, brand)
    in_source = None
    source_brand = None
    if source is not None:
        found = await SourceStore(tasks.bus.buckets).get(source) if valid_key(source) else None
        if found is None or not visible(caller, found.brand):
            raise NotFound(f"no source with id {source!r}")
        in_source, source_brand = under(found.url), found.brand

    def keep(state: PageState) -> bool:
        if not visible(caller, state.brand) or (brand is not None and state.brand != brand):
            return False
        return in_source is None or (state.brand == source_brand and in_source(state.url))

    page = await list_documents(tasks.bus.buckets, keep=keep, limit=limit, cursor=cursor)
    return DocumentList(
        items=[DocumentView.of(d) for d in page.items], next_cursor=page.next_cursor
    )
