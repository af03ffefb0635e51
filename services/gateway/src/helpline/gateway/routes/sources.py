"""Sources: sites crawled again every `refresh_s` by the maintenance service.

Created, changed and deleted with the `submit` scope, read with `query`; a brand-limited
key sees and changes only its brands' sources (others are simply not found).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field

from helpline.common.documents import Document, list_documents, under
from helpline.common.messages import PageState, RemovalReason, RenderMode, utcnow
from helpline.common.records import Status
from helpline.common.sources import Source, SourceStore, new_source
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires, visible
from helpline.gateway.errors import NotFound
from helpline.gateway.keys import ApiKey, Scope
from helpline.gateway.removal import remove_documents
from helpline.gateway.routes.deps import TasksDep, valid_key
from helpline.gateway.schemas import RENDER, Body, Brand, ErrorBody, PageBody, _whole_number
from helpline.gateway.tasks import Tasks

#: The longest refresh_s: thirty days.
MAX_REFRESH_S = 30 * 24 * 3600
#: The floor the document states: HELPLINE_MIN_REFRESH_S's default (a lowered floor, as in
#: tests, accepts more than the document promises, never less).
DOCUMENTED_MIN_REFRESH_S = 300
# The constraints before the whole-number check, so the document states them as JSON Schema
# (after it, pydantic writes them as its own `ge`/`le`, which checkers ignore).
RefreshS = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_REFRESH_S,
        description="Seconds between two crawls, at least HELPLINE_MIN_REFRESH_S (300 unless set).",
        json_schema_extra={"minimum": DOCUMENTED_MIN_REFRESH_S},
    ),
    BeforeValidator(_whole_number),
]
MaxPages = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_whole_number)]
MaxDepth = Annotated[int, Field(ge=0, le=20), BeforeValidator(_whole_number)]
_INCLUDE = Field(default=None, max_length=100, description="Path globs to follow.")
_EXCLUDE = Field(default=None, max_length=100, description="Path globs to skip.")

reader = APIRouter(tags=["sources"], dependencies=[requires(Scope.QUERY)], responses={**GUARDED})
writer = APIRouter(tags=["sources"], dependencies=[requires(Scope.SUBMIT)], responses={**GUARDED})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}


class SourceRequest(PageBody):
    refresh_s: RefreshS
    max_pages: MaxPages = 100
    max_depth: MaxDepth = 3
    include: list[str] | None = _INCLUDE
    exclude: list[str] | None = _EXCLUDE
    render: RenderMode = RENDER


class SourcePatch(Body):
    refresh_s: RefreshS | None = None
    max_pages: MaxPages | None = None
    max_depth: MaxDepth | None = None
    include: list[str] | None = _INCLUDE
    exclude: list[str] | None = _EXCLUDE
    render: RenderMode | None = None


class LastCrawl(BaseModel):
    """A source's last scheduled crawl, as its task record tells it."""

    task_id: str
    due_at: datetime
    started_at: datetime
    started_by: str | None = Field(description="The maintenance replica that started it.")
    status: Status | None = Field(description="None: its record is gone (expired).")
    finished_at: datetime | None = None
    pages_ok: int | None = None
    pages_failed: int | None = None
    chunks_indexed: int | None = None
    swept_at: datetime | None = Field(
        default=None, description="When its pages were swept after it ended (null: not yet)."
    )
    pages_unchanged: int | None = Field(default=None, description="Reached, nothing embedded.")
    pages_missed: int | None = Field(
        default=None, description="Gone or no longer linked, kept until a second miss in a row."
    )
    pages_removed: int | None = Field(default=None, description="Missed twice in a row: removed.")


class SourceView(BaseModel):
    id: str
    url: str
    brand: Brand
    refresh_s: int
    max_pages: int
    max_depth: int
    include: list[str]
    exclude: list[str]
    render: RenderMode
    created_at: datetime
    updated_at: datetime
    next_due: datetime = Field(description="When the next crawl starts (within seconds).")
    last_crawl: LastCrawl | None
    documents: int = Field(description="Its indexed pages: its brand's under its root URL.")


class SourceList(BaseModel):
    items: list[SourceView]
    next_cursor: str | None = Field(default=None, description="Always null: one page holds all.")


def _store(tasks: Tasks) -> SourceStore:
    return SourceStore(tasks.bus.buckets)


def _check_refresh(request: Request, refresh_s: int) -> None:
    floor = int(getattr(request.app.state, "min_refresh_s", DOCUMENTED_MIN_REFRESH_S))
    if refresh_s < floor:
        # As a body that does not validate: the same 422, field and location named.
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "refresh_s"),
                    "msg": f"must be at least {floor} seconds (HELPLINE_MIN_REFRESH_S)",
                    "type": "greater_than_equal",
                }
            ]
        )


async def _documents_by_source(tasks: Tasks, sources: list[Source]) -> dict[str, int]:
    """How many indexed pages each source has (one read of the pages bucket)."""
    counts = dict.fromkeys((s.id for s in sources), 0)
    folders = [(s, under(s.url)) for s in sources]

    brands = {s.brand for s in sources}
    pages = await list_documents(
        tasks.bus.buckets, keep=lambda state: state.brand in brands, limit=10**9
    )
    for document in pages.items:
        for source, inside in folders:
            if document.state.brand == source.brand and inside(document.state.url):
                counts[source.id] += 1
    return counts


async def _view(tasks: Tasks, source: Source, documents: int | None = None) -> SourceView:
    last = None
    if source.last_run is not None:
        run = source.last_run
        record = await tasks.store.get(run.task_id)
        result = (record.result or {}) if record else {}
        last = LastCrawl(
            task_id=run.task_id,
            due_at=run.due_at,
            started_at=run.started_at,
            started_by=run.started_by,
            status=record.status if record else None,
            finished_at=record.finished_at if record else None,
            pages_ok=result.get("pages_ok"),
            pages_failed=result.get("pages_failed"),
            chunks_indexed=result.get("chunks_indexed"),
            swept_at=run.swept_at,
            pages_unchanged=run.pages_unchanged,
            pages_missed=run.pages_missed,
            pages_removed=run.pages_removed,
        )
    if documents is None:
        documents = (await _documents_by_source(tasks, [source]))[source.id]
    return SourceView(
        **source.model_dump(exclude={"last_run"}),
        last_crawl=last,
        documents=documents,
    )


async def _visible(tasks: Tasks, source_id: str, caller: ApiKey) -> Source:
    source = await _store(tasks).get(source_id) if valid_key(source_id) else None
    if source is None or not visible(caller, source.brand):
        raise NotFound(f"no source with id {source_id!r}")
    return source


@writer.post("/sources", status_code=201, response_model=SourceView)
async def create_source(
    body: SourceRequest, request: Request, response: Response, tasks: TasksDep, caller: Caller
) -> SourceView:
    """Crawl a site now and again every `refresh_s`, at low priority; its first crawl starts
    within seconds."""
    check_brand(caller, body.brand)
    _check_refresh(request, body.refresh_s)
    source = await _store(tasks).create(
        new_source(
            body.url,
            body.brand,
            body.refresh_s,
            max_pages=body.max_pages,
            max_depth=body.max_depth,
            include=body.include,
            exclude=body.exclude,
            render=body.render,
        )
    )
    response.headers["Location"] = f"{request.base_url}api/v1/sources/{source.id}"
    return await _view(tasks, source)


@reader.get("/sources", response_model=SourceList)
async def list_sources(
    tasks: TasksDep,
    caller: Caller,
    brand: Annotated[str | None, Query(max_length=100)] = None,
) -> SourceList:
    """Every source (of `brand`; a brand-limited key: of its brands), oldest first."""
    if brand is not None:
        check_brand(caller, brand)
    sources = [s for s in await _store(tasks).all(brand) if visible(caller, s.brand)]
    counts = await _documents_by_source(tasks, sources)
    return SourceList(items=[await _view(tasks, s, counts[s.id]) for s in sources])


@reader.get("/sources/{source_id}", response_model=SourceView, responses=NOT_FOUND)
async def get_source(source_id: str, tasks: TasksDep, caller: Caller) -> SourceView:
    """One source, with how its last crawl went."""
    return await _view(tasks, await _visible(tasks, source_id, caller))


@writer.patch("/sources/{source_id}", response_model=SourceView, responses=NOT_FOUND)
async def change_source(
    source_id: str, body: SourcePatch, request: Request, tasks: TasksDep, caller: Caller
) -> SourceView:
    """Change a source's refresh or crawl options; a new `refresh_s` moves its next crawl to
    that long after the last one started."""
    await _visible(tasks, source_id, caller)
    update = body.model_dump(exclude_unset=True, exclude_none=True)
    if "refresh_s" in update:
        _check_refresh(request, update["refresh_s"])

    def changed(current: Source) -> Source:
        now = utcnow()
        fields: dict[str, Any] = {**update, "updated_at": now}
        if "refresh_s" in update and current.last_run is not None:
            following = current.last_run.started_at.timestamp() + update["refresh_s"]
            fields["next_due"] = datetime.fromtimestamp(max(following, now.timestamp()), now.tzinfo)
        return current.model_copy(update=fields)

    source = await _store(tasks).change(source_id, changed)
    if source is None:
        raise NotFound(f"no source with id {source_id!r}")
    return await _view(tasks, source)


class SourceDeleted(BaseModel):
    id: str
    documents_removed: int = Field(description="Its pages taken out of the index.")
    chunks_removed: int
    documents_kept: int = Field(description="Its pages left indexed (keep_documents=true).")
    pending: list[str] = Field(
        description="Removal tasks (embed) not finished within 30 s: follow them in /tasks."
    )


async def source_documents(tasks: Tasks, source: Source) -> list[Document]:
    """The indexed pages of `source`: its brand's under its root URL."""
    inside = under(source.url)

    def keep(state: PageState) -> bool:
        return state.brand == source.brand and inside(state.url)

    page = await list_documents(tasks.bus.buckets, keep=keep, limit=10**9)
    return page.items


@writer.delete(
    "/sources/{source_id}",
    response_model=SourceDeleted,
    responses={
        **NOT_FOUND,
        202: {"model": SourceDeleted, "description": "Some pages still being removed after 30 s."},
    },
)
async def delete_source(
    source_id: str,
    tasks: TasksDep,
    caller: Caller,
    keep_documents: Annotated[
        bool, Query(description="Leave its pages in the index (only stop crawling).")
    ] = False,
) -> Any:
    """Stop crawling a source and take its pages (its brand's under its root URL) out of the
    index and the answers, unless `keep_documents`; says how many went."""
    source = await _visible(tasks, source_id, caller)
    if not await _store(tasks).delete(source_id):
        raise NotFound(f"no source with id {source_id!r}")
    pages = await source_documents(tasks, source)
    if keep_documents:
        body = SourceDeleted(
            id=source_id,
            documents_removed=0,
            chunks_removed=0,
            documents_kept=len(pages),
            pending=[],
        )
        return body
    removal = await remove_documents(
        tasks, pages, reason=RemovalReason.SOURCE_DELETED, source=source
    )
    body = SourceDeleted(
        id=source_id,
        documents_removed=removal.documents,
        chunks_removed=removal.chunks,
        documents_kept=len(removal.failed),
        pending=removal.pending,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if removal.pending else 200)
