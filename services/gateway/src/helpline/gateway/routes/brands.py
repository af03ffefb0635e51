"""Brands: what each brand has in the index (`query` scope), and taking one out whole (`admin`).

A brand exists while it has indexed pages or sources; a brand-limited key sees only its
brands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from helpline.common.documents import list_documents
from helpline.common.messages import PageState
from helpline.common.sources import SourceStore
from helpline.gateway.auth import GUARDED, Caller, requires, visible
from helpline.gateway.errors import NotFound
from helpline.gateway.keys import Scope
from helpline.gateway.removal import remove_brand
from helpline.gateway.routes.deps import TasksDep
from helpline.gateway.schemas import ErrorBody

reader = APIRouter(tags=["brands"], dependencies=[requires(Scope.QUERY)], responses={**GUARDED})
admin = APIRouter(tags=["brands"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED})

BrandName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


class BrandView(BaseModel):
    brand: str
    documents: int = Field(description="Indexed pages.")
    chunks: int = Field(description="The chunks of its indexed pages.")
    sources: int
    last_indexed_at: datetime | None = Field(description="When a page of it was last indexed.")


class BrandList(BaseModel):
    items: list[BrandView]
    next_cursor: str | None = Field(default=None, description="Always null: one page holds all.")


class BrandDeleted(BaseModel):
    brand: str
    sources_removed: int
    documents_removed: int
    chunks_removed: int = Field(description="Its pages' chunks and every other point of it.")
    pending: list[str] = Field(
        description="Removal tasks (embed) not finished within 30 s: follow them in /tasks."
    )


@dataclass
class _Tally:
    documents: int = 0
    chunks: int = 0
    sources: int = 0
    last_indexed_at: datetime | None = None


@reader.get("/brands", response_model=BrandList)
async def list_brands(tasks: TasksDep, caller: Caller) -> BrandList:
    """Every brand with indexed pages or sources (a brand-limited key: of its brands), by name."""
    tallies: dict[str, _Tally] = {}

    def keep(state: PageState) -> bool:
        return state.brand is not None and visible(caller, state.brand)

    pages = await list_documents(tasks.bus.buckets, keep=keep, limit=10**9)
    for document in pages.items:
        state = document.state
        tally = tallies.setdefault(state.brand or "", _Tally())
        tally.documents += 1
        tally.chunks += state.chunks
        if state.indexed_at is not None and (
            tally.last_indexed_at is None or state.indexed_at > tally.last_indexed_at
        ):
            tally.last_indexed_at = state.indexed_at
    for source in await SourceStore(tasks.bus.buckets).all():
        if visible(caller, source.brand):
            tallies.setdefault(source.brand, _Tally()).sources += 1
    return BrandList(items=[BrandView(brand=b, **vars(t)) for b, t in sorted(tallies.items())])


@admin.delete(
    "/brands/{brand}",
    response_model=BrandDeleted,
    responses={
        404: {"model": ErrorBody},
        202: {"model": BrandDeleted, "description": "Still being removed after 30 s."},
    },
)
async def delete_brand(brand: BrandName, tasks: TasksDep, caller: Caller) -> Any:
    """Take a brand out whole: its sources, its indexed pages and every chunk of it (text sent
    to /embed too); its cached answers are no longer served."""
    store = SourceStore(tasks.bus.buckets)
    sources = await store.all(brand)
    documents = (
        await list_documents(
            tasks.bus.buckets, keep=lambda state: state.brand == brand, limit=10**9
        )
    ).items
    if not sources and not documents:
        raise NotFound(f"no brand {brand!r} (no source, no indexed page)")
    removed_sources = sum([await store.delete(source.id) for source in sources])
    removal = await remove_brand(tasks, brand, documents, sources)
    body = BrandDeleted(
        brand=brand,
        sources_removed=removed_sources,
        documents_removed=removal.documents,
        chunks_removed=removal.chunks,
        pending=removal.pending,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if removal.pending else 200)
