"""API keys: make one (shown once), list them without secrets, revoke one."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from helpline.gateway.auth import GUARDED, Caller, requires
from helpline.gateway.errors import Conflict, Forbidden, GatewayStarting, NotFound
from helpline.gateway.keys import ADMIN_ID, KeyStore, Scope
from helpline.gateway.ratelimit import RateLimiter
from helpline.gateway.schemas import ErrorBody, KeyCreated, KeyRequest, KeyView

router = APIRouter(tags=["keys"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED})


def _store(request: Request) -> tuple[KeyStore, RateLimiter]:
    keys = getattr(request.app.state, "keys", None)
    limiter = getattr(request.app.state, "rate_limiter", None)
    if not isinstance(keys, KeyStore) or limiter is None:
        raise GatewayStarting
    return keys, limiter


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyRequest, request: Request, caller: Caller) -> KeyCreated:
    """Make a key. The response holds the key itself, this once; only its hash is kept.

    A key limited to brands can only make keys limited to (some of) its own brands.
    """
    keys, _ = _store(request)
    if caller.brands is not None and not _within(body.brands, caller.brands):
        raise Forbidden("a key limited to brands can only make keys for its own brands")
    key, secret = await keys.create(body.name, body.scopes, body.brands, body.rate_per_minute)
    return KeyCreated(**KeyView.of(key).model_dump(), key=secret)


@router.get("/keys", response_model=list[KeyView])
async def list_keys(request: Request, caller: Caller) -> list[KeyView]:
    """Every key (a brand-limited caller: the keys within its brands), oldest first, without
    secrets; `last_used_at` is to the minute for keys without a rate limit."""
    keys, limiter = _store(request)
    used = await limiter.last_used()
    return [
        KeyView.of(key, used.get(key.id))
        for key in keys.all()
        if caller.brands is None or _within(key.brands, caller.brands)
    ]


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
async def revoke_key(key_id: str, request: Request, caller: Caller) -> Response:
    """Revoke a key: every gateway replica refuses it within a second."""
    keys, limiter = _store(request)
    key = keys.get(key_id)
    if key is None or (caller.brands is not None and not _within(key.brands, caller.brands)):
        raise NotFound(f"no key with id {key_id!r}")
    if key.id == ADMIN_ID and key.bootstrap:
        raise Conflict("the admin key is set by HELPLINE_ADMIN_KEY: change that to replace it")
    await keys.revoke(key_id)
    await limiter.forget(key_id)
    return Response(status_code=204)


def _within(brands: list[str] | None, allowed: list[str]) -> bool:
    """Whether `brands` (None: every brand) are all among `allowed`."""
    return brands is not None and set(brands) <= set(allowed)
