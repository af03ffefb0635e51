"""Documents: the pages in the index, as their last indexing left them.

Listed and read (text as Markdown, lineage) with the `query` scope; deleted with `submit`.
A brand-limited key sees only its brands' documents (others are simply not found).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from helpline.common.documents import (
    Document,
    find_by_url,
    list_documents,
    load_document,
    under,
)
from helpline.common.messages import PageState
from helpline.common.pagestate import PageTexts
from helpline.common.sources import SourceStore
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires, visible
from helpline.gateway.errors import NotFound
from helpline.gateway.keys import ApiKey, Scope
from helpline.gateway.removal import Removal, remove_documents
from helpline.gateway.routes.deps import TasksDep, valid_key
from helpline.gateway.schemas import URL_SCHEMA, ErrorBody, check_http_url
from helpline.gateway.tasks import Tasks

router = APIRouter(tags=["documents"], dependencies=[requires(Scope.QUERY)], responses={**GUARDED})
writer = APIRouter(tags=["documents"], dependencies=[requires(Scope.SUBMIT)], responses={**GUARDED})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}


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
    content_hash: str | None = Field(
        description="sha256 over the indexed version's chunks: equal while its text is unchanged "
        "(null: indexed before content hashes were kept)."
    )
    misses: int = Field(
        description="Re-crawls in a row that missed the page (404/410 or unlinked; removed at 2)."
    )

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
            content_hash=state.content_hash,
            misses=state.misses,
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


class LineageStepView(BaseModel):
    step: str = Field(description="fetched, extracted, chunked, embedded or indexed.")
    at: datetime = Field(description="When the step started.")
    duration_ms: float
    task_id: str
    trace_id: str | None


class DocumentDetail(DocumentView):
    markdown: str | None = Field(
        description="The extracted text as Markdown, as chunked; null: indexed before texts "
        "were kept."
    )
    lineage: list[LineageStepView] = Field(
        description="How the indexed version came to be: fetched, extracted, chunked, "
        "embedded, indexed (the steps that ran)."
    )


class DocumentRemoved(BaseModel):
    id: str
    url: str
    brand: str | None
    task_id: str = Field(description="The embed task that takes the page out.")
    status: Literal["removed", "pending", "failed"] = Field(
        description="pending: not done within 30 s, follow the task."
    )
    chunks_removed: int = Field(description="Chunks deleted from the index (0 while pending).")


async def _detail(tasks: Tasks, document: Document) -> DocumentDetail:
    markdown = await PageTexts(tasks.bus.buckets).load(document.id)
    return DocumentDetail(
        **DocumentView.of(document).model_dump(),
        markdown=markdown,
        lineage=[LineageStepView(**s.model_dump()) for s in document.state.lineage],
    )


async def _visible(tasks: Tasks, document_id: str, caller: ApiKey) -> Document:
    found = await load_document(tasks.bus.buckets, document_id) if valid_key(document_id) else None
    if found is None or not visible(caller, found.state.brand):
        raise NotFound(f"no document with id {document_id!r}")
    return found


@router.get("/documents/by-url", response_model=DocumentDetail, responses=NOT_FOUND)
async def document_by_url(
    tasks: TasksDep,
    caller: Caller,
    url: Annotated[
        str, Query(json_schema_extra=URL_SCHEMA, description="As requested, or as indexed.")
    ],
    brand: Annotated[str | None, Query(max_length=100)] = None,
) -> DocumentDetail:
    """One indexed page by its URL (of `brand`: needed when several brands index it)."""
    try:
        url = check_http_url(url)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("query", "url"), "msg": str(exc), "type": "value_error"}]
        ) from None
    if brand is not None:
        check_brand(caller, brand)

    def keep(state: PageState) -> bool:
        return visible(caller, state.brand) and (brand is None or state.brand == brand)

    found = await find_by_url(tasks.bus.buckets, url, keep)
    if not found:
        raise NotFound(f"no document with url {url!r}")
    if len(found) > 1:
        brands = ", ".join(d.state.brand or "" for d in found)
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "brand"),
                    "msg": f"several brands index this URL ({brands}): name one",
                    "type": "missing",
                }
            ]
        )
    return await _detail(tasks, found[0])


@router.get("/documents/{document_id}", response_model=DocumentDetail, responses=NOT_FOUND)
async def get_document(document_id: str, tasks: TasksDep, caller: Caller) -> DocumentDetail:
    """One indexed page: its metadata, its text as Markdown and its lineage."""
    return await _detail(tasks, await _visible(tasks, document_id, caller))


@writer.delete(
    "/documents/{document_id}",
    response_model=DocumentRemoved,
    responses={
        **NOT_FOUND,
        202: {"model": DocumentRemoved, "description": "Still being removed after 30 s."},
    },
)
async def delete_document(document_id: str, tasks: TasksDep, caller: Caller) -> Any:
    """Take a page out of the index and out of cached answers (the brand's index generation
    moves); answers once done, or with 202 if that took more than 30 s. A later crawl of
    its site may index it again."""
    document = await _visible(tasks, document_id, caller)
    removal = await remove_documents(tasks, [document])
    body = DocumentRemoved(
        id=document.id,
        url=document.state.url,
        brand=document.state.brand,
        task_id=removal.task_ids[0],
        status=_status(removal),
        chunks_removed=removal.chunks,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if removal.pending else 200)


def _status(removal: Removal) -> Literal["removed", "pending", "failed"]:
    if removal.pending:
        return "pending"
    return "failed" if removal.failed else "removed"
