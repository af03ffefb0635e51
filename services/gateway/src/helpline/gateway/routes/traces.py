"""Recent traces from the bus's trace store (`spanstore`): one as JSON, and a page to read it.

`router` (under /api/v1): `GET /traces/{trace_id}`, every process's spans of one trace, in
tree order with service, offset and duration. `page`: `GET /traces/{trace_id}` (and
`/traces`), a self-contained page drawing that as a waterfall; no build step, no CDN.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from helpline.common import spanstore
from helpline.gateway import requestlog
from helpline.gateway.auth import GUARDED, requires
from helpline.gateway.errors import GatewayStarting, NotFound
from helpline.gateway.keys import Scope
from helpline.gateway.schemas import ErrorBody

router = APIRouter(
    prefix="/traces", tags=["traces"], dependencies=[requires(Scope.ADMIN)], responses={**GUARDED}
)
page = APIRouter(tags=["traces"])

TraceId = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-fA-F]{32}$",
        description="A trace id, 32 hex digits (a response's X-Trace-Id, or one the views list).",
    ),
]


@router.get("/{trace_id}", responses={404: {"model": ErrorBody}})
async def get_trace(request: Request, trace_id: TraceId) -> dict[str, Any]:
    """One recent trace, every process's spans: name, service, parent, start, offset_ms,
    duration_ms, attributes, status. The store keeps a day (at most 128 MiB)."""
    log: requestlog.RequestLog | None = request.app.state.request_log
    if log is None:
        raise GatewayStarting
    trace_id = trace_id.lower()
    spans = await log.trace(trace_id)
    if not spans:
        raise NotFound(
            f"no trace {trace_id} in the trace store (it keeps a day of traces, of processes "
            "with HELPLINE_TRACE_STORE on)"
        )
    return spanstore.view(trace_id, spans)


@cache
def _page() -> str:
    return files("helpline.gateway").joinpath("static/trace.html").read_text(encoding="utf-8")


@page.get("/traces", response_class=HTMLResponse, include_in_schema=False)
async def traces_page() -> HTMLResponse:
    """The trace page, asking for a trace id."""
    return HTMLResponse(_page())


@page.get("/traces/{trace_id}", response_class=HTMLResponse, include_in_schema=False)
async def trace_page(trace_id: TraceId) -> HTMLResponse:
    """One trace as a waterfall (the page reads `GET /api/v1/traces/{trace_id}`)."""
    return HTMLResponse(_page())
