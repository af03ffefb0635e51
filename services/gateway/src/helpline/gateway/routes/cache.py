"""The answer cache: its statistics, and clearing it."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from helpline.common.answercache import AnswerCache
from helpline.gateway.auth import GUARDED, Caller, check_all_brands, requires
from helpline.gateway.errors import CacheOff
from helpline.gateway.keys import Scope
from helpline.gateway.routes.deps import TasksDep
from helpline.gateway.schemas import CacheCleared, CacheStats
from helpline.gateway.tasks import Tasks

router = APIRouter(tags=["cache"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED})


@router.get("/cache/stats", response_model=CacheStats)
async def cache_stats(tasks: TasksDep) -> CacheStats:
    """The answer cache: this replica's hits and misses, and the shared bucket's size."""
    # A bus that does not answer is a 503 (the error table's row for BUS_ERRORS).
    stats = await _cache(tasks).stats()
    return CacheStats.model_validate(dataclasses.asdict(stats))


@router.post("/cache/clear", response_model=CacheCleared)
async def cache_clear(tasks: TasksDep, caller: Caller) -> CacheCleared:
    """Drop every cached answer, for every gateway replica (a key for every brand only)."""
    check_all_brands(caller, "clearing the answer cache")
    cleared = await _cache(tasks).clear()
    return CacheCleared(cleared=cleared)


def _cache(tasks: Tasks) -> AnswerCache:
    if tasks.cache is None:
        raise CacheOff
    return tasks.cache
