"""Webhooks: receivers told of events, signed per Standard Webhooks (`common.webhooks`).

Every route needs the `submit` scope (those who start work are told when it ends); a
brand-limited key registers, sees and changes only webhooks of its brands, and a webhook of
no brand (every brand's events) needs an unlimited key. The signing secret is answered
once, at creation. A receiver's URL must pass the SSRF guard (`HELPLINE_WEBHOOK_ALLOWED_HOSTS`,
by default the scraper's list) here and again at every delivery.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, field_validator

from helpline.common.errors import Overloaded, Permanent, Retryable
from helpline.common.guard import AllowList, resolve_checked
from helpline.common.messages import new_task_id, utcnow
from helpline.common.webhooks import (
    Announcer,
    Delivery,
    Webhook,
    WebhookEvent,
    new_webhook,
)
from helpline.gateway.auth import GUARDED, Caller, check_brand, requires, visible
from helpline.gateway.errors import GatewayStarting, NotFound
from helpline.gateway.keys import ApiKey, Scope
from helpline.gateway.routes.deps import valid_key
from helpline.gateway.schemas import URL_SCHEMA, Accepted, Body, Brand, ErrorBody, check_http_url

router = APIRouter(tags=["webhooks"], dependencies=[requires(Scope.SUBMIT)], responses={**GUARDED})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}
#: The most deliveries one listing answers.
MAX_DELIVERIES = 200

Subscribable = Literal[
    "task.succeeded",
    "task.failed",
    "crawl.completed",
    "page.indexed",
    "page.removed",
    "source.refreshed",
]
_URL = Field(
    description="Where deliveries are POSTed: an absolute http(s) URL at a public address "
    "(or one HELPLINE_WEBHOOK_ALLOWED_HOSTS allows).",
    json_schema_extra=URL_SCHEMA,
)
_EVENTS = Field(
    min_length=1,
    max_length=6,
    description="task.succeeded, task.failed (every kind, with the task record), "
    "crawl.completed (the crawl's counts), page.indexed (a page's new version searchable), "
    "page.removed (a page out of the index: url, brand, source_id, reason: deleted, "
    "source_deleted, brand_deleted, missed, gone), source.refreshed (a source's scheduled "
    "crawl ended and its pages were swept: its counts).",
)
_BRAND = Field(default=None, description="Only this brand's events; null: every brand's.")


class WebhookRequest(Body):
    url: str = _URL
    events: list[Subscribable] = _EVENTS
    brand: Brand | None = _BRAND

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class WebhookPatch(Body):
    url: str | None = Field(
        default=None, description=_URL.description, json_schema_extra=URL_SCHEMA
    )
    events: list[Subscribable] | None = Field(
        default=None, min_length=1, max_length=6, description=_EVENTS.description
    )
    brand: Brand | None = _BRAND

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_http_url(value) if value is not None else None


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[WebhookEvent]
    brand: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookView:
        return cls.model_validate(webhook.model_dump(exclude={"secret"}))


class WebhookCreated(WebhookView):
    secret: str = Field(
        description="The signing secret (`whsec_<base64>`): shown this once. Verify each "
        "delivery's webhook-signature with it (Standard Webhooks)."
    )


class WebhookList(BaseModel):
    items: list[WebhookView]
    next_cursor: str | None = Field(default=None, description="Always null: one page holds all.")


class DeliveryList(BaseModel):
    items: list[Delivery]
    next_cursor: str | None = Field(default=None, description="Always null: newest `limit`.")


def _announcer(request: Request) -> Announcer:
    announcer: Announcer | None = getattr(request.app.state, "webhooks", None)
    if announcer is None:
        raise GatewayStarting
    return announcer


async def _check_url(request: Request, url: str) -> None:
    """422 naming `url` unless the guard lets deliveries reach it."""
    allow: AllowList = request.app.state.webhook_allow
    try:
        await resolve_checked(url, allow)
    except Permanent as exc:
        raise RequestValidationError(
            [{"loc": ("body", "url"), "msg": exc.message, "type": "blocked_address"}]
        ) from None
    except Retryable as exc:
        raise Overloaded(exc.message) from None


async def _visible(announcer: Announcer, webhook_id: str, caller: ApiKey) -> Webhook:
    webhook = await announcer.webhooks.get(webhook_id) if valid_key(webhook_id) else None
    if webhook is None or not visible(caller, webhook.brand):
        raise NotFound(f"no webhook with id {webhook_id!r}")
    return webhook


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    responses={422: {"description": "A field is invalid, or the URL's address is not allowed."}},
)
async def create_webhook(
    body: WebhookRequest, request: Request, response: Response, caller: Caller
) -> WebhookCreated:
    """Register a receiver for `events` (of `brand`). The answer holds the signing secret,
    this once."""
    check_brand(caller, body.brand)
    await _check_url(request, body.url)
    announcer = _announcer(request)
    events = [WebhookEvent(e) for e in body.events]
    webhook = await announcer.webhooks.create(new_webhook(body.url, events, body.brand))
    response.headers["Location"] = f"{request.base_url}api/v1/webhooks/{webhook.id}"
    return WebhookCreated(**WebhookView.of(webhook).model_dump(), secret=webhook.secret)


@router.get("/webhooks", response_model=WebhookList)
async def list_webhooks(request: Request, caller: Caller) -> WebhookList:
    """Every webhook (a brand-limited key: of its brands), oldest first, without secrets."""
    webhooks = await _announcer(request).webhooks.all()
    return WebhookList(items=[WebhookView.of(w) for w in webhooks if visible(caller, w.brand)])


@router.get("/webhooks/{webhook_id}", response_model=WebhookView, responses=NOT_FOUND)
async def get_webhook(webhook_id: str, request: Request, caller: Caller) -> WebhookView:
    """One webhook, without its secret."""
    return WebhookView.of(await _visible(_announcer(request), webhook_id, caller))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookView, responses=NOT_FOUND)
async def change_webhook(
    webhook_id: str, body: WebhookPatch, request: Request, caller: Caller
) -> WebhookView:
    """Change a webhook's URL, events or brand (`"brand": null`: every brand's); the secret
    stays."""
    announcer = _announcer(request)
    await _visible(announcer, webhook_id, caller)
    update: dict[str, Any] = body.model_dump(exclude_unset=True)
    if update.get("url") is None:
        update.pop("url", None)
    else:
        await _check_url(request, update["url"])
    if update.get("events") is None:
        update.pop("events", None)
    else:
        update["events"] = list(dict.fromkeys(WebhookEvent(e) for e in update["events"]))
    if "brand" in update:
        check_brand(caller, update["brand"])
    changed = await announcer.webhooks.change(
        webhook_id, lambda current: current.model_copy(update={**update, "updated_at": utcnow()})
    )
    if changed is None:
        raise NotFound(f"no webhook with id {webhook_id!r}")
    return WebhookView.of(changed)


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=NOT_FOUND)
async def delete_webhook(webhook_id: str, request: Request, caller: Caller) -> Response:
    """Remove a webhook: no more deliveries start (one waiting to retry fails)."""
    announcer = _announcer(request)
    await _visible(announcer, webhook_id, caller)
    if not await announcer.webhooks.delete(webhook_id):
        raise NotFound(f"no webhook with id {webhook_id!r}")
    return Response(status_code=204)


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=Accepted,
    responses={**NOT_FOUND, 503: {"model": ErrorBody, "description": "The bus refused it."}},
)
async def test_webhook(webhook_id: str, request: Request, caller: Caller) -> Accepted:
    """Send the webhook a `ping` (a delivery like any other: signed, retried, listed)."""
    announcer = _announcer(request)
    webhook = await _visible(announcer, webhook_id, caller)
    data = {"webhook_id": webhook.id, "message": "a test delivery from Helpline"}
    [task_id] = await announcer.announce(
        WebhookEvent.PING, data, brand=webhook.brand, seed=new_task_id(), to=[webhook]
    )
    request.state.task_id = task_id
    return Accepted(task_id=task_id, status_url=f"{request.base_url}api/v1/tasks/{task_id}")


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryList, responses=NOT_FOUND)
async def list_deliveries(
    webhook_id: str,
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=MAX_DELIVERIES)] = 50,
) -> DeliveryList:
    """A webhook's recent deliveries, newest first: event, last status code, attempts,
    duration, next retry, error (kept as long as task records)."""
    announcer = _announcer(request)
    webhook = await _visible(announcer, webhook_id, caller)
    return DeliveryList(items=await announcer.deliveries.recent(webhook.id, limit))
