"""The bus contract, as the OpenAPI document is the HTTP one: open, outside /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from helpline.common.asyncapi import document

router = APIRouter(tags=["contract"])


@router.get("/asyncapi.json")
async def asyncapi(request: Request) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of this deployment's bus: subjects, streams and messages."""
    result: dict[str, Any] = document(
        prefix=request.app.state.bus_prefix, version=request.app.version
    )
    return result
