"""The OpenAPI document as the API really behaves.

FastAPI's own document gets three corrections: a 422 is our body (`ValidationErrorBody`:
`detail` and `errors`, each with `field` and `message`), not FastAPI's default schema;
every route that takes a body may answer 400 (not JSON) and 413; and every resource's tag is described.
The security scheme (`apiKey`, HTTP bearer) and 401/403/429 come from the routers' guards.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from helpline.gateway.schemas import ErrorBody, ValidationErrorBody

TAGS = [
    {"name": "submit", "description": "Crawl, scrape, batch and embed: tasks on the bus."},
    {"name": "query", "description": "Questions answered with numbered sources."},
    {"name": "tasks", "description": "Task records: read, list, cancel."},
    {"name": "keys", "description": "API keys, their scopes, brands and rate limits."},
    {"name": "cache", "description": "The shared answer cache."},
    {"name": "dead letters", "description": "Tasks that gave up, and replaying them."},
    {"name": "status", "description": "Queues, workers, breakers: what the system is doing."},
    {"name": "metrics", "description": "Request statistics, slow requests and errors."},
    {"name": "maintenance", "description": "Maintenance tasks."},
    {"name": "probes", "description": "Liveness, readiness and Prometheus metrics (open)."},
    {"name": "contract", "description": "The bus contract (AsyncAPI, open)."},
]

_REF = "#/components/schemas/{model}"


def document(app: FastAPI) -> None:
    """Serve the corrected document at `/openapi.json` (built once)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(app)
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def corrected(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=TAGS,
    )
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ValidationErrorBody, ErrorBody):
        found = model.model_json_schema(ref_template=_REF)
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    invalid = _json_response(
        "The body, query or path does not validate: each field and why.", "ValidationErrorBody"
    )
    too_large = _json_response(
        "The body is over HELPLINE_MAX_BODY_BYTES (refused before it is read).", "ErrorBody"
    )
    not_json = _json_response("The body is not JSON (or not UTF-8).", "ErrorBody")
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = invalid
            if "requestBody" in operation:
                responses.setdefault("400", not_json)
                responses.setdefault("413", too_large)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def _json_response(description: str, model: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
